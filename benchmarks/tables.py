"""Tables from records alone: summary.csv / .md / .tex, one row per model, and sample grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.plots import image_grid
from benchmarks.records import RecordStore, atomic_write_text

IDENTITY = ["model", "family", "steps", "nfe", "params", "train_steps", "teacher_nfe"]
GENEVAL_TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
METRICS = ["geneval_overall", *[f"geneval_{t}" for t in GENEVAL_TASKS], "nll_bpd", "nll_traj_bpd"]
LABELS = ["nll_estimator"]


def summary_frame(store: RecordStore) -> pd.DataFrame:
    """One row per model: spec columns, each metric's mean over seeds (and `<metric>_std` if > 1 seed)."""
    per_model: dict[str, dict] = {}
    values: dict[tuple[str, str], list[float]] = {}
    for s in store.summaries():
        spec = s["spec"]
        training = spec.get("training") or {}
        row = per_model.setdefault(
            s["model"],
            {
                "model": s["model"], "family": spec["family"], "steps": spec["steps"], "nfe": spec["nfe"],
                "params": spec["parameters"], "train_steps": training.get("optimizer_steps"),
                "teacher_nfe": training.get("teacher_nfe"),
            },
        )
        row.setdefault("seeds", set()).add(s["seed"])
        for k, v in s["metrics"].items():
            if k in LABELS:
                row[k] = v
            elif k in METRICS and v is not None:
                values.setdefault((s["model"], k), []).append(float(v))
    for (model, metric), vs in values.items():
        per_model[model][metric] = float(np.mean(vs))
        if len(vs) > 1:
            per_model[model][f"{metric}_std"] = float(np.std(vs, ddof=1))
    rows = []
    for row in per_model.values():
        row["seeds"] = len(row["seeds"])
        rows.append(row)
    stds = {k for r in rows for k in r if k.endswith("_std")}
    columns = IDENTITY + ["seeds"] + [c for m in METRICS for c in (m, f"{m}_std") if c in METRICS or c in stds] + LABELS
    frame = pd.DataFrame(rows, columns=columns)
    # reference rows (ground truth) first, then by family and name
    order = frame["family"].ne("reference").astype(int)
    return frame.assign(_o=order).sort_values(["_o", "family", "model"]).drop(columns="_o").reset_index(drop=True)


def _fmt(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if column == "params":
        return f"{value / 1e6:.2f}M"
    if column in ("train_steps", "teacher_nfe"):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _cells(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, folding `<m>_std` into `<m>` as mean ± std."""
    headers = [c for c in frame.columns if not c.endswith("_std")]
    cells = []
    for _, r in frame.iterrows():
        line = []
        for c in headers:
            text = _fmt(r[c], c)
            std = r.get(f"{c}_std")
            if std is not None and not (isinstance(std, float) and math.isnan(std)):
                text += f" ± {std:.3f}"
            line.append(text)
        cells.append(line)
    return headers, cells


def to_markdown(frame: pd.DataFrame) -> str:
    headers, cells = _cells(frame)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    headers, cells = _cells(frame)

    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")

    lines = [r"\begin{tabular}{" + "l" * 2 + "r" * (len(headers) - 2) + "}", r"\toprule"]
    lines.append(" & ".join(esc(h) for h in headers) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path) -> pd.DataFrame:
    """Rebuild summary.{csv,md,tex} and samples/<model>.png in `out_dir` from `out_dir/records`."""
    out_dir = Path(out_dir)
    store = RecordStore(out_dir / "records")
    frame = summary_frame(store)
    if frame.empty:
        raise FileNotFoundError(f"no records under {store.root}; run `ntm-bench eval` or `ntm-bench reproduce` first")
    atomic_write_text(out_dir / "summary.csv", frame.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", to_markdown(frame))
    atomic_write_text(out_dir / "summary.tex", to_latex(frame))
    first_seed: dict[str, dict] = {}
    for s in store.summaries():
        if s["suite"] == "geneval" and s["seed"] <= first_seed.get(s["model"], s)["seed"]:
            first_seed[s["model"]] = s
    for model, s in first_seed.items():
        art = store.artifacts(s)
        if art:
            title = f"{model} ({s['spec']['steps']} steps, NFE {s['spec']['nfe']})"
            image_grid(art["images"], list(art["prompts"]), out_dir / "samples" / f"{model}.png", title=title)
    return frame
