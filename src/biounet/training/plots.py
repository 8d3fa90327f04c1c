"""Pictures of a training run: loss and validation curves, validation overlays (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biounet.data.io import write_png
from biounet.data.outputs import atomic_path


def write_curves(path: str | Path, history: Sequence[dict]) -> Path:
    """Plot training loss and validation score against the step, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    steps = [row["step"] for row in history]
    figure, loss_axis = pyplot.subplots(figsize=(6, 3.5), dpi=100)
    loss_axis.plot(steps, [row["loss"] for row in history], color="tab:blue", marker=".")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("training loss (weighted CE)", color="tab:blue")
    score_axis = loss_axis.twinx()
    score_axis.plot(steps, [row["val_score"] for row in history], color="tab:orange", marker=".")
    score_axis.set_ylabel("validation score", color="tab:orange")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    pyplot.close(figure)
    return path


def overlay(
    image: np.ndarray, foreground: np.ndarray, truth: np.ndarray | None = None
) -> np.ndarray:
    """Return RGB uint8: image in grey, prediction in green, true outline in magenta."""
    from scipy import ndimage

    grey = image if image.ndim == 2 else image[0]
    low, high = np.percentile(grey, [1, 99])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1) * 0.8
    rgb[..., 1] = np.where(foreground, 0.5 * rgb[..., 1] + 0.5, rgb[..., 1])
    if truth is not None:
        edge = truth & ~ndimage.binary_erosion(truth)
        rgb[edge] = (1.0, 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def write_overlays(folder: str | Path, items: Sequence, predictions: Sequence[np.ndarray]) -> None:
    """Write `<name>.png` overlays of predictions (K, Y, X) on their items into `folder`.

    A volume (K, Z, Y, X) is shown by its middle Z slice.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item, probabilities in zip(items, predictions):
        image, target = item.image, item.target
        if image.ndim == 4:  # (C, Z, Y, X)
            middle = image.shape[1] // 2
            image, target = image[:, middle], target[middle]
            probabilities = probabilities[:, middle]
        picture = overlay(image, probabilities[0] < 0.5, target > 0)
        write_png(folder / f"{_safe_name(item.name)}.png", picture)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
