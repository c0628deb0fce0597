"""The chapter's experiment: train the book's TwoLayerNet on MNIST (ch04 ``train_neuralnet.py``).

    python examples/train.py --grad numerical      # the chapter's method (default)
    python examples/train.py --grad backprop       # chapter 5's, for comparison

Prints the book's ``train acc, test acc`` line after each epoch and writes
loss.png, accuracy.png, history.json/.csv, params.npz and config.json into
``runs/<timestamp>/`` (or ``--out``). ``--help`` lists the options; the
defaults are the book's. ``python -m zerokara train`` runs the same.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

try:
    from zerokara.cli import main as _main
except ImportError:  # run from a source checkout without `pip install .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from zerokara.cli import main as _main


def main(argv: Optional[List[str]] = None) -> int:
    """Run the experiment with ``argv`` (default: the command line); return the exit code."""
    return _main(argv, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
