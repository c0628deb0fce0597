"""The chapter's two figures from a training :class:`~zerokara.trainer.History`.

``loss.png``: the loss per iteration (the book's figure 4-11);
``accuracy.png``: train and test accuracy per epoch (figure 4-12, drawn as
the book's ``train_neuralnet.py`` does: y from 0 to 1, legend at the lower
right; here train with markers and test dashed).

Files are drawn on ``matplotlib.figure.Figure`` objects and saved with the
Agg renderer: no screen is needed and pyplot's global backend is never
touched (so a Jupyter session's backend stays as it was). Only
:func:`show_plots` imports pyplot, to open windows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Union

import numpy as np

from .trainer import History, atomic_write

__all__ = ["draw_loss", "draw_accuracy", "save_plots", "show_plots"]

PathLike = Union[str, "os.PathLike[str]"]


def draw_loss(ax: Any, history: History) -> None:
    """Loss per iteration on ``ax`` (iterations counted from 1)."""
    loss = np.asarray(history.loss, dtype=float)
    ax.plot(np.arange(1, len(loss) + 1), loss, linewidth=0.6, label="train loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(f"loss ({history.config.grad}, batch {history.config.batch_size}, lr {history.config.lr:g})")
    if len(loss):
        ax.set_xlim(0, len(loss) + 1)
    ax.set_ylim(bottom=0)


def draw_accuracy(ax: Any, history: History) -> None:
    """Train (markers) and test (dashed) accuracy per epoch on ``ax``, y from 0 to 1."""
    records = history.evaluations
    epochs = [r.epoch for r in records]
    ax.plot(epochs, [r.train_acc for r in records], marker="o", label="train acc")
    ax.plot(epochs, [r.test_acc for r in records], linestyle="--", label="test acc")
    ax.set_xlabel("epochs")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.0)
    ax.legend(loc="lower right")
    ax.set_title(f"accuracy ({history.config.grad})")


def _figure() -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 4.8), dpi=100)


def _save(fig: Any, path: Path) -> Path:
    # Fixed margins that fit these labels: tight_layout() would measure the
    # text first, a third of the time it takes to draw the figure.
    fig.subplots_adjust(left=0.11, right=0.96, bottom=0.11, top=0.92)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def save_plots(history: History, folder: PathLike) -> List[Path]:
    """Write ``loss.png`` and ``accuracy.png`` into ``folder`` (Agg, no screen needed).

    Returns
    -------
    list of Path
        The two files written.
    """
    folder = Path(folder)
    paths = []
    for name, draw in (("loss.png", draw_loss), ("accuracy.png", draw_accuracy)):
        fig = _figure()
        draw(fig.add_subplot(), history)
        paths.append(_save(fig, folder / name))
    return paths


def show_plots(history: History) -> None:
    """Open both figures in windows (pyplot's interactive backend); blocks until they are closed."""
    import matplotlib.pyplot as plt

    for draw in (draw_loss, draw_accuracy):
        fig = plt.figure()
        draw(fig.add_subplot(), history)
        fig.tight_layout()
    plt.show()
