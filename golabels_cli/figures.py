"""Figures of a model's predictions: `eval --plots`' confusion matrices (normalized and raw
counts, a pair per evaluated folder, never overwritten) and the run's mosaic of target images with
their predicted labels (the only view of an unlabeled target a user has). PNGs, with matplotlib.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .files import atomic_path
from .formats import printable
from .results import pyplot
from . import run_files

# ---- confusion matrices -----------------------------------------------------------------------

CONFUSION_TEXT_MAX = 40  # classes; beyond, cell values are unreadable and left out
CONFUSION_TICKS_MAX = 60


def confusion_name(data_dir: str | Path) -> str:
    """The evaluated folder's base name, safe in a file name: characters outside [A-Za-z0-9._-]
    become '_'; "data" for a folder without a name (the root)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(data_dir).resolve().name)[:100]
    return name if name.strip(".") else "data"


def _short(name: str, limit: int = 24) -> str:
    name = printable(name)
    return name if len(name) <= limit else name[:limit - 1] + "…"


def _confusion_figure(plt, result, title: str, normalized: bool):
    """The confusion matrix (rows: true classes, columns: predicted) as fractions of each true
    class (`normalized`) or as image counts, each cell's value written in it (zeros left blank)
    up to CONFUSION_TEXT_MAX classes."""
    import numpy as np

    counts = np.asarray(result.confusion, dtype=float).reshape(len(result.true_classes), len(result.predicted_classes))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    values = shares if normalized else counts
    n = max(counts.shape)
    # Square cells, large enough for the text they hold; room around them for the class names
    # (rotated below, beside on the left), the three-line title and the colour bar.
    cell = min(max(8 / n, 0.4 if n <= CONFUSION_TEXT_MAX else 0.25), 1.2)
    rows, columns = counts.shape
    fig, ax = plt.subplots(figsize=(min(columns * cell + 4.5, 30), min(rows * cell + 3.5, 30)))
    top = 1.0 if normalized else max(float(counts.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bar = make_axes_locatable(ax).append_axes("right", size=0.25, pad=0.15)  # as tall as the matrix, whatever its shape
    fig.colorbar(image, cax=bar, label="fraction of the true class" if normalized else "images")
    if n <= CONFUSION_TICKS_MAX:
        tick_size = 10 if n <= 15 else 8 if n <= 30 else 6.5
        ax.set_xticks(range(len(result.predicted_classes)), [_short(c) for c in result.predicted_classes], rotation=90, fontsize=tick_size)
        ax.set_yticks(range(len(result.true_classes)), [_short(c) for c in result.true_classes], fontsize=tick_size)
    if n <= CONFUSION_TEXT_MAX:
        text_size = 10 if n <= 12 else 8 if n <= 24 else 7
        for (i, j), v in np.ndenumerate(values):
            if counts[i, j] == 0:
                continue  # blank zeros keep a large matrix readable: the off-diagonal mistakes stand out
            text = f"{v:.2f}" if normalized else f"{int(v)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=text_size, color="white" if v > 0.55 * top else "black")
    # Classes are matched by name: where the folder lacks some of the model's classes, the correct
    # cells leave the diagonal, so they are outlined.
    index = {c: j for j, c in enumerate(result.predicted_classes)}
    correct = [(i, index[c]) for i, c in enumerate(result.true_classes) if c in index]
    if any(i != j for i, j in correct):
        from matplotlib.patches import Rectangle

        for i, j in correct:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:orange", linewidth=1.2))
    kind = "normalized (each row: fractions of its true class)" if normalized else "image counts"
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{title}\nconfusion matrix, {kind}\ntop-1 {result.accuracy:.4f}, mean per class {result.mean_class_accuracy:.4f}")
    fig.tight_layout()
    return fig


def _png(plt, fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_confusion_figures(result, folder: Path, data_dir: str | Path, title: str) -> list[Path] | None:
    """`eval --plots`: two PNGs in `folder`, confusion-NAME.png (each row as fractions of its true
    class, so that small classes read as clearly as large ones) and confusion-NAME-counts.png (image
    counts), NAME the evaluated folder's (`confusion_name`). Never overwrites: when either name is
    taken, NAME-2, NAME-3, … Returns the two paths; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    folder = Path(folder)
    figures = [_png(plt, _confusion_figure(plt, result, printable(title), normalized)) for normalized in (True, False)]
    name = confusion_name(data_dir)
    for n in range(1, 100_000):
        paths = [folder / file for file in run_files.confusion_figures(name, n)]
        if any(p.exists() for p in paths):
            continue
        # Each file is linked into place only if its name is free (atomic_path(replace=False)), so
        # that of two evaluations racing for one name, one gets it and the other moves on.
        written: list[Path] = []
        try:
            for path, data in zip(paths, figures):
                with atomic_path(path, replace=False) as tmp:
                    tmp.write_bytes(data)
                written.append(path)
        except FileExistsError:
            for path in written:  # ours, a moment old: the pair moves on together
                path.unlink(missing_ok=True)
            continue
        return written
    raise FileExistsError(f"no free confusion-{name}-N.png name in {folder}")


# ---- target mosaic ----------------------------------------------------------------------------

MOSAIC_MAX = 16


def write_target_mosaic(items: list[tuple[Any, str, float]], path: Path, title: str) -> Path | None:
    """A 4x4 mosaic of target images (the first MOSAIC_MAX of `items`: (PIL image, predicted
    label, confidence)), each under "label 0.93": the one view of an unlabeled target's
    predictions. Written atomically; returns its path; None without matplotlib or items."""
    plt = pyplot()
    items = list(items)[:MOSAIC_MAX]
    if plt is None or not items:
        return None
    import numpy as np
    from PIL import ImageOps

    columns = min(len(items), 4)
    rows = (len(items) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.85 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, label, confidence) in zip(axes.flat, items):
        # Each image fitted into the same white square: an even grid whatever their shapes.
        ax.imshow(np.asarray(ImageOps.pad(image.convert("RGB"), (224, 224), color=(255, 255, 255))))
        ax.set_title(f"{_short(str(label), 22)} {confidence:.2f}", fontsize=10)
    fig.suptitle(printable(title))
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
