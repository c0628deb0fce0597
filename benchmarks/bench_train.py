"""The training experiment's figures, measured side by side in one run.

Usage::

    python benchmarks/bench_train.py [--quick] [--repeats 5] [--json PATH]

Figures (medians over repeats, spread min..max):

* **backprop training step**: one iteration of the book's loop (sample,
  gradient, update, loss after the update), measured through
  ``zerokara.train`` on the full 60000-image training set: (wall time -
  evaluation time) / iterations, for the compiled kernels and for the
  NumPy reference backend, alternating; the ratio is the median of the
  ratios of the pairs run one after the other.
* **trainer loop overhead**: the same loop around a dummy network whose
  gradient and loss cost nothing, next to the book's loop written out
  literally around the same dummy: what sampling, indexing, the update
  and the trainer's bookkeeping cost per iteration.
* **accuracy on 70000 images**: ``net.accuracy`` on the training and test
  sets, both backends, alternating as above.
* **whole runs**: ``python examples/train.py --grad backprop --no-progress``
  and ``--grad numerical``, each a fresh process (the data already cached),
  wall time, final test accuracy and peak RSS (``os.wait4``'s
  ``ru_maxrss`` of that child); and the largest difference between the two
  runs' accuracy curves (same seed).

The table is printed and written as JSON (``benchmarks/results/train.json``,
through a temporary file and ``os.replace``). ``--quick`` is a smoke run
(few iterations; its whole-run figures are not comparable to the targets).

The machine may be shared: the load average is recorded with the results,
and so is its speed, by a fixed pure-Python loop timed before every
measurement (``speed_probe``): on the virtual machine these figures were
made on, the cores' speed changes by up to 2x from one minute to the next
with nothing else running, which the load average does not show. Before
each step and accuracy measurement the time for a cache line to go from
one core to the other and back is recorded too (``transfer_probe``): the
two-thread step slows by 1.6-1.8x when that round trip is slow, with the
speed probe quick.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install .), else the checkout's (built in place)
    import zerokara  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "src"))

import zerokara  # noqa: E402
from zerokara import TrainConfig, TwoLayerNet, train  # noqa: E402
from zerokara.backends import get_backend, resolve_threads  # noqa: E402
from zerokara.datasets import load_mnist  # noqa: E402
from zerokara.trainer import write_json  # noqa: E402

PAUSE = 0.3  # seconds of rest before each side-by-side measurement
PROBE_LOOP = 200_000  # additions in speed_probe's loop

TARGETS = {
    "step": 0.4,  # ms, zerokara backprop step (median)
    "step_ratio": 4.0,  # python backend / zerokara
    "accuracy": 50.0,  # ms for 70000 images
    "backprop_run": 6.0,  # s wall
    "backprop_acc": 0.94,  # final test accuracy
    "numerical_run": 60.0,  # s wall
    "curve_diff": 0.005,  # max |acc numerical - acc backprop|
    "rss": 320.0,  # MB peak
}


def spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def speed_probe(repeats: int = 3) -> float:
    """Seconds for a fixed pure-Python loop, the best of ``repeats``: higher is slower.

    The interpreter's loop runs at the speed of the core and of nothing
    else (no memory, no threads), so its time tracks how fast the machine is
    at that moment: on a shared virtual machine it can double within a
    minute. A few milliseconds; recorded before each measurement so that a
    reader can tell a slow spell from a slow kernel.
    """
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = 0
        for i in range(PROBE_LOOP):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best


def transfer_probe() -> float:
    """Nanoseconds for a cache line to go from one core to the other and back (NaN if not measurable).

    The compiled two-thread step shares data between its threads. On the
    virtual machine these figures were made on, a C twin of this probe
    read 191-384 TSC ticks a round trip most of the time and 1121-1228 in
    spells of seconds to minutes, during which the two-thread step took
    1.6-1.8x its usual time while one-thread steps did not slow
    (benchmarks/NOTES.md, ninth session); this probe reads about 110-170
    ns when quick. Recorded next to speed_probe before each measurement of
    the step and the accuracy, so that a reader can tell that state: the
    median of 3 measurements of 20000 round trips, after 2000 that wake
    the threads (straight after a pause, single measurements read 70-900
    ns). About 10 ms.
    """
    try:
        from zerokara.backends.cython import core_round_trip
    except ImportError:
        return float("nan")
    core_round_trip(2000)
    return statistics.median(core_round_trip(20000) for _ in range(3))


def fmt(s: Optional[Dict[str, float]], scale: float = 1.0, digits: int = 3) -> str:
    if s is None:
        return "-"
    return f"{s['median'] * scale:.{digits}g} ({s['min'] * scale:.{digits}g}..{s['max'] * scale:.{digits}g})"


# --------------------------------------------------------------------------
# In-process figures
# --------------------------------------------------------------------------


def step_once(backend: str, data, iters: int, seed: int) -> float:
    """Seconds per backprop iteration of zerokara.train on the full training set."""
    (x, t), (xt, tt) = data
    net = TwoLayerNet(784, 50, 10, seed=seed, backend=backend)
    # A small test set: the evaluations are subtracted anyway.
    h = train(net, x, t, xt[:10], tt[:10], TrainConfig(iters=iters, grad="backprop", seed=seed),
              progress=False, verbose=False)
    evals = sum(e.eval_time for e in h.evaluations)
    return (h.wall_time - evals) / iters


def side_by_side(measure: Callable[[str, int], float], repeats: int) -> Dict[str, Dict[str, float]]:
    """``measure(backend, repeat)`` for cython then python, repeat after repeat.

    The two backends alternate, so a burst of load on a shared machine hits
    both alike; the ratio is taken within each pair, then its median. A
    pause of PAUSE seconds before each measurement lets the threads of the
    one before go idle: OpenBLAS's threads (the Python backend's matrix
    products) keep spinning for a while after a call, and measured right
    after them the compiled kernels' threads share the cores with them (seen
    here: accuracy 84-95 ms instead of 59-70).
    """
    times: Dict[str, List[float]] = {"cython": [], "python": []}
    ratios, probes, transfers = [], [], []
    for r in range(repeats):
        for backend in times:
            time.sleep(PAUSE)
            probes.append(speed_probe())
            transfers.append(transfer_probe())
            times[backend].append(measure(backend, r))
        ratios.append(times["python"][-1] / times["cython"][-1])
    return {"cython": spread(times["cython"]), "python": spread(times["python"]), "ratio": spread(ratios),
            "probe": spread(probes), "transfer": spread(transfers)}


class DummyNet:
    """Costs nothing: preallocated zero gradients, a constant loss."""

    def __init__(self) -> None:
        self.params = TwoLayerNet(784, 50, 10, seed=0, backend="python").params
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def gradient(self, x, t):
        return self.grads

    def loss(self, x, t):
        return 1.0

    def accuracy(self, x, t):
        return 0.0


def loop_overhead(data, iters: int, repeats: int) -> Dict[str, Dict[str, float]]:
    """Per-iteration cost of the trainer's loop and of the book's literal loop, around DummyNet."""
    (x, t), (xt, tt) = data
    trainer, book = [], []
    for r in range(repeats):
        net = DummyNet()
        h = train(net, x, t, xt[:10], tt[:10], TrainConfig(iters=iters, grad="backprop", seed=r),
                  progress=False, verbose=False)
        trainer.append((h.wall_time - sum(e.eval_time for e in h.evaluations)) / iters)

        net = DummyNet()
        np.random.seed(r)
        train_loss_list = []
        t0 = time.perf_counter()
        for i in range(iters):  # ch04/train_neuralnet.py, without its evaluation
            batch_mask = np.random.choice(len(x), 100)
            x_batch = x[batch_mask]
            t_batch = t[batch_mask]
            grad = net.gradient(x_batch, t_batch)
            for key in ("W1", "b1", "W2", "b2"):
                net.params[key] -= 0.1 * grad[key]
            loss = net.loss(x_batch, t_batch)
            train_loss_list.append(loss)
        book.append((time.perf_counter() - t0) / iters)
    return {"trainer": spread(trainer), "book": spread(book)}


def accuracy_once(net: TwoLayerNet, data) -> float:
    """Seconds for the trainer's evaluation: accuracy on the training and test sets."""
    (x, t), (xt, tt) = data
    t0 = time.perf_counter()
    net.accuracy(x, t)
    net.accuracy(xt, tt)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# Whole runs, each in a fresh process
