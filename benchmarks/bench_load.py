"""Time load_mnist() cold and warm, each in a fresh process, and its peak memory.

Usage::

    python benchmarks/bench_load.py [--runs 3] [--standalone]

Each measurement runs in a new Python process, because what a learner feels
is the cost of a new kernel or script: imports included, nothing memoised in
the process. The user cache (``XDG_CACHE_HOME``) is a fresh temporary folder,
so "cold" really parses, verifies and writes the ``.npy`` cache, and "warm"
reads it. ``ZEROKARA_DATA`` is removed, so the data come from the copy
embedded in the package.

The time is measured inside the child, from just before
``from zerokara.datasets import load_mnist`` to just after the call
returns, so it includes importing the package (``--standalone`` loads
datasets.py from its path instead, leaving out the rest of the package).
Peak RSS is ``ru_maxrss`` of the child after
``load_mnist(normalize=True, one_hot_label=True)``, beside the RSS of a
child that only imports NumPy, for scale.

The machine is shared: runs are few and sequential on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS_PY = REPO / "src" / "zerokara" / "datasets.py"

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
if {standalone!r}:
    import importlib.util
    spec = importlib.util.spec_from_file_location("zerokara_datasets", {path!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    load_mnist = module.load_mnist
else:
    from zerokara.datasets import load_mnist
t2 = time.perf_counter()
if {load!r}:
    (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label={one_hot!r})
t3 = time.perf_counter()
print(json.dumps({{
    "numpy_import": t1 - t0,
    "module_import": t2 - t1,
    "load": t3 - t2,
    "total": t3 - t0,
    "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}}))
"""


def run_child(cache: Path, *, standalone: bool, load: bool = True, one_hot: bool = False) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), TQDM_DISABLE="1")
    env.pop("ZEROKARA_DATA", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    code = CHILD.format(standalone=standalone, path=str(DATASETS_PY), load=load, one_hot=one_hot)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs (default 3)")
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="load datasets.py by path instead of importing the zerokara package",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="zerokara-bench-") as tmp:
        cache = Path(tmp)
        cold = run_child(cache, standalone=args.standalone)
        warm = [run_child(cache, standalone=args.standalone) for _ in range(args.runs)]
        peak = run_child(cache, standalone=args.standalone, one_hot=True)
        baseline = run_child(cache, standalone=args.standalone, load=False)

    what = "datasets.py alone" if args.standalone else "zerokara package"
    print(f"load_mnist() from the embedded copy, {what}, fresh process each (seconds)")
    print(f"{'':22} {'import numpy':>12} {'import module':>13} {'load_mnist()':>12} {'total':>8}")

    def row(name: str, r: dict) -> None:
        print(
            f"{name:22} {r['numpy_import']:12.3f} {r['module_import']:13.3f} "
            f"{r['load']:12.3f} {r['total']:8.3f}"
        )

    row("cold (parse + cache)", cold)
    for i, r in enumerate(warm, 1):
        row(f"warm run {i}", r)
    median = {k: statistics.median(r[k] for r in warm) for k in warm[0]}
    row("warm median", median)
    print()
    print(f"peak RSS, load_mnist(normalize=True, one_hot_label=True), warm: {peak['maxrss_mib']:.0f} MiB")
    print(f"peak RSS, imports only (numpy + module):                     {baseline['maxrss_mib']:.0f} MiB")
    print("(x_train float32 alone is 60000 x 784 x 4 B = 179 MiB, x_test 30 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
