"""Learning curves: every trained model of a preset scored at its training snapshots.

A preset asks for snapshots with `snapshot_every` in a `[train.*]` table: `ntm.train.fit` then keeps the
EMA weights every that many steps (the last step included) beside the cached model, in
`<folder>.snapshots` (`ntm.checkpoint.snapshots_of`). `learning_curves` builds each model of the preset,
finds the cached folder its weights came from (by the weights hash its spec records), and scores the
model again with each earlier snapshot standing in for the final weights (`ntm.checkpoint.using_snapshot`),
with the preset's own suite settings, prompts and seeds. The last point is the main table's record. Records
of step N go to OUT/curves/step-N/records; OUT/learning_curves.csv and OUT/plots/learning_curves.png
gather them. A model whose weights are not one cached folder with snapshots (ground truth, ntm-fast's
pair of networks, an adapter of outside weights) has no curve and is listed as skipped.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from benchmarks.presets import Preset
from benchmarks.records import RecordStore
from ntm.checkpoint import is_saved, snapshots_of, using_snapshot, weights_hash

CURVE_SUITES = ("geneval", "fid")
METRICS = ("geneval_overall", "fid_evalclip")
COLUMNS = [
    "model", "family", "recipe", "step", "total_steps",
    *(c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")),
]


def wants_curves(preset: Preset) -> bool:
    """Whether any training table of `preset` keeps snapshots."""
    return any(int(t.get("snapshot_every", 0)) > 0 for t in preset.train.values())


def own_folder(checkpoints: Path, weights: str) -> Path | None:
    """The cached model folder in `checkpoints` whose weights hash is `weights`, if exactly one."""
    found = [
        d for d in sorted(checkpoints.iterdir())
        if d.is_dir() and "." not in d.name and is_saved(d) and weights_hash(d) == weights
    ] if checkpoints.is_dir() else []
    return found[0] if len(found) == 1 else None


def snapshot_steps(folder: Path) -> list[int]:
    """The training steps at which `folder`'s model has snapshots, ascending."""
    return sorted({int(p.stem.rsplit("step", 1)[1]) for p in snapshots_of(folder).glob("fit-*-step*.pt")})


def learning_curves(
    preset: Preset, out: Path, models: Sequence[str] | None = None, device: str | None = None, progress: bool = False,
) -> tuple[Path, list[str]]:
    """Score every model of `preset` (or `models`) at its snapshots; (OUT/learning_curves.csv, skipped models).

    Needs the preset's models trained in OUT/checkpoints with snapshots (`ntm-bench reproduce` does both);
    finished points are found in their records and not recomputed."""
    from benchmarks.runner import evaluate, share_checkpoints, train
    from benchmarks.tables import summary_frame

    out = Path(out)
    suites = tuple(s for s in CURVE_SUITES if s in preset.suites)
    rows, skipped = [], []
    final = summary_frame(RecordStore(out / "records"))  # the main table's records: each curve's last point
    for model in models or preset.models:
        generator = train(preset, out, model, device=device, progress=progress)
        spec = generator.spec
        folder = own_folder(out / "checkpoints", spec.weights_hash) if spec.weights_hash else None
        steps = snapshot_steps(folder) if folder is not None else []
        if not steps:
            skipped.append(model)
            continue
        recipe = folder.name.rsplit("-", 1)[0]
        for step in steps:
            if step == steps[-1]:  # the final weights: the main table's record
                frame = final
            else:
                where = share_checkpoints(out / "curves" / f"step-{step}", out / "checkpoints")
                with using_snapshot(recipe, step):
                    evaluate(preset, where, models=[model], suites=suites, device=device, progress=progress)
                frame = summary_frame(RecordStore(where / "records"))
            summary = frame.set_index("model").loc[model] if model in set(frame["model"]) else {}
            rows.append({
                "model": model, "family": spec.family, "recipe": recipe, "step": step, "total_steps": steps[-1],
                **{c: _value(summary, c) for c in COLUMNS[5:]},
            })
    path = write_curves(out, rows)
    return path, skipped


def _value(summary, column: str):
    value = summary.get(column) if hasattr(summary, "get") else None
    return None if value is None or value != value else float(value)


def write_curves(out: Path, rows: list[dict]) -> Path:
    """OUT/learning_curves.csv (atomically) and OUT/plots/learning_curves.png."""
    from ntm.checkpoint import atomic_write_bytes

    path = out / "learning_curves.csv"
    lines = [",".join(COLUMNS)]
    lines += [",".join("" if r[c] is None else str(r[c]) for c in COLUMNS) for r in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    if rows:
        plot_curves(rows, out / "plots" / "learning_curves.png")
    return path


def read_curves(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def plot_curves(rows: list[dict], path: Path) -> Path:
    """GenEval-style overall and FID against the fraction of each model's training done, one line per model."""
    from benchmarks.plots import _figure, save_png

    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for ax, metric, label in zip(axes, METRICS, ("GenEval-style overall", "FID (eval-CLIP)"), strict=True):
        for model in dict.fromkeys(r["model"] for r in rows):
            points = [r for r in rows if r["model"] == model and r[metric] not in (None, "")]
            if not points:
                continue
            x = [float(r["step"]) / float(r["total_steps"]) for r in points]
            y = [float(r[metric]) for r in points]
            line = ax.plot(x, y, "o-", label=f"{model} ({points[-1]['total_steps']} steps)", lw=1.2, ms=3.5)[0]
            lo, hi = [r[f"{metric}_lo"] for r in points], [r[f"{metric}_hi"] for r in points]
            if all(v not in (None, "") for v in lo + hi):
                ax.fill_between(x, [float(v) for v in lo], [float(v) for v in hi], color=line.get_color(), alpha=0.12)
        ax.set_xlabel("fraction of the model's training steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
