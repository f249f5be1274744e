"""NTM ablation: the preset's NTM recipe with one of its changes undone per row, same seed and budget.

Each row trains one NTM from the preset's teacher (reusing the preset's own checkpoints where the recipe is
the same: the full recipe is the preset's `ntm`, "f_T = id" its `ntm-no-transporter`) and scores it with the
preset's geneval, fid and nll suites (same prompts, seeds and sets for every row, so rows compare pairwise),
plus the per-step NLL of the first two steps (`ntm-bench diagnose`, validation range) and the largest
gradient norm after warm-up over its median. Writes OUT/ablation.csv and OUT/ablation.md.

Usage: python scripts/ntm_ablation.py --preset tiny-long --out results/tiny-long-ablation [--steps N]
(--steps N trains every row for N steps instead of the preset's; the full recipe is then retrained too.)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.diagnose import diagnose  # noqa: E402
from benchmarks.presets import load_preset  # noqa: E402
from benchmarks.records import RecordStore  # noqa: E402
from benchmarks.runner import evaluate, link_cached, share_checkpoints, train  # noqa: E402
from benchmarks.tables import summary_frame  # noqa: E402

# name -> (model, transporter overrides, [train.ntm] overrides, model option overrides)
VARIANTS: dict[str, tuple[str, dict, dict, dict]] = {
    "recipe (every change)": ("ntm", {}, {}, {}),
    "(1 - t) gate on f_T": ("ntm", {"time_gate": True}, {}, {}),
    "sigma_0 = C at teacher init, no t_0 floor": ("ntm", {}, {}, {"data_variance": None, "t_min_low": 0.0}),
    "plain-MSE alignment, weight 1, 500 steps": ("ntm", {}, {}, {"align_normalised": False, "align_weight": 1.0, "align_steps": 500}),
    "lr 1e-3 constant": ("ntm", {}, {"lr": 1e-3, "schedule": "constant"}, {}),
    "transporter 2 x 1 layers, no mix": ("ntm", {"layers": 1, "mix": False}, {}, {}),
    "K = 4 only": ("ntm", {}, {}, {"step_counts": []}),
    "f_T = id (ntm-no-transporter)": ("ntm-no-transporter", {}, {}, {}),
}
COLUMNS = [
    "variant", "model", "geneval_overall", "geneval_overall_lo", "geneval_overall_hi", "fid_evalclip", "fid_evalclip_lo",
    "fid_evalclip_hi", "nll_bpd", "step1_nll_per_dim", "step2_nll_per_dim", "grad_norm_max_over_median",
]
SHOWN = ["variant", "model", "geneval_overall", "fid_evalclip", "nll_bpd", "step1_nll_per_dim", "step2_nll_per_dim",
         "grad_norm_max_over_median"]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-long")
    parser.add_argument("--out", type=Path, default=Path("results/tiny-long-ablation"))
    parser.add_argument("--reuse", type=Path, default=None, help="checkpoints folder to reuse (default: results/<preset>/checkpoints)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variant slugs")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every row (default: the preset's [train.ntm])")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    if args.steps is not None:
        preset = dataclasses.replace(preset, train=preset.train | {"ntm": preset.train["ntm"] | {"steps": args.steps}})
    shared = link_cached(args.reuse or Path("results") / preset.name / "checkpoints", args.out / "checkpoints")
    by_slug = {slug(name): name for name in VARIANTS}
    unknown = sorted(set(args.variants.split(",")) - set(by_slug)) if args.variants else []
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; valid: {', '.join(by_slug)}")
    names = [by_slug[v] for v in args.variants.split(",")] if args.variants else list(VARIANTS)  # in the order given
    rows = []
    for name in names:
        model, transporter, train_over, options = VARIANTS[name]
        backbone = preset.backbone | {"transporter": preset.backbone.get("transporter", {}) | transporter}
        variant = dataclasses.replace(
            preset, models=(model,), suites=tuple(s for s in preset.suites if s in ("geneval", "fid", "nll")),
            backbone=backbone, train=preset.train | {"ntm": preset.train["ntm"] | train_over},
            model_options=preset.model_options | {model: preset.model_options.get(model, {}) | options}, audit=None,
        )
        out = share_checkpoints(args.out / slug(name), shared)
        evaluate(variant, out, progress=False)
        steps_csv, _ = diagnose(variant, out, models=[model], samples=0)
        with steps_csv.open() as f:
            steps = list(csv.DictReader(f))
        summary = summary_frame(RecordStore(out / "records")).set_index("model").loc[model]
        stats = train(variant, out, model, progress=False).spec.training
        rows.append({
            "variant": name, "model": model,
            **{c: summary.get(c) for c in COLUMNS[2:9]},
            "step1_nll_per_dim": float(steps[0]["nll_per_dim"]), "step2_nll_per_dim": float(steps[1]["nll_per_dim"]),
            "grad_norm_max_over_median": stats.get("grad_norm_max", float("nan")) / stats.get("grad_norm_median", float("nan")),
        })
        write(args.out, rows, f"preset {preset.name}, {preset.train['ntm']['steps']} optimizer steps per row, seed {preset.train['ntm'].get('seed', 0)}")  # after every row: an interrupted ablation keeps what it finished
    print((args.out / "ablation.md").read_text())


def write(out: Path, rows: list[dict], budget: str) -> None:
    with (out / "ablation.csv").open("w") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(SHOWN) + " |", "|" + "---|" * len(SHOWN)]

    def cell(r: dict, c: str) -> str:
        if isinstance(r[c], str):
            return r[c]
        text = f"{r[c]:.3f}"
        if r.get(f"{c}_lo") is not None and r.get(f"{c}_hi") is not None:
            text += f" [{r[c + '_lo']:.3f}, {r[c + '_hi']:.3f}]"
        return text

    for r in rows:
        lines.append("| " + " | ".join(cell(r, c) for c in SHOWN) + " |")
    (out / "ablation.md").write_text(f"NTM ablation ({budget}); command: python scripts/ntm_ablation.py\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
