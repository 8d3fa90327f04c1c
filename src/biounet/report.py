"""Self-contained HTML reports: pictures embedded as PNG data, a metrics table, a note."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biounet.data.outputs import atomic_path


@dataclass
class Report:
    """A report being assembled: sections of text, tables and pictures, in order."""

    title: str
    sections: list[str] = field(default_factory=list)

    def add_text(self, heading: str, text: str) -> None:
        self.sections.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>")

    def add_table(self, heading: str, rows: Sequence[Mapping[str, object]]) -> None:
        if not rows:
            return
        keys = list(rows[0])
        head = "".join(f"<th>{html.escape(str(key))}</th>" for key in keys)
        body = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(_cell(row.get(key)))}</td>" for key in keys)
            + "</tr>"
            for row in rows
        )
        self.sections.append(f"<h2>{html.escape(heading)}</h2><table><tr>{head}</tr>{body}</table>")

    def add_pictures(
        self, heading: str, pictures: Sequence[tuple[str, np.ndarray | bytes]]
    ) -> None:
        """Add captioned pictures: uint8 arrays (Y, X) / (Y, X, 3) or PNG bytes."""
        figures = "".join(
            f'<figure><img src="data:image/png;base64,{_png_base64(picture)}" '
            f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
            for caption, picture in pictures
        )
        self.sections.append(f"<h2>{html.escape(heading)}</h2><div class=row>{figures}</div>")

    def write(self, path: str | Path) -> Path:
        page = (
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{''.join(self.sections)}</body></html>"
        )
        path = Path(path)
        with atomic_path(path) as temporary:
            temporary.write_text(page, encoding="utf-8")
        return path


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "th{background:#f3f3f3}.row{display:flex;flex-wrap:wrap;gap:16px}"
    "figure{margin:0}img{max-width:440px;image-rendering:pixelated;border:1px solid #ddd}"
    "figcaption{font-size:90%;color:#555}"
)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def _png_base64(picture: np.ndarray | bytes) -> str:
    if isinstance(picture, bytes):
        return base64.b64encode(picture).decode("ascii")
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(picture)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_uint8(image: np.ndarray, *, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Scale an image's percentiles `low`..`high` to 0..255 for display."""
    bottom, top = np.percentile(image, [low, high])
    scaled = np.clip((image - bottom) / max(top - bottom, 1e-12), 0, 1)
    return (scaled * 255).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Colour each instance of `labels` over a grey `image`; outlines in white."""
    from skimage.segmentation import find_boundaries

    grey = to_uint8(image).astype(np.float32) / 255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    palette = np.random.default_rng(0).uniform(0.2, 1.0, (int(labels.max()) + 1, 3))
    inside = labels > 0
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * palette[labels[inside]]
    rgb[find_boundaries(labels, mode="inner")] = 1.0
    return (rgb * 255).astype(np.uint8)


def heat_map(values: np.ndarray) -> np.ndarray:
    """Render a non-negative map (e.g. weights) with matplotlib's viridis, as RGB uint8."""
    from matplotlib import colormaps

    scaled = values / max(float(values.max()), 1e-12)
    return (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)


def downsample(picture: np.ndarray, max_size: int = 1024) -> np.ndarray:
    """Take every n-th pixel so the longest side is at most `max_size` (for thumbnails)."""
    step = max(1, math.ceil(max(picture.shape[:2]) / max_size))
    return picture[::step, ::step]
