"""How far the two-thread training step is from what two cores can give here.

Usage::

    python benchmarks/bench_scaling.py [--quick] [--repeats N] [--json PATH]

The step is the trainer's backprop step as it runs it
(``TwoLayerNet._sgd_stepper(x_train, t_train, 0.1).many``: 64 batches of
100 drawn from real MNIST, their gradient, update and loss in one kernel
call), timed three ways, round after round (one of each per round, with a
short pause before each so that the threads of the one before go idle):

* ``2 threads``: one network, the step on two threads;
* ``1 thread``: one network, the step on one thread;
* ``two at once``: two networks, each with its own batches, their
  one-thread steps run at the same time from two Python threads (the
  kernel releases the GIL): nothing is shared and nothing waits for the
  other, so the time per step of the pair (half the wall time) is what a
  perfect split of the work between the two cores could reach on this
  machine at that moment.

The table gives the time per step (median over the rounds, min..max) and
the ratios taken within each round: ``1 thread / 2 threads`` (the speedup
of the second thread), ``1 thread / two at once`` (the same for the perfect
split) and ``2 threads / two at once`` (how much slower the two-thread
step is than the perfect split: the most any other division of the work
between the threads could save). The table also goes to ``--json``
(default ``benchmarks/results/scaling.json``), through a temporary file
renamed into place.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAUSE = 0.05  # seconds before each measurement: the OpenMP threads of the one before go idle


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 30, quick 3)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "scaling.json",
                        help="where to write the results (default benchmarks/results/scaling.json)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 30
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    return args


def spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    args = parse_args(argv)
    from zerokara import TwoLayerNet, load_mnist
    from zerokara.backends import get_backend
    from zerokara.trainer import SAMPLE_AHEAD, STEPS_PER_CALL, _Sampler, write_json

    if get_backend().name != "cython":
        raise SystemExit("bench_scaling needs the compiled backend (pip install .)")
    (x_train, t_train), _ = load_mnist(normalize=True)
    train_size = len(x_train)

    def stepper(seed: int, threads: int) -> Callable[[], None]:
        """One call of STEPS_PER_CALL steps on a network of its own, batches drawn as the trainer draws them."""
        net = TwoLayerNet(784, 50, 10, seed=seed)
        take = _Sampler(np.random.RandomState(seed), train_size, 100, True, ahead=SAMPLE_AHEAD, total=1 << 40).take
        many = net._sgd_stepper(x_train, t_train, 0.1, threads=threads).many
        return lambda: many(take(STEPS_PER_CALL), [])

    two, one = stepper(0, 2), stepper(1, 1)
    pair = [stepper(2, 1), stepper(3, 1)]

    def at_once() -> None:
        workers = [threading.Thread(target=call) for call in pair]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    timed = {"2 threads": (two, 1), "1 thread": (one, 1), "two at once": (at_once, 2)}
    for call, _ in timed.values():  # warm up: threads, caches, page faults
        call()
    times: Dict[str, List[float]] = {key: [] for key in timed}
    for _ in range(args.repeats):
        for key, (call, steps_per_step) in timed.items():
            time.sleep(PAUSE)
            start = time.perf_counter()
            call()
            times[key].append((time.perf_counter() - start) * 1e3 / (STEPS_PER_CALL * steps_per_step))
    ratios = {
        "1 thread / 2 threads": [a / b for a, b in zip(times["1 thread"], times["2 threads"])],
        "1 thread / two at once": [a / b for a, b in zip(times["1 thread"], times["two at once"])],
        "2 threads / two at once": [a / b for a, b in zip(times["2 threads"], times["two at once"])],
    }

    print(f"zerokara training step (trainer's, {STEPS_PER_CALL} steps a call), MNIST 784-50-10, "
          f"{os.cpu_count()} cores; median (min..max) over {args.repeats} rounds")
    for key, values in times.items():
        s = spread(values)
        print(f"{key + ', ms a step':30s} {s['median']:.3f} ({s['min']:.3f}..{s['max']:.3f})")
    for key, values in ratios.items():
        s = spread(values)
        print(f"{key:30s} {s['median']:.3f} ({s['min']:.3f}..{s['max']:.3f})")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "scaling", "machine": platform.machine(), "cores": os.cpu_count(),
              "numpy": np.__version__, "rounds": args.repeats,
              "ms_per_step": {key: {**spread(v), "values": v} for key, v in times.items()},
              "ratios": {key: {**spread(v), "values": v} for key, v in ratios.items()}}
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
