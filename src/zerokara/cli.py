"""``python examples/train.py`` / ``python -m zerokara train``: the chapter's experiment end to end.

Loads MNIST (or Fashion-MNIST), builds the book's ``TwoLayerNet(784, 50,
10)``, trains it by mini-batch SGD with the numerical gradient (the
chapter's method, default) or backprop, prints the book's accuracy line
after each epoch, and writes into the output folder (default
``runs/<timestamp>/``)::

    config.json    the exact configuration: options, seed, backend, threads, versions
    history.json   per-iteration loss, per-epoch accuracies and wall times, status
    history.csv    one row per evaluation: epoch, iteration, train_acc, test_acc, time, eval_time
    params.npz     W1 b1 W2 b2 (np.load(path, allow_pickle=False))
    loss.png       loss per iteration
    accuracy.png   train and test accuracy per epoch

Every file is written to a temporary file in that folder and renamed into
place. Exit codes: 0 done, 1 the loss diverged or the data could not be
loaded, 2 invalid options, 130 interrupted by Ctrl-C (results still written).

Seeds: ``--seed`` (default 0) seeds one ``np.random.RandomState`` that draws
the initial weights (W1, then W2) and then every batch, in the order the
book's global ``np.random`` does: ``--seed s`` draws the same weights and
batches as the book's ``train_neuralnet.py`` after ``np.random.seed(s)``.
The same seed gives the same run bit for bit for any ``--threads``.
``--seed random`` picks a seed from the OS and records it in config.json.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence

__all__ = ["build_parser", "main"]

DATASETS = ("mnist", "fashion-mnist")
#: Training-set sizes, to check options before any data is loaded (both data
#: sets are verified against their published checksums, so the sizes hold).
TRAIN_SIZES = {"mnist": 60000, "fashion-mnist": 60000}
INPUT_SIZE, OUTPUT_SIZE = 784, 10

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------
# Option types: each error names what was expected and what came
# --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number; got {text!r}")
    return value


def _seed(text: str) -> Optional[int]:
    if text.strip().lower() == "random":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 4294967295 or 'random'; got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 4294967295 or 'random'; got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block): what was wrong, and where to look."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of the training script; defaults are the book's (ch04 ``train_neuralnet.py``)."""
    parser = _Parser(
        prog=prog,
        description=(
            "Train the book's TwoLayerNet on MNIST by mini-batch SGD (Deep Learning from Scratch, "
            "chapter 4), with the numerical gradient or backprop. Defaults are the book's."
        ),
        epilog="Exit codes: 0 done, 1 diverged or no data, 2 bad options, 130 interrupted (results written).",
    )
    add = parser.add_argument
    add("--grad", choices=("numerical", "backprop"), default="numerical",
        help="how the gradient is computed: numerical (the chapter's central differences) or backprop (default: %(default)s)")
    add("--numgrad-method", choices=("incremental", "full", "literal"), default="incremental",
        help="numerical gradient algorithm: incremental (same derivatives, milliseconds), "
             "full (the book's brute force: seconds per iteration), literal (incremental without its series); default: %(default)s")
    add("--iters", type=_positive_int, default=10000, metavar="N", help="iterations (the book's iters_num; default: %(default)s)")
    add("--batch-size", type=_positive_int, default=100, metavar="N", help="mini-batch size (default: %(default)s)")
    add("--lr", type=_positive_float, default=0.1, metavar="LR", help="learning rate (default: %(default)s)")
    add("--hidden-size", "--hidden", dest="hidden_size", type=_positive_int, default=50, metavar="N",
        help="hidden units (default: %(default)s)")
    add("--weight-init-std", type=_positive_float, default=0.01, metavar="STD",
        help="initial weights are STD * randn (default: %(default)s)")
    add("--h", type=_positive_float, default=1e-4, metavar="H", help="numerical gradient step (default: %(default)s)")
    add("--seed", type=_seed, default=0, metavar="SEED",
        help="seeds the initial weights and the batches; 'random' picks one (recorded in config.json); default: %(default)s")
    add("--threads", type=_positive_int, default=None, metavar="N",
        help="threads for the kernels (default: OMP_NUM_THREADS or all cores); results do not depend on it")
    add("--no-replace", action="store_true",
        help="sample batches without replacement (a fresh permutation per epoch) instead of the book's with")
    add("--dataset", choices=DATASETS, default="mnist", help="data set (default: %(default)s)")
    add("--data-dir", type=Path, default=None, metavar="DIR",
        help="folder holding the data set's IDX files (default: $ZEROKARA_DATA, the embedded copy, the cache)")
    add("--out", type=Path, default=None, metavar="DIR", help="output folder (default: runs/<timestamp>)")
    add("--show", action="store_true", help="open the loss and accuracy plots in windows at the end")
    add("--backend", choices=("cython", "python"), default=None,
        help="kernels: cython (compiled) or python (NumPy reference); default $ZEROKARA_BACKEND, else cython if built")
    add("--no-progress", action="store_true", help="no progress bar (TQDM_DISABLE=1 does the same)")
    return parser


