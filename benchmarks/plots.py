"""Figures (PNG, matplotlib): captioned sample grids, quality against NFE, GenEval per category.

Figures are drawn on their own Agg canvas, so importing this never changes the global backend.
Each `*_figure` function builds a Figure from a summary frame (one row per model, as
`benchmarks.tables.summary_frame` makes it) or returns None when the frame holds nothing to draw;
`save_png` writes one atomically.
"""

from __future__ import annotations

import math
import os
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

QUALITY_AXES = {
    "geneval_overall": "GenEval-style overall, world parser (higher is better)",
    "geneval_owlv2_overall": "GenEval prompts, OWLv2 detector (higher is better)",
    "geneval_official_overall": "GenEval, its own scorer (higher is better)",
    "fid_evalclip": "FID in the world's eval-CLIP (lower is better)",
    "fid_inception": "FID, InceptionV3 (lower is better)",
}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, out: Path, dpi: int = 100) -> Path:
    """Write `fig` to `out` (temporary file + rename); returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary name: two processes building the same tables never share one
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".png", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def prompt_label(prompt: str, width: int = 20) -> str:
    """A prompt as a grid caption: without the "a photo of " every GenEval prompt starts with, wrapped."""
    return textwrap.fill(str(prompt).removeprefix("a photo of "), width)


def grid_figure(images: np.ndarray, captions: Sequence[str], columns: int = 8, title: str | None = None) -> Figure:
    """uint8 images (N, C, H, W) in a grid, each titled with its prompt."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = _figure(1.7 * columns, 2.0 * rows + (0.4 if title else 0))
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        ax = fig.add_subplot(rows, columns, i + 1)
        pixels = image.transpose(1, 2, 0)
        if pixels.shape[2] == 1:
            ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(pixels, interpolation="nearest")
        ax.set_title(prompt_label(caption), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def image_grid(
    images: np.ndarray, captions: Sequence[str], out: Path, columns: int = 8, title: str | None = None
) -> Path:
    """Save uint8 images (N, C, H, W) as a PNG grid, each titled with its wrapped prompt; returns `out`."""
    return save_png(grid_figure(images, captions, columns, title), out)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _family_colours(frame: pd.DataFrame) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {family: palette(i % 10) for i, family in enumerate(sorted(frame["family"].unique()))}


def quality_vs_nfe_figure(frame: pd.DataFrame) -> Figure | None:
    """One panel per quality metric present (GenEval overall, FID): each model a labelled point at its NFE.

    The x axis (NFE) is logarithmic; reference rows (family "reference", NFE 0: the world's own
    renders) cannot sit on it and are drawn as a dashed horizontal line, the ceiling or floor.
    Error bars are the std over seeds where the frame has one.
    """
    metrics = [m for m in QUALITY_AXES if m in frame and frame[m].map(_present).any()]
    if not metrics:
        return None
    colours = _family_colours(frame)
    fig = _figure(5.0 * len(metrics), 4.0)
    panels = []  # (axes, point labels, reference labels), placed once the layout is final
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        ticks, points, references = set(), [], []
        panels.append((ax, points, references))
        for _, row in frame[frame[metric].map(_present)].iterrows():
            value, colour = float(row[metric]), colours[row["family"]]
            if row["family"] != "reference" and not _present(row["nfe"]):
                continue  # an imported score of a model whose NFE is unknown: no place on this axis
            if row["family"] == "reference" or row["nfe"] <= 0:
                ax.axhline(value, color=colour, linestyle="--", linewidth=1)
                references.append((row["model"], value, colour))
                continue
            std = row.get(f"{metric}_std")
            ax.errorbar(row["nfe"], value, yerr=float(std) if _present(std) else None, fmt="o", color=colour,
                        capsize=3, label=row["family"])
            points.append((row["model"], row["nfe"], value))
            ticks.add(int(row["nfe"]))
        ax.set_xscale("log")
        if ticks:
            ax.set_xticks(sorted(ticks), labels=[str(t) for t in sorted(ticks)])
            ax.tick_params(axis="x", which="minor", labelbottom=False)  # the NFEs alone are labelled
            ax.set_xlim(min(ticks) / 1.6, max(ticks) * 1.6)
        ax.set_xlabel("NFE (network evaluations per image, log scale)")
        ax.set_ylabel(QUALITY_AXES[metric])
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        if unique:
            ax.legend(unique.values(), unique.keys(), fontsize=7, title="family", title_fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    for ax, points, references in panels:
        _label_points(ax, points, references)
    return fig


LABEL_SIZE = 7  # points
LABEL_GAP = 5.0  # points between a point and its label
MARKER_RADIUS = 3.0  # points: half the default marker size


def _label_points(ax, points: list, references: list) -> None:
    """Label each point (model, x, y) and each reference line (model, y, colour) so no two labels overlap.

    Placement is greedy and deterministic, in display space, once the layout and limits are final:
    reference labels sit just above their line at the left (raised in steps of one label height while
    they would overlap), then the points, left to right and top down, each take the first free spot of:
    right of the point, left of it, then one, two, ... label heights above or below on either side (joined
    to the point by a thin leader line). A spot inside the axes is preferred; no label covers a marker.
    Labels stay out of the layout (placed after it).
    """
    from matplotlib.transforms import Bbox

    fig = ax.get_figure()
    renderer = fig.canvas.get_renderer()
    ax.set_xlim(ax.get_xlim())  # freeze the limits the positions below are computed from
    ax.set_ylim(ax.get_ylim())
    frame = ax.get_window_extent(renderer)
    px = fig.dpi / 72.0  # pixels per point
    gap, radius = LABEL_GAP * px, MARKER_RADIUS * px
    centres = [tuple(ax.transData.transform((float(x), float(y)))) for _, x, y in points]
    taken = [Bbox.from_extents(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]

    def size(text: str) -> tuple[float, float]:
        probe = fig.text(0, 0, text, fontsize=LABEL_SIZE)
        box = probe.get_window_extent(renderer)
        probe.remove()
        return box.width, box.height

    def first_free(boxes):
        fallback = None
        for choice, box in boxes:
            if any(_overlap(box, other) for other in taken):
                continue
            if frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1:
                return choice, box
            fallback = fallback or (choice, box)
        return fallback or (choice, box)

    for model, value, colour in references:
        width, height = size(model)
        x0, y = ax.get_yaxis_transform().transform((0.01, value))  # x in axes fraction, y in data
        steps = [0] + [k * sign for k in range(1, 13) for sign in (1, -1)]
        k, box = first_free((k, Bbox.from_bounds(x0, y + k * (height + 2), width, height)) for k in steps)
        taken.append(box)
        ax.annotate(model, (0.01, value), xycoords=("axes fraction", "data"), xytext=(0, k * (height + 2) / px),
                    textcoords="offset points", fontsize=LABEL_SIZE, color=colour, va="bottom", in_layout=False)

    order = sorted(range(len(points)), key=lambda i: (centres[i][0], -centres[i][1], str(points[i][0])))
    for i in order:
        model, x, y = points[i]
        cx, cy = centres[i]
        width, height = size(model)
        step = height + 2
        spots = [(0, 1), (0, -1)] + [(k * sign, side) for k in range(1, 13) for side in (1, -1) for sign in (1, -1)]
        (k, side), box = first_free(
            ((k, side), Bbox.from_bounds(cx + gap if side > 0 else cx - gap - width, cy + k * step - height / 2,
                                         width, height))
            for k, side in spots
        )
        taken.append(box)
        leader = dict(arrowstyle="-", color="0.5", linewidth=0.6, shrinkA=0, shrinkB=radius / px) if k else None
        ax.annotate(model, (x, y), xytext=(side * gap / px, k * step / px), textcoords="offset points",
                    fontsize=LABEL_SIZE, ha="left" if side > 0 else "right", va="center", arrowprops=leader,
                    in_layout=False)


def _overlap(a, b, pad: float = 1.0) -> bool:
    """Whether boxes `a` and `b` come within `pad` pixels of each other."""
    return a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad


def geneval_per_category_figure(frame: pd.DataFrame, tasks: Sequence[str]) -> Figure | None:
    """Grouped bars: for each GenEval task (column `geneval_<task>`), one bar per model with a score."""
    columns = [f"geneval_{t}" for t in tasks]
    if not all(c in frame for c in columns):
        return None
    scored = frame[frame[columns].map(_present).any(axis=1)]
    if scored.empty:
        return None
    fig = _figure(max(6.0, 1.2 * len(tasks) + 0.25 * len(scored) * len(tasks)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(scored)
    x = np.arange(len(tasks))
    for i, (_, row) in enumerate(scored.iterrows()):
        values = [float(row[c]) if _present(row[c]) else math.nan for c in columns]
        stds = [row.get(f"{c}_std") for c in columns]
        errors = [float(s) if _present(s) else 0.0 for s in stds] if any(_present(s) for s in stds) else None
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, yerr=errors, capsize=2, label=row["model"])
    ax.set_xticks(x, labels=[t.replace("_", " ") for t in tasks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("GenEval per category")
    ax.legend(fontsize=7, title="model", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
