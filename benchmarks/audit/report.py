"""The audit's files: summary.csv and summary.md (one row per model x check) and its plots, each written atomically.

Plots are drawn on their own Agg canvas (the global matplotlib backend is left alone) and land
under their final names only once complete, as every record of this project does.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.audit.ood import IN_DISTRIBUTION, OodResult
from benchmarks.audit.roc import roc_curve
from benchmarks.audit.typicality import Typicality
from benchmarks.records import atomic_write_bytes, atomic_write_text

PARTS = ("world", "truth gap", "agreement", "ood", "conditional", "typicality", "all")
VERDICTS = """Verdicts: "exact" and "upper bound" numbers may sit above the truth, never below it; "estimate" (ODE)
numbers are neither bounds nor exact; "below truth: bug" is a bound or exact NLL below the exact NLL of its
data by more than 3 standard errors (a dropped log-det or dequantisation term). The truth gap reads the data
NLL on the gaussian world, whose density is known in closed form; NTM's trajectory NLL is a density over
(K + 1) D numbers and is not audited against it. The other parts run on the preset's world."""


def _number(value: float | None, stderr: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{value:.4g}"
    return f"{value:.4g} ± {stderr:.2g}"


def to_markdown(frame: pd.DataFrame, title: str) -> str:
    """The findings as one markdown table per audit part, preceded by the verdicts' meaning."""
    lines = [f"# {title}", "", VERDICTS, ""]
    for part in [p for p in PARTS if p in set(frame["part"])]:
        lines += [f"## {part}", "", "| model | check | value | unit | verdict | detail |", "|---|---|---|---|---|---|"]
        for row in frame[frame["part"] == part].itertuples():
            cells = [row.model, row.check, _number(row.value, row.stderr), row.unit, row.verdict, row.detail]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_ood(result: OodResult, path: Path) -> Path:
    """ROC curves of every OOD set against held-out data: raw NLL (left) and NLL - PNG (right)."""
    fig = _figure(9, 4)
    for i, corrected in enumerate((False, True)):
        ax = fig.add_subplot(1, 2, i + 1)
        for name in result.ood_names:
            fpr, tpr = roc_curve(result.scores(name, corrected), result.scores(IN_DISTRIBUTION, corrected))
            ax.plot(fpr, tpr, label=f"{name} ({result.auroc(name, corrected):.2f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_title(f"{result.model}: {'NLL - PNG bits/dim' if corrected else 'NLL bits/dim'}", fontsize=9)
        ax.set_xlabel("false-positive rate (held-out data)")
        ax.set_ylabel("true-positive rate (OOD)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_typicality(result: Typicality, path: Path) -> Path:
    """Histograms of the NLL (bits/dim) of held-out data and of the model's own samples."""
    fig = _figure(5, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    values = np.concatenate([result.data_bpd, result.sample_bpd])
    bins = np.linspace(values.min(), values.max(), 25) if np.ptp(values) > 0 else 10
    ax.hist(result.data_bpd, bins=bins, alpha=0.6, label="held-out data")
    ax.hist(result.sample_bpd, bins=bins, alpha=0.6, label="model samples")
    ax.set_title(f"{result.model}: KS {result.ks:.2f} (p = {result.p_value:.2g})", fontsize=9)
    ax.set_xlabel("NLL (bits/dim)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_report(
    directory: Path, frame: pd.DataFrame, ood: list[OodResult], typical: list[Typicality], title: str
) -> list[Path]:
    """summary.csv, summary.md, ood_roc_<model>.png and typicality_<model>.png under `directory`."""
    directory = Path(directory)
    atomic_write_text(directory / "summary.csv", frame.to_csv(index=False))
    atomic_write_text(directory / "summary.md", to_markdown(frame, title))
    written = [directory / "summary.csv", directory / "summary.md"]
    written += [plot_ood(r, directory / f"ood_roc_{r.model}.png") for r in ood]
    written += [plot_typicality(r, directory / f"typicality_{r.model}.png") for r in typical]
    return written