# --------------------------------------------------------------------------


def whole_run(grad: str, iters: int, out: Path) -> Dict[str, Any]:
    """Run examples/train.py in a child; wall time, exit code, peak RSS (MB) and its history."""
    cmd = [sys.executable, str(REPO / "examples" / "train.py"), "--grad", grad, "--no-progress",
           "--iters", str(iters), "--out", str(out)]
    env = dict(os.environ)
    # The children import the same zerokara as this process.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(zerokara.__file__).parents[1]), env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        # wait4: the rusage of this child alone (RUSAGE_CHILDREN would be the
        # largest of all children so far).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output}")
    history = json.loads((out / "history.json").read_text())
    config = json.loads((out / "config.json").read_text())
    rss_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    evals = sum(r["eval_time"] for r in history["epochs"] + ([history["final"]] if history["final"] else []))
    parts = {
        "load": config["dataset"]["load_time"],
        "iterations": history["wall_time"] - evals,
        "evaluations": evals,
    }
    parts["rest"] = wall - sum(parts.values())  # interpreter start, imports, writing files and plots
    last = history["final"] or history["epochs"][-1]
    return {"wall": wall, "rss_mb": rss_mb, "history": history, "test_acc": last["test_acc"], "parts": parts}


def curve_difference(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    """Largest |difference| between two runs' train and test accuracy at the same evaluations."""
    def curve(h):
        records = h["epochs"] + ([h["final"]] if h["final"] else [])
        return {r["iteration"]: (r["train_acc"], r["test_acc"]) for r in records}

    ca, cb = curve(a), curve(b)
    common = sorted(set(ca) & set(cb))
    return max(abs(x - y) for i in common for x, y in zip(ca[i], cb[i]))


# --------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few iterations and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per in-process figure (default 5, quick 2)")
    parser.add_argument("--whole-repeats", type=int, default=None, help="repeats of each whole run (default 3, quick 1)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "train.json")
    args = parser.parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    whole_repeats = args.whole_repeats or (1 if quick else 3)
    step_iters = {"cython": 100 if quick else 2000, "python": 50 if quick else 300}
    whole_iters = 300 if quick else 10000

    load_before = os.getloadavg()
    cy = get_backend("cython")
    threads = resolve_threads(None, cy)
    results: Dict[str, Any] = {}

    # Whole runs first, while this process is small: on Linux a child's
    # ru_maxrss starts from its parent's RSS at the fork, so measured after
    # this process loaded MNIST it would report this process's 300 MB.
    load_mnist()  # make sure the decoded-array cache is warm for the children
    runs: Dict[str, List[Dict[str, Any]]] = {"backprop": [], "numerical": []}
    probes: Dict[str, List[float]] = {"backprop": [], "numerical": []}
    with tempfile.TemporaryDirectory() as tmp:
        for grad in ("backprop", "numerical"):
            for r in range(whole_repeats):
                print(f"whole run --grad {grad} ({r + 1}/{whole_repeats}) ...", flush=True)
                probes[grad].append(speed_probe())
                runs[grad].append(whole_run(grad, whole_iters, Path(tmp) / f"{grad}-{r}"))
    diff = curve_difference(runs["numerical"][0]["history"], runs["backprop"][0]["history"])
    for grad in runs:
        results[f"{grad}_run"] = {
            "wall": spread([r["wall"] for r in runs[grad]]),
            "rss_mb": spread([r["rss_mb"] for r in runs[grad]]),
            "test_acc": runs[grad][0]["test_acc"],
            "iterations": whole_iters,
            "parts": {k: spread([r["parts"][k] for r in runs[grad]]) for k in runs[grad][0]["parts"]},
            "probe": spread(probes[grad]),
        }
    results["curve_diff"] = diff

    t0 = time.perf_counter()
    data = load_mnist()
    print(f"load_mnist in this process: {time.perf_counter() - t0:.2f} s", flush=True)
    print("backprop step ...", flush=True)
    results["step"] = side_by_side(lambda b, r: step_once(b, data, step_iters[b], r), repeats)
    print("loop overhead ...", flush=True)
    results["overhead"] = loop_overhead(data, 300 if quick else 3000, repeats)
    print("accuracy ...", flush=True)
    nets = {b: TwoLayerNet(784, 50, 10, seed=0, backend=b) for b in ("cython", "python")}
    for net in nets.values():
        net.accuracy(data[1][0], data[1][1])  # warm up
    results["accuracy"] = side_by_side(lambda b, r: accuracy_once(nets[b], data), repeats)

    s, o, a = results["step"], results["overhead"], results["accuracy"]
    ratio_step, ratio_acc = s["ratio"]["median"], a["ratio"]["median"]
    bp, nm = results["backprop_run"], results["numerical_run"]
    rows = [
        ("backprop step, ms (sample+grad+update+loss)", fmt(s["cython"], 1e3), fmt(s["python"], 1e3),
         f"{ratio_step:.1f}x ({s['ratio']['min']:.1f}..{s['ratio']['max']:.1f})",
         f"<= {TARGETS['step']} ms, >= {TARGETS['step_ratio']:g}x",
         s["cython"]["median"] * 1e3 <= TARGETS["step"] and ratio_step >= TARGETS["step_ratio"]),
        ("trainer loop overhead, us/iter (dummy net)", fmt(o["trainer"], 1e6), "-", "-",
         f"book's loop: {fmt(o['book'], 1e6)}", None),
        ("accuracy on 70000 images, ms", fmt(a["cython"], 1e3), fmt(a["python"], 1e3),
         f"{ratio_acc:.1f}x ({a['ratio']['min']:.1f}..{a['ratio']['max']:.1f})",
         f"<= {TARGETS['accuracy']:g} ms", a["cython"]["median"] * 1e3 <= TARGETS["accuracy"]),
        (f"whole run --grad backprop, s ({whole_iters} it)", fmt(bp["wall"]), "-", "-",
         f"<= {TARGETS['backprop_run']:g} s", bp["wall"]["median"] <= TARGETS["backprop_run"]),
        ("  final test acc (backprop)", f"{bp['test_acc']:.4f}", "-", "-", f">= {TARGETS['backprop_acc']}",
         bp["test_acc"] >= TARGETS["backprop_acc"]),
        ("  peak RSS, MB (backprop)", fmt(bp["rss_mb"]), "-", "-", f"<= {TARGETS['rss']:g} MB",
         bp["rss_mb"]["max"] <= TARGETS["rss"]),
        (f"whole run --grad numerical, s ({whole_iters} it)", fmt(nm["wall"]), "-", "-",
         f"<= {TARGETS['numerical_run']:g} s", nm["wall"]["median"] <= TARGETS["numerical_run"]),
        ("  final test acc (numerical)", f"{nm['test_acc']:.4f}", "-", "-", "-", None),
        ("  peak RSS, MB (numerical)", fmt(nm["rss_mb"]), "-", "-", f"<= {TARGETS['rss']:g} MB",
         nm["rss_mb"]["max"] <= TARGETS["rss"]),
        ("  max |acc numerical - acc backprop|", f"{diff:.4f}", "-", "-", f"<= {TARGETS['curve_diff']}",
         diff <= TARGETS["curve_diff"]),
    ]
    header = ("figure", "zerokara (cython)", "Python backend", "ratio", "target", "met")
    table = [header] + [(r[0], r[1], r[2], r[3], r[4], "" if r[5] is None else ("yes" if r[5] else "NO")) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print()
    print(f"zerokara {zerokara.__version__}, {cy.name} ({'OpenMP' if cy.openmp_enabled() else 'no OpenMP'}, "
          f"{threads} threads), {os.cpu_count()} cores, numpy {np.__version__}, python {platform.python_version()}"
          f"{', QUICK (not comparable to targets)' if quick else ''}")
    print("medians over repeats, (min..max); the two backends alternate, ratios are taken within each pair")
    for i, row in enumerate(table):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    for grad in ("backprop", "numerical"):
        parts = results[f"{grad}_run"]["parts"]
        print(f"whole run --grad {grad}, medians: " + ", ".join(
            f"{k} {parts[k]['median']:.2f} s" for k in ("load", "iterations", "evaluations", "rest")))
    print("machine speed, ms for a fixed Python loop before each measurement (higher is slower): " + ", ".join(
        f"{name} {fmt(results[key]['probe'], 1e3)}" for name, key in
        (("whole runs backprop", "backprop_run"), ("numerical", "numerical_run"), ("step pairs", "step"),
         ("accuracy pairs", "accuracy"))))
    print("core-to-core round trip, ns before each measurement (about 110-170 here when quick, several times more in slow spells): "
          + ", ".join(f"{name} {fmt(results[key]['transfer'], 1, 4)}" for name, key in
                      (("step pairs", "step"), ("accuracy pairs", "accuracy"))))
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (the machine may be shared)")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {
        "quick": quick,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                    "load_after": load_after, "threads": threads, "openmp": bool(cy.openmp_enabled())},
        "versions": {"zerokara": zerokara.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "targets": TARGETS,
        "results": results,
        "table": [dict(zip(header, row)) for row in table[1:]],
    })
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
