"""Command line: ``python -m zerokara info`` and ``python -m zerokara train`` (also ``zerokara ...`` once installed)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import List, Optional


def info_lines() -> List[str]:
    """What runs the kernels here: version, backend, OpenMP, threads."""
    import numpy as np

    from . import __version__
    from .backends import get_backend, resolve_threads

    backend = get_backend()
    lines = [
        f"zerokara {__version__}",
        f"backend: {backend.name}",
        f"OpenMP: {'on' if backend.openmp_enabled() else 'off'}",
        f"SIMD: {getattr(backend, 'simd_info', 'none (python backend)')}",
        f"threads: {resolve_threads(None, backend)}"
        + (f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})" if "OMP_NUM_THREADS" in os.environ else ""),
        f"cores: {os.cpu_count()}",
        f"numpy: {np.__version__}",
        f"python: {platform.python_version()} ({sys.executable})",
    ]
    if backend.name == "python":
        try:
            from . import _core  # noqa: F401

            lines.append("compiled extension: built (the python backend was chosen)")
        except ImportError as exc:
            lines.append(f"compiled extension: not available ({exc})")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zerokara", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="print the version, backend, OpenMP and thread count")
    # `train` takes the options of examples/train.py (zerokara.cli); they are
    # parsed there, so `python -m zerokara train --help` shows them.
    sub.add_parser("train", help="train the book's TwoLayerNet on MNIST (see `train --help`)", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .cli import main as train_main

        return train_main(argv[1:], prog=f"{parser.prog} train")
    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