# --------------------------------------------------------------------------
# Checks made before any work starts
# --------------------------------------------------------------------------


def _default_out() -> Path:
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _check_out(parser: argparse.ArgumentParser, out: Path) -> Path:
    """Create ``out`` and prove it writable, or stop with one line naming --out."""
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        parser.error(f"argument --out: cannot write into {out}: {exc.strerror or exc}")
    return out


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.no_replace and args.batch_size > TRAIN_SIZES[args.dataset]:
        parser.error(
            f"argument --batch-size: {args.batch_size} is larger than the {TRAIN_SIZES[args.dataset]} "
            f"training samples of {args.dataset}, which --no-replace needs (batch size <= training set size)"
        )
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"argument --data-dir: {args.data_dir} is not a folder")
    from .backends import get_backend, resolve_threads

    try:
        backend = get_backend(args.backend)
    except (ImportError, ValueError) as exc:
        parser.error(f"argument --backend: {exc}")
    args.threads_resolved = resolve_threads(args.threads, backend)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import tqdm

    from . import __version__

    try:
        # From the metadata: importing matplotlib here would cost its 30 MB
        # while the images are in memory.
        mpl = version("matplotlib")
    except PackageNotFoundError:
        mpl = "not installed"
    return {
        "zerokara": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "matplotlib": mpl,
        "tqdm": tqdm.__version__,
        "platform": platform.platform(),
    }


def _load(args: argparse.Namespace):
    from . import datasets

    loader = datasets.load_mnist if args.dataset == "mnist" else datasets.load_fashion_mnist
    return loader(normalize=True, flatten=True, one_hot_label=False, data_dir=args.data_dir)


