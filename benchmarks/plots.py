"""Figures (PNG, matplotlib): captioned image grids.

Figures are drawn on their own Agg canvas, so importing this never changes the global backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def image_grid(images: np.ndarray, captions: Sequence[str], out: Path, columns: int = 8, title: str | None = None) -> Path:
    """Save uint8 images (N, C, H, W) as a PNG grid, each titled with its wrapped caption; returns `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = Figure(figsize=(1.7 * columns, 2.0 * rows + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        ax = fig.add_subplot(rows, columns, i + 1)
        pixels = image.transpose(1, 2, 0)
        if pixels.shape[2] == 1:
            ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(pixels, interpolation="nearest")
        ax.set_title(textwrap.fill(str(caption).removeprefix("a photo of "), 20), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(out)
    return out
