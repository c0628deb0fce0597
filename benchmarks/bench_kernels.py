"""Time the forward/backprop/accuracy kernels: portable vs AVX2 build, 1 vs 2 threads, side by side.

Usage::

    python benchmarks/bench_kernels.py [--quick] [--threads 1,2] [--repeats N] [--json PATH]

The book's setting: ``TwoLayerNet(784, 50, 10)`` on real MNIST (``load_mnist``:
``$ZEROKARA_DATA/mnist`` or the embedded copy), float32 images, parameters
after 300 backprop steps (so the sigmoids are not all near 0.5). Rows:

* ``accuracy 70000``: ``net.accuracy(x_train, t_train) + net.accuracy(x_test,
  t_test)``, what the trainer runs once per epoch;
* ``train step``: one iteration of the trainer's backprop loop (the book's
  ``train_neuralnet.py`` step): a batch of 100 drawn as the trainer draws
  it (what ``np.random.choice`` does, drawn 128 batches per ``randint``
  call), then the step the trainer makes once per run with
  ``net._sgd_stepper(x_train, t_train, 0.1)``, i.e. ``net.sgd_step(x_train,
  t_train, 0.1, rows=batch_mask)`` with the arguments checked once:
  gradient, in-place SGD update and loss after it in one kernel call that
  reads the batch from ``x_train`` without gathering it (25 steps in a row
  per round, each timed; the parameters keep training as they would);
* ``train step, many``: the same, as the trainer runs it: ``STEPS_PER_CALL``
  (64) batches drawn, then their steps in one call (``step.many``), the
  time per step (one call per round). The trainer's later calls are longer
  (up to an epoch's steps), a little quicker per step. Each step split
  between the threads by samples (``sgd_steps(..., split=False)``);
* ``train step, many, split``: the same with each step split by hidden
  units (``split=True``). The backend times both ways as it runs and takes
  the quicker, which depends on how quickly the cores reach each other's
  caches at the time (``core_round_trip``);
* ``gradient(100)``, ``sgd_step(100)``, ``loss(100)``, ``predict(100)``: the
  kernels alone, called directly on one batch, the first 100 training
  images (no validation around them). ``sgd_step(100)`` reads them as
  ``rows = 0..99`` of the whole ``x_train`` and updates, in place, a copy of
  the parameters per column that is never reset: with ``lr = 1e-3`` it
  drifts little over the run, and every column takes the same steps.

Each build is the compiled module itself (``zerokara._core`` or
``zerokara._core_avx2``); the ``TwoLayerNet`` rows get the build by
replacing the network's backend with a copy of the cython backend that
holds that build's kernels. All configurations run interleaved, round after
round, so that the load of a shared machine hits them alike; each cell is
the median over the rounds with the spread (min..max), in milliseconds.
The table also goes to ``--json`` (default
``benchmarks/results/kernels.json``), through a temporary file renamed into
place.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import platform
import statistics
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KEYS = ("W1", "b1", "W2", "b2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke run)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds (default 21, quick 3); the fast rows run 25 times per round")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "kernels.json",
                        help="where to write the results (default benchmarks/results/kernels.json)")
    args = parser.parse_args(argv)
    args.threads = [int(s) for s in args.threads.split(",") if s.strip()]
    if not args.threads or min(args.threads) < 1:
        parser.error("--threads must list positive integers")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 21
    return args


def builds():
    """``{name: module}`` of the builds of ``zerokara._core`` that run on this CPU."""
    core = importlib.import_module("zerokara._core")
    found = {"portable": core}
    if core.cpu_supports_avx2():
        try:
            found["avx2"] = importlib.import_module("zerokara._core_avx2")
        except ImportError:
            pass
    return found


def backend_of(module, split=False):
    """The cython backend with the kernels of ``module`` (one build of ``_core``).

    Its ``sgd_steps`` splits each step between the threads by samples, or
    with ``split`` by hidden units (the two ways the backend chooses
    between by timing them; here each is timed on its own).
    """
    base = importlib.import_module("zerokara.backends.cython")
    namespace = {key: getattr(base, key) for key in dir(base) if not key.startswith("__")}
    kernels = ("predict", "loss", "gradient", "sgd_step", "sgd_steps", "accuracy")
    namespace.update({key: getattr(module, key) for key in kernels})
    namespace["sgd_steps"] = functools.partial(module.sgd_steps, split=split)
    return types.SimpleNamespace(**namespace)


def trained_net(x_train, t_train):
    from zerokara import TwoLayerNet

    net = TwoLayerNet(784, 50, 10, seed=0)
    rng = np.random.RandomState(0)
    for _ in range(300):
        idx = rng.choice(len(x_train), 100)
        grads = net.gradient(x_train[idx], t_train[idx])
        for key in KEYS:
            net.params[key] -= 0.1 * grads[key]
    return net


def main(argv=None) -> int:
    args = parse_args(argv)
    from zerokara import TwoLayerNet, load_mnist
    from zerokara.trainer import SAMPLE_AHEAD, STEPS_PER_CALL, _Sampler, write_json

    (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, flatten=True, one_hot_label=False)
    trained = trained_net(x_train, t_train)
    found = builds()
    xb, tb = x_train[:100], t_train[:100].astype(np.int64)
    rows_b = np.arange(100, dtype=np.intp)  # the same batch, read from x_train by index
    train_size = len(x_train)
    params = [trained.params[key] for key in KEYS]
    grads = [np.empty_like(p) for p in params]
    y = np.empty((100, 10))

    configs = []  # (row, build, threads, callable)
    for name, module in found.items():
        for threads in args.threads:
            net = TwoLayerNet(784, 50, 10, threads=threads)
            net._backend = backend_of(module)
            for key in KEYS:
                net.params[key][...] = trained.params[key]

            def accuracy(net=net):
                net.accuracy(x_train, t_train) + net.accuracy(x_test, t_test)

            def steps(count, out, sample=_Sampler(np.random.RandomState(0), train_size, 100, True,
                                                  ahead=SAMPLE_AHEAD, total=1 << 40).next,
                      step=net._sgd_stepper(x_train, t_train, 0.1)):
                # The trainer's loop (trainer.py, grad="backprop"): the
                # batch's indices, then one step that reads the batch from
                # x_train where it lies.
                for _ in range(count):
                    start = time.perf_counter()
                    step(sample())
                    out.append((time.perf_counter() - start) * 1e3)

            by_units = TwoLayerNet(784, 50, 10, threads=threads)
            by_units._backend = backend_of(module, split=True)
            for key in KEYS:
                by_units.params[key][...] = trained.params[key]

            def steps_many(count, out, take=_Sampler(np.random.RandomState(0), train_size, 100, True,
                                                     ahead=SAMPLE_AHEAD, total=1 << 40).take,
                           step=net._sgd_stepper(x_train, t_train, 0.1)):
                # The trainer's loop as it runs: STEPS_PER_CALL batches
                # drawn (one slice of those drawn ahead), then their steps
                # in one call (step.many); the time per step.
                for _ in range(count):
                    start = time.perf_counter()
                    step.many(take(STEPS_PER_CALL), [])
                    out.append((time.perf_counter() - start) * 1e3 / STEPS_PER_CALL)

            def gradient(m=module, threads=threads):
                m.gradient(xb, tb, *params, *grads, threads)

            own = [p.copy() for p in params]  # this column's parameters, updated in place

            def sgd_step(m=module, threads=threads, own=own):
                m.sgd_step(x_train, rows_b, tb, *own, 1e-3, threads)

            def loss(m=module, threads=threads):
                m.loss(xb, tb, *params, threads)

            def predict(m=module, threads=threads):
                m.predict(xb, *params, y, threads)

            configs += [
                ("accuracy 70000", name, threads, accuracy, 1),
                ("train step", name, threads, steps, 25),
                ("train step, many", name, threads, steps_many, 1),
                ("train step, many, split", name, threads,
                 functools.partial(steps_many, step=by_units._sgd_stepper(x_train, t_train, 0.1)), 1),
                ("gradient(100)", name, threads, gradient, 25),
                ("sgd_step(100)", name, threads, sgd_step, 25),
                ("loss(100)", name, threads, loss, 25),
                ("predict(100)", name, threads, predict, 25),
            ]

    times = {c[:3]: [] for c in configs}
    for row, _, _, fn, _ in configs:  # warm up: threads, caches, page faults
        fn(3, []) if row.startswith("train step") else fn()
    for _ in range(args.repeats):
        for row, name, threads, fn, inner in configs:
            if row.startswith("train step"):
                fn(inner, times[(row, name, threads)])
                continue
            for _ in range(inner):
                start = time.perf_counter()
                fn()
                times[(row, name, threads)].append((time.perf_counter() - start) * 1e3)

    rows = []
    for (row, name, threads), ts in times.items():
        rows.append({"row": row, "build": name, "threads": threads, "median_ms": statistics.median(ts),
                     "min_ms": min(ts), "max_ms": max(ts), "runs": len(ts)})
    columns = [(name, threads) for name in found for threads in args.threads]
    print(f"zerokara kernels, MNIST 784-50-10, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"ms: median (min..max) over {args.repeats} rounds")
    header = f"{'':23s}" + "".join(f"{f'{name}, {threads} thr':>28s}" for name, threads in columns)
    print(header)
    for row in dict.fromkeys(r["row"] for r in rows):
        cells = {(r["build"], r["threads"]): r for r in rows if r["row"] == row}
        line = f"{row:23s}"
        for key in columns:
            r = cells[key]
            digits = 1 if r["median_ms"] >= 10 else 3
            line += f"{r['median_ms']:>10.{digits}f} ({r['min_ms']:.{digits}f}..{r['max_ms']:.{digits}f})".rjust(28)
        print(line)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "kernels", "machine": platform.machine(), "cores": os.cpu_count(),
              "numpy": np.__version__, "rounds": args.repeats, "rows": rows}
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