def _err(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run the chapter's training experiment; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The options (default ``sys.argv[1:]``); see ``--help``.
    prog : str, optional
        The program name shown in messages.

    Returns
    -------
    int
        0 completed, 1 diverged (or the data could not be loaded), 2 invalid
        options (argparse exits with it), 130 interrupted by Ctrl-C.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    prog = parser.prog
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _check(parser, args)
    out = _check_out(parser, args.out if args.out is not None else _default_out())
    if args.grad == "numerical" and args.numgrad_method == "full":
        print(
            f"{prog}: warning: --numgrad-method full is the book's brute force: a whole forward pass "
            "per parameter, about 5 s per iteration on 2 cores (10000 iterations: about 14 hours). "
            "'incremental' computes the same derivatives in milliseconds.",
            file=sys.stderr,
        )
    try:
        return _run(args, out, prog)
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (loading, saving, a second Ctrl-C).
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, out: Path, prog: str) -> int:
    import numpy as np

    from .plot import save_plots, show_plots
    from .trainer import TrainConfig, save_history, save_params, train, write_json
    from .two_layer_net import TwoLayerNet

    seed_source = "--seed" if args.seed is not None else "random"
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    config = TrainConfig(
        iters=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        grad=args.grad,
        numgrad_method=args.numgrad_method,
        h=args.h,
        seed=seed,
        replace=not args.no_replace,
        threads=args.threads,
    )

    t0 = time.perf_counter()
    try:
        (x_train, t_train), (x_test, t_test) = _load(args)
    except (OSError, ValueError) as exc:
        _err(prog, f"cannot load {args.dataset}: {exc}")
        return EXIT_FAILED
    load_time = time.perf_counter() - t0
    config.check_train_size(len(x_train))

    net = TwoLayerNet(
        INPUT_SIZE, args.hidden_size, OUTPUT_SIZE, args.weight_init_std,
        seed=seed, backend=args.backend, threads=args.threads,
    )
    # One stream, in the book's order: TwoLayerNet(seed=s) drew W1 then W2
    # from RandomState(s) (the book: np.random.randn after np.random.seed(s));
    # the batches continue that stream, as the book's np.random.choice does.
    rng = np.random.RandomState(seed)
    rng.randn(INPUT_SIZE * args.hidden_size)
    rng.randn(args.hidden_size * OUTPUT_SIZE)

    backend = net._backend  # noqa: SLF001: the module, for openmp_enabled()
    record: Dict[str, Any] = {
        "argv": args.argv,
        "dataset": {
            "name": args.dataset,
            "data_dir": None if args.data_dir is None else str(args.data_dir),
            "train_size": int(len(x_train)),
            "test_size": int(len(x_test)),
            "x_dtype": str(x_train.dtype),
            "normalize": True,
            "load_time": load_time,
        },
        "model": {
            "class": "TwoLayerNet",
            "input_size": INPUT_SIZE,
            "hidden_size": args.hidden_size,
            "output_size": OUTPUT_SIZE,
            "weight_init_std": args.weight_init_std,
        },
        "train": config.to_dict(),
        "seed": seed,
        "seed_source": seed_source,
        "random_stream": "one np.random.RandomState(seed): W1, W2 (randn), then each batch (randint = the book's choice)",
        "epoch_rule": "epoch e ends after iteration ceil(e * train_size / batch_size); accuracy at epoch 0 and after each epoch",
        "sampling": "with replacement (the book's)" if config.replace
        else "without replacement: a fresh permutation per epoch, consecutive batches across epoch ends",
        "backend": net.backend,
        "openmp": bool(backend.openmp_enabled()),
        "threads": args.threads_resolved,
        "threads_option": args.threads,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "versions": _versions(),
        "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "out": str(out),
        "status": "running",
    }
    write_json(out / "config.json", record)

    print(
        f"{args.dataset} ({len(x_train)} train, {len(x_test)} test) | "
        f"TwoLayerNet({INPUT_SIZE}, {args.hidden_size}, {OUTPUT_SIZE}) | "
        f"{args.grad}{' (' + args.numgrad_method + ')' if args.grad == 'numerical' else ''} | "
        f"{args.iters} iterations of {args.batch_size}, lr {args.lr:g} | seed {seed} | "
        f"{net.backend}, {args.threads_resolved} thread{'s' if args.threads_resolved != 1 else ''} | -> {out}"
    )
    history = train(
        net, x_train, t_train, x_test, t_test, config,
        rng=rng, progress=False if args.no_progress else None,
    )
    # The images are 220 MB; matplotlib, imported next, adds 30 MB. Free
    # them first so the peak memory stays the loader's.
    del x_train, t_train, x_test, t_test

    written = [out / "config.json"]
    written.append(save_params(net.params, out / "params.npz"))
    written += save_history(history, out)
    written += save_plots(history, out)
    last = history.last
    record.update(
        status=history.status,
        message=history.message,
        iterations=history.iterations,
        wall_time=history.wall_time,
        final={"iteration": last.iteration, "epoch": last.epoch, "train_acc": last.train_acc, "test_acc": last.test_acc},
        params_iteration=history.params_iteration,
        finished=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
    )
    write_json(out / "config.json", record)
    print(
        f"{history.status} in {history.wall_time:.1f} s: {history.iterations} iterations | "
        f"{'parameters and accuracy of iteration ' + str(last.iteration) + ': ' if last.iteration != history.iterations else ''}"
        f"train acc {last.train_acc:.4f}, test acc {last.test_acc:.4f} | "
        f"wrote {', '.join(p.name for p in written)} to {out}"
    )
    if args.show:
        show_plots(history)
    if history.status == "interrupted":
        return EXIT_INTERRUPTED
    if history.status == "diverged":
        return EXIT_FAILED
    return EXIT_OK
