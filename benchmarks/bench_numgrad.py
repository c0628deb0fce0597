"""Time the network's numerical gradient, every method and backend side by side.

Usage::

    python benchmarks/bench_numgrad.py [--quick] [--threads 1,2] [--full-threads 2] [--json PATH]

The book's setting: ``TwoLayerNet(784, 50, 10)`` with parameters from a seed,
one real MNIST batch of 100 (``load_mnist``: ``$ZEROKARA_DATA/mnist`` or the
embedded copy), ``h = 1e-4``. Rows:

* ``full / python``: the book's loop (np.nditer, a NumPy forward pass per
  perturbation), ~30 s a batch: timed ``--book-runs`` times (default 2);
  with ``--quick`` estimated from a sample of parameters (marked "est.");
* ``full / cython``: the same algorithm compiled (``--full-threads``, default 2);
* ``incremental / cython``: the Taylor-series kernel, per thread count;
* ``literal / cython``: the same perturbations with exp/log (its fallback);
* ``incremental / python``: the NumPy twin (vectorised exp/log).

The compiled rows run the loops the CPU supports (``avx2+fma`` where it
has them, picked at import; no ``-march=native``) and then, unless
``--no-baseline``, what a CPU without AVX2 runs: the portable build with its
baseline (SSE2) loops.

Each row is the median of its runs, with the spread (min..max); the speedup
is against the book's loop. The machine is shared: runs are sequential and
few for the slow rows. The table also goes to a JSON file (``--json``,
default ``benchmarks/results/numgrad.json``), written to a temporary file
and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KEYS = ("W1", "b1", "W2", "b2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: few repeats, no compiled full, book loop estimated")
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts for the compiled kernels (default 1,2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each fast row (default 50, quick 5)")
    parser.add_argument("--book-runs", type=int, default=2,
                        help="runs of the book's NumPy loop, ~30 s each (default 2)")
    parser.add_argument("--full-runs", type=int, default=2,
                        help="runs of the compiled full method per thread count (default 2)")
    parser.add_argument("--full-threads", default="2",
                        help="thread counts for the compiled full method, seconds each (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parameters and the batch")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the rows with the portable loops forced on an AVX2 CPU")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "numgrad.json",
                        help="where to write the results (default benchmarks/results/numgrad.json)")
    args = parser.parse_args(argv)
    for name in ("threads", "full_threads"):
        counts = [int(s) for s in getattr(args, name).split(",") if s.strip()]
        if not counts or min(counts) < 1:
            parser.error(f"--{name.replace('_', '-')} must list positive integers")
        setattr(args, name, counts)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 50
    return args


def batch(seed):
    try:
        from zerokara import load_mnist
    except ImportError:  # before the package re-exports it
        from zerokara.datasets import load_mnist

    (x_train, t_train), _ = load_mnist(normalize=True, flatten=True, one_hot_label=False)
    idx = np.random.RandomState(seed).choice(len(x_train), 100, replace=False)
    return np.ascontiguousarray(x_train[idx]), np.ascontiguousarray(t_train[idx])


def timed(call, runs, warmup=True):
    """Seconds of each of ``runs`` calls (after one untimed call that fills caches)."""
    if warmup:
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def book_loop_estimate(net, x, t, sample=400):
    """Seconds per batch of the book's loop, from ``sample`` random parameters.

    Every parameter costs the same two forward passes, so the time of a
    sample scales to all of them.
    """
    from zerokara.backends._numgrad_python import _book_loss

    params = {k: net.params[k].copy() for k in KEYS}
    flat = [(k, idx) for k in KEYS for idx in np.ndindex(params[k].shape)]
    rng = np.random.RandomState(0)
    chosen = [flat[i] for i in rng.choice(len(flat), sample, replace=False)]
    h = 1e-4
    start = time.perf_counter()
    for key, idx in chosen:
        p = params[key]
        tmp = p[idx]
        p[idx] = float(tmp) + h
        _book_loss(x, t, *(params[k] for k in KEYS))
        p[idx] = tmp - h
        _book_loss(x, t, *(params[k] for k in KEYS))
        p[idx] = tmp
    return (time.perf_counter() - start) * len(flat) / sample


def main(argv=None) -> int:
    args = parse_args(argv)
    from zerokara import TwoLayerNet
    from zerokara.backends import get_backend
    from zerokara.trainer import write_json

    x, t = batch(args.seed)
    nets = {}
    for name in ("python", "cython"):
        try:
            nets[name] = TwoLayerNet(784, 50, 10, seed=args.seed, backend=name)
        except ImportError as exc:
            print(f"(no {name} backend: {exc})", file=sys.stderr)
    degree = None
    if "cython" in nets:
        from zerokara._numgrad import series_degree

        degree = series_degree(x, nets["cython"].params["W2"], 1e-4)

    rows = []

    def row(method, backend, threads, times, note="", simd="-"):
        rows.append({
            "method": method, "backend": backend, "threads": threads, "simd": simd, "note": note,
            "runs": len(times), "median_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
        })
        r = rows[-1]
        print(f"  {method:<11} {backend:<7} {str(threads):>7} {simd:<8}  {r['median_ms']:12.2f} ms"
              f"  ({r['min_ms']:.2f}..{r['max_ms']:.2f}, {len(times)} runs) {note}", file=sys.stderr)

    def numgrad(name, method, threads):
        return lambda: nets[name].numerical_gradient(x, t, method=method, threads=threads)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_before is not None and load_before > 0.5:
        print(f"warning: load average {load_before:.2f} before starting: other processes will "
              "slow the timings (the multi-threaded rows most)", file=sys.stderr)
    print("measuring (the machine is shared: keep it quiet)...", file=sys.stderr)
    if "python" in nets:
        if args.quick:
            row("full", "python", "-", [book_loop_estimate(nets["python"], x, t)], "est.")
        else:
            row("full", "python", "-", timed(numgrad("python", "full", None), args.book_runs, warmup=False))
    if "cython" in nets:
        import importlib

        # The backend runs zerokara._numgrad or its AVX2 twin _numgrad_avx2
        # (setup.py builds both on x86-64; the C helpers inside either pick
        # AVX2+FMA or baseline loops). The "baseline" rows run what a CPU
        # without AVX2 gets: the portable build with its baseline helpers.
        glue = get_backend("cython")
        chosen = glue.numerical_gradient
        portable = importlib.import_module("zerokara._numgrad")
        kernel = importlib.import_module(chosen.__module__)
        variants = [(kernel.simd(), kernel, kernel.simd() != "baseline")]
        if args.baseline and variants[0][0] != "baseline":
            variants.append(("baseline", portable, False))
        for variant, module, fast in variants:
            previous = module._use_simd(fast)
            glue.numerical_gradient = module.numerical_gradient
            try:
                for n in args.threads:
                    row("incremental", "cython", n, timed(numgrad("cython", "incremental", n), args.repeats),
                        simd=variant)
                for n in args.threads:
                    row("literal", "cython", n, timed(numgrad("cython", "literal", n), max(3, args.repeats // 10)),
                        simd=variant)
                if not args.quick:
                    for n in args.full_threads:
                        row("full", "cython", n, timed(numgrad("cython", "full", n), args.full_runs, warmup=False),
                            simd=variant)
            finally:
                module._use_simd(previous)
                glue.numerical_gradient = chosen
    if "python" in nets:
        row("incremental", "python", "-", timed(numgrad("python", "incremental", None), max(3, args.repeats // 10)))

    book = next((r["median_ms"] for r in rows if r["method"] == "full" and r["backend"] == "python"), None)
    for r in rows:
        r["speedup"] = book / r["median_ms"] if book else None

    print()
    print("Numerical gradient of TwoLayerNet(784, 50, 10), one MNIST batch of 100, h = 1e-4")
    if degree is not None:
        print(f"(incremental: Taylor polynomials of degree {degree}; 0 would mean the exp/log fallback)")
    print()
    header = (f"| {'method':<11} | {'backend':<7} | {'threads':>7} | {'loops':<8} | {'ms per batch':>13} "
              f"| {'spread (min..max)':>21} | {'speedup':>9} |")
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        spread = f"{r['min_ms']:.2f}..{r['max_ms']:.2f}"
        speed = f"{r['speedup']:.0f}x" if r["speedup"] and r["speedup"] >= 10 else (
            f"{r['speedup']:.2f}x" if r["speedup"] else "-")
        ms = f"{r['median_ms']:.2f}" + (" est." if r["note"] == "est." else "")
        print(f"| {r['method']:<11} | {r['backend']:<7} | {str(r['threads']):>7} | {r['simd']:<8} | {ms:>13} "
              f"| {spread:>21} | {speed:>9} |")

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_before is not None:
        print(f"(load average {load_before:.2f} before, {load_after:.2f} after)")
    backend = get_backend("cython") if "cython" in nets else None
    build = backend.numerical_gradient.__module__ if backend else None
    payload = {
        "benchmark": "numerical_gradient",
        "net": [784, 50, 10], "batch": 100, "h": 1e-4, "seed": args.seed,
        "quick": args.quick, "series_degree": degree, "build": build,
        "openmp": bool(backend.openmp_enabled()) if backend else False,
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "numpy": np.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, payload)
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
