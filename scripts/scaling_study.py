"""Teacher scaling study on CPU: GenEval-style score and FID of the flow-matching teacher (16 Heun steps)
against backbone width/depth, predictor patch size, resolution and training steps, with wall time per run.

Every arm is a teacher of one shape (`ARMS`: width, depth, patch, resolution), trained with the same batch and lr for
`--steps` optimizer steps, and scored on a validation draw, never on the evaluation sets: GenEval-style
prompts drawn with prompt_seed 1 (16 per task, 4 images each) at evaluation seed 1, and FID against
held-out scenes [100000, 102048). The steps axis comes from the reference teacher's own training
snapshots (`[train.flow_matching] snapshot_every` in the base preset), scored the same way, so the study
and the reference run share that teacher. The 32 px arm has no FID: the shipped eval-CLIP reads 16 px. The guidance arm samples
the preset's teacher at other classifier-free guidance weights (validation draw again).

Usage: python scripts/scaling_study.py --preset cpu-reference --out results/scaling [--arms a,b] [--steps N]
Writes OUT/scaling.csv, OUT/scaling.md and OUT/scaling.png; checkpoints go to OUT/checkpoints (reused from
results/<preset>/checkpoints where the recipe is the same).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.presets import Preset, load_preset  # noqa: E402
from benchmarks.records import RecordStore  # noqa: E402
from benchmarks.runner import evaluate, link_cached, share_checkpoints, train  # noqa: E402
from benchmarks.tables import summary_frame  # noqa: E402
from ntm.backbone import SIZES  # noqa: E402

# arm -> the teacher's shape: width, depth, predictor patch, resolution (the preset gives batch, lr and the rest)
ARMS: dict[str, dict] = {
    "w128-d4-p4-16px": dict(width=128, depth=4, patch=4, resolution=16),
    "w192-d6-p4-16px": dict(width=192, depth=6, patch=4, resolution=16),
    "w128-d4-p2-16px": dict(width=128, depth=4, patch=2, resolution=16),
    "w128-d4-p4-32px": dict(width=128, depth=4, patch=4, resolution=32),
}
EXTRA = ("steps", "guidance")
"""Arms of the preset's own teacher: its training snapshots, and its CFG weight at sampling."""
GUIDANCE = (1.5, 2.0, 3.0, 4.0, 6.0)
MODEL = "fm-teacher"
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLUMNS = [
    "arm", "width", "depth", "patch", "resolution", "parameters", "steps", "batch_size", "train_wall_s", "guidance",
    "geneval_overall", "geneval_overall_lo", "geneval_overall_hi", *(f"geneval_{t}" for t in TASKS),
    "fid_evalclip", "fid_evalclip_lo", "fid_evalclip_hi", "fid_evalclip_floor",
]


def validation(preset: Preset, suites: tuple[str, ...]) -> Preset:
    """The preset's teacher alone, scored on the validation draw (module docstring)."""
    options = dict(preset.suite_options)
    options["geneval"] = options.get("geneval", {}) | {"prompt_seed": 1, "prompts_per_category": 16, "images_per_prompt": 4}
    options["fid"] = options.get("fid", {}) | {"first_index": 100000}
    return dataclasses.replace(preset, models=(MODEL,), suites=suites, seeds=(1,), suite_options=options, audit=None)


def row(arm: str, preset: Preset, out: Path, wall: float, steps: int, parameters: int) -> dict:
    summary = summary_frame(RecordStore(out / "records")).set_index("model").loc[MODEL]
    shape = SIZES[preset.backbone["size"]] | {k: v for k, v in preset.backbone.items() if k in ("width", "depth")}
    r = {
        "arm": arm, "width": shape["width"], "depth": shape["depth"], "patch": preset.backbone["patch"],
        "resolution": preset.resolution, "parameters": parameters, "steps": steps,
        "batch_size": preset.train["flow_matching"]["batch_size"], "train_wall_s": round(wall, 1),
        "guidance": preset.model_options.get(MODEL, {}).get("guidance", 1.0),
    }
    return r | {c: summary.get(c) for c in COLUMNS if c not in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-reference")
    parser.add_argument("--out", type=Path, default=Path("results/scaling"))
    parser.add_argument("--arms", default=None, help=f"comma-separated subset of {', '.join([*ARMS, *EXTRA])}")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps of every arm but 'steps'")
    args = parser.parse_args()
    base = load_preset(args.preset)
    names = args.arms.split(",") if args.arms else [*ARMS, *EXTRA]
    unknown = sorted(set(names) - set(ARMS) - set(EXTRA))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; valid: {', '.join([*ARMS, *EXTRA])}")
    shared = link_cached(Path("results") / base.name / "checkpoints", args.out / "checkpoints")
    rows = read_rows(args.out / "scaling.csv")
    for arm in names:
        if arm == "steps":
            new = run_steps(base, args.out, shared)
        elif arm == "guidance":
            new = run_guidance(base, args.out, shared)
        else:
            new = [run_arm(arm, base, args.out, shared, args.steps)]
        mine = [i for i, r in enumerate(rows) if r["arm"] == arm or r["arm"].startswith(f"{arm}@")]
        at = mine[0] if mine else len(rows)  # a re-run arm keeps its place in the table
        rows = [r for i, r in enumerate(rows) if i not in mine]
        rows[at:at] = new
        write(args.out, rows, base)
    print((args.out / "scaling.md").read_text())


def run_arm(arm: str, base: Preset, out: Path, shared: Path, steps: int) -> dict:
    shape = dict(ARMS[arm])
    resolution = shape.pop("resolution")
    preset = dataclasses.replace(
        base, backbone=base.backbone | shape, resolution=resolution,
        train=base.train | {"flow_matching": base.train["flow_matching"] | {"steps": steps, "snapshot_every": 0}},
    )
    suites = ("geneval",) if preset.resolution != 16 else ("geneval", "fid")
    preset = validation(preset, suites)
    folder = share_checkpoints(out / arm, shared)
    evaluate(preset, folder, progress=False)
    generator = train(preset, folder, MODEL, progress=False)
    return row(arm, preset, folder, train_wall(shared, generator), steps, generator.spec.parameters)


def train_wall(shared: Path, generator) -> float:
    """The teacher's recorded training wall time (seconds), from its cached folder's metadata."""
    from benchmarks.curves import own_folder
    from ntm.checkpoint import read_metadata

    folder = own_folder(shared, generator.spec.weights_hash)
    return read_metadata(folder).get("stats", {}).get("wall_s", float("nan")) if folder is not None else float("nan")


def run_steps(base: Preset, out: Path, shared: Path) -> list[dict]:
    """The preset's own teacher at each of its training snapshots (`benchmarks.curves`), scored like the arms."""
    from benchmarks.curves import own_folder, snapshot_steps
    from ntm.checkpoint import read_metadata, using_snapshot

    preset = validation(base, ("geneval", "fid"))
    folder = own_folder(shared, train(preset, share_checkpoints(out / "steps", shared), MODEL, progress=False).spec.weights_hash)
    steps = snapshot_steps(folder) if folder is not None else []
    if not steps:
        raise SystemExit(f"the {base.name} teacher has no training snapshots: set snapshot_every in [train.flow_matching]")
    recipe, rows = folder.name.rsplit("-", 1)[0], []
    for step in steps:
        where = share_checkpoints(out / f"steps-{step}", shared)
        with using_snapshot(recipe, step):
            evaluate(preset, where, progress=False)
            generator = train(preset, where, MODEL, progress=False)
        wall = read_metadata(folder).get("stats", {}).get("wall_s", float("nan")) * step / steps[-1]  # the final run's, pro rata
        rows.append(row(f"steps@{step}", preset, where, wall, step, generator.spec.parameters))
    return rows


def run_guidance(base: Preset, out: Path, shared: Path) -> list[dict]:
    """The preset's own teacher (final weights) sampled at each CFG weight of `GUIDANCE`."""
    rows = []
    for w in GUIDANCE:
        options = base.model_options | {MODEL: base.model_options.get(MODEL, {}) | {"guidance": w}}
        preset = validation(dataclasses.replace(base, model_options=options), ("geneval", "fid"))
        where = share_checkpoints(out / f"guidance-{w:g}", shared)
        evaluate(preset, where, progress=False)
        generator = train(preset, where, MODEL, progress=False)
        steps = preset.train["flow_matching"]["steps"]
        rows.append(row(f"guidance@{w:g}", preset, where, train_wall(shared, generator), steps, generator.spec.parameters))
    return rows


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text if text else None


def write(out: Path, rows: list[dict], base: Preset) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "scaling.csv").open("w") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    shown = ["arm", "width", "depth", "patch", "resolution", "parameters", "steps", "train_wall_s", "guidance", "geneval_overall",
             "geneval_single_object", "fid_evalclip"]

    def cell(r: dict, c: str) -> str:
        v = r.get(c)
        if v is None or v == "":
            return "n/a"
        if isinstance(v, float) and c != "train_wall_s":
            text = f"{v:.3f}"
            if r.get(f"{c}_lo") not in (None, "") and r.get(f"{c}_hi") not in (None, ""):
                text += f" [{r[c + '_lo']:.3f}, {r[c + '_hi']:.3f}]"
            return text
        return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)

    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(r, c) for c in shown) + " |" for r in rows]
    head = (f"Teacher scaling study (base preset {base.name}; validation draw: GenEval-style prompt_seed 1, 16 prompts x 4 "
            f"images per task, seed 1; FID vs held-out scenes from 100000). Command: python scripts/scaling_study.py "
            f"--preset {base.name}\n\n")
    (out / "scaling.md").write_text(head + "\n".join(lines) + "\n")
    plot(out, rows)


def plot(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "geneval_overall", "GenEval-style overall"), (axes[1], "fid_evalclip", "FID (eval-CLIP)")):
        curve = sorted((r for r in rows if str(r["arm"]).startswith("steps@") and r.get(metric) is not None), key=lambda r: r["train_wall_s"])
        if curve:
            ax.plot([r["train_wall_s"] for r in curve], [r[metric] for r in curve], "o-", label="base, by training steps")
            for r in curve:
                ax.annotate(f"{r['steps']}", (r["train_wall_s"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for r in rows:
            if str(r["arm"]).startswith(("steps@", "guidance@")) or r.get(metric) is None:
                continue
            ax.plot([r["train_wall_s"]], [r[metric]], "s", label=f"{r['arm']} ({r['steps']} steps)")
        ax.set_xlabel("training wall time on 2 CPU cores (s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
