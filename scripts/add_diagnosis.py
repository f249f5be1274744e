"""ADD diagnosis: why the adversarial (ADD) student of a preset drifts to blank images.

Loads the preset's teacher (`fm-teacher`) and ADD student (`add`) from OUT/checkpoints through the normal
build path, refusing to train either (a missing checkpoint is an error naming the command that trains it),
and writes two tables to OUT/diagnostics/add.md (also printed):

1. ADD's score-distillation loss (`baselines.adversarial.distillation_loss`, called as `add_loss` calls it,
   with the student's saved teacher guidance) at fixed re-noising times t', averaged over one seeded batch of
   N training-split images, for three inputs x0_fake: the real images, a blank image of the world's
   background colour (the batch's most common pixel), and the teacher's own unguided x0 prediction from pure
   noise at t = 1 (what the student predicts there before training). The three inputs share each t' column's
   noise. A blank image scoring lower than the real images means the objective itself prefers it.
2. The x0 predictions x0_hat = x_t - t v(x_t, t, c) of the ADD student (and, for reference, of the teacher it
   started from) at each of the student's training times: from pure noise at t = 1, from the batch's images
   noised to x_t = (1 - t) x0 + t eps otherwise. Mean and std are in the [-1, 1] model space; "= background" is
   the fraction of pixels equal to the background colour after quantisation to uint8, "within 16" the fraction
   with every channel within 16 levels of it (a prediction of 0.99 quantises to 254, not 255).

Everything is drawn from --seed, so a rerun prints the same numbers. About half a minute on one CPU thread.

Usage: python scripts/add_diagnosis.py [--preset tiny-long] [--out results/tiny-long] [--images 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.adversarial import AdversarialOptions, distillation_loss  # noqa: E402
from baselines.base import BuildContext, stable_hash, to_model_space, to_pixels  # noqa: E402
from baselines.registry import build  # noqa: E402
from baselines.students import x0_prediction  # noqa: E402
from baselines.training import CountingTeacher  # noqa: E402
from benchmarks.presets import Preset, load_preset  # noqa: E402
from benchmarks.runner import build_context  # noqa: E402
from ntm.checkpoint import is_saved  # noqa: E402
from ntm.flow_matching import sample_training_times  # noqa: E402
from ntm.schedule import time_grid  # noqa: E402
from ntm.teacher import FlowMatchingTeacher  # noqa: E402
from ntm.train import weights_recipe  # noqa: E402

RENOISE_TIMES = (0.05, 0.25, 0.5, 0.75, 0.95)
NEAR = 16
"""Tolerance in uint8 levels of the "near background" fraction (the shapes world's colours are 255 apart)."""


class MissingCheckpoint(RuntimeError):
    """A model's weights are not in the checkpoint cache (this script never trains)."""


@dataclasses.dataclass
class CachedOnlyContext(BuildContext):
    """A BuildContext that loads cached checkpoints and raises MissingCheckpoint instead of training."""

    def checkpoint(self, recipe: str, config: Mapping[str, Any], train_fn: Callable[[Path], None]) -> Path:
        # the folder name BuildContext.checkpoint gives the same recipe and config
        directory = self.checkpoint_root / f"{recipe}-{stable_hash(weights_recipe(config))[:12]}"
        if not is_saved(directory):
            raise MissingCheckpoint(f"no trained {recipe!r} checkpoint at {directory}")
        return super().checkpoint(recipe, config, train_fn)


def load_model(preset: Preset, out: Path, name: str, device: str) -> Any:
    """Generator `name` as `preset` configures it (runner.train's path), from OUT/checkpoints only."""
    ctx = CachedOnlyContext(**vars(build_context(preset, out, device, progress=False)))
    try:
        return build(name, ctx, **preset.options_for(name))
    except MissingCheckpoint as err:
        raise SystemExit(
            f"{err}; this script does not train. Train it first with:\n"
            f"  ntm-bench train {name} --preset {preset.name} --out {out}"
        ) from None


def background_colour(images: Tensor) -> Tensor:
    """The most common pixel (a (C,) uint8 vector) of uint8 images (B, C, H, W)."""
    pixels = images.permute(0, 2, 3, 1).reshape(-1, images.shape[1])
    values, counts = torch.unique(pixels, dim=0, return_counts=True)
    return values[counts.argmax()]


def background_fraction(x: Tensor, background: Tensor, tolerance: int = 0) -> float:
    """The fraction of pixels of model-space images x (B, C, H, W) whose every channel, quantised to uint8,
    lies within `tolerance` levels of `background` (0: equal to it)."""
    offset = to_pixels(x).int() - background.int().view(1, -1, 1, 1)
    return (offset.abs() <= tolerance).all(1).float().mean().item()


def prediction_stats(x: Tensor, background: Tensor) -> dict:
    """Mean and std of model-space images x, and their fractions of background pixels (exact and near)."""
    return {"mean": x.mean().item(), "std": x.std().item(), "= background": background_fraction(x, background),
            f"within {NEAR} of background": background_fraction(x, background, NEAR)}


def training_images(world: Any, count: int, seed: int) -> tuple[Tensor, list[str]]:
    """`count` training-split scenes picked by `seed`: uint8 images (B, C, H, W) and their captions."""
    indices = np.random.default_rng(seed).integers(0, 2**31 - 1, size=count)
    batch = world.batch(indices.tolist(), split="train")
    return torch.as_tensor(batch.images), list(batch.captions)


@torch.no_grad()
def distillation_rows(
    teacher: FlowMatchingTeacher, options: AdversarialOptions, images: Tensor, captions: Sequence[str],
    background: Tensor, times: Sequence[float] = RENOISE_TIMES, seed: int = 0,
) -> list[dict]:
    """Batch-mean distillation loss per re-noising time t' for the real images, a blank background image and
    the teacher's unguided x0 prediction at t = 1; one noise draw per t', shared by the three inputs. A last
    column draws t' ~ U(0, 1) per image, as `add_loss` does."""
    gen = torch.Generator().manual_seed(seed)
    x0 = to_model_space(images)
    b = x0.shape[0]
    tokens, null = teacher.encode_text(list(captions)), teacher.encode_text([""] * b)
    blank = to_model_space(background.view(1, -1, 1, 1).expand_as(images))
    at_one = x0_prediction(teacher, torch.randn(x0.shape, generator=gen), torch.ones(b), tokens)
    inputs = {"real images": x0, "blank background": blank, "teacher x0 at t = 1": at_one}
    counted = CountingTeacher(teacher)
    losses: dict[str, dict[float, float]] = {name: {} for name in inputs}
    columns = {f"t' = {t:g}": torch.full((b,), float(t)) for t in times}
    columns["t' ~ U(0, 1)"] = sample_training_times(b, gen, kind="uniform")
    for column, t in columns.items():
        noise = torch.randn(x0.shape, generator=gen)
        for name, x in inputs.items():
            loss = distillation_loss(counted, x, tokens, null, options.teacher_guidance, t, noise)
            losses[name][column] = loss.mean().item()
    return [{"input": name} | row for name, row in losses.items()]


@torch.no_grad()
def prediction_rows(
    models: Mapping[str, FlowMatchingTeacher], options: AdversarialOptions, images: Tensor, captions: Sequence[str],
    background: Tensor, seed: int = 0,
) -> list[dict]:
    """x0_hat statistics of each model at each student time of `options` (pure noise at t = 1, noised images
    below), plus a row for the real images; every model sees the same x_t."""
    x0 = to_model_space(images)
    b = x0.shape[0]
    rows = [{"model": "real images", "t": "-"} | prediction_stats(x0, background)]
    grid = time_grid(options.student_steps, options.shift)[:-1].tolist()
    gen = torch.Generator().manual_seed(seed)
    noises = [torch.randn(x0.shape, generator=gen) for _ in grid]
    for name, model in models.items():
        tokens = model.encode_text(list(captions))
        for t, eps in zip(grid, noises, strict=True):
            x_t = eps if t == 1.0 else (1 - t) * x0 + t * eps
            pred = x0_prediction(model, x_t, torch.full((b,), t), tokens)
            rows.append({"model": name, "t": f"{t:g}"} | prediction_stats(pred, background))
    return rows


def markdown(rows: Sequence[dict], digits: int = 4) -> str:
    """A markdown table of `rows` (dicts with the same keys), floats to `digits` decimals."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-long")
    parser.add_argument("--out", type=Path, default=Path("results/tiny-long"), help="results folder (OUT)")
    parser.add_argument("--images", type=int, default=64, help="training images in the batch (N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    teacher = load_model(preset, args.out, "fm-teacher", args.device).model.eval()
    add = load_model(preset, args.out, "add", args.device)
    student = add.model.eval()
    settings = add.spec.settings
    options = AdversarialOptions(
        **{f.name: settings[f.name] for f in dataclasses.fields(AdversarialOptions) if f.name != "feature_blocks"},
        feature_blocks=tuple(settings["feature_blocks"]),
    )
    world = build_context(preset, args.out, args.device, progress=False).world
    images, captions = training_images(world, args.images, args.seed)
    background = background_colour(images)
    device = next(teacher.parameters()).device
    images, background = images.to(device), background.to(device)

    distill = distillation_rows(teacher, options, images, captions, background, seed=args.seed)
    predictions = prediction_rows({"add": student, "fm-teacher": teacher}, options, images, captions, background,
                                  seed=args.seed)
    colour = tuple(background.tolist())
    text = (
        f"# ADD diagnosis ({preset.name}, {args.out})\n\n"
        f"Command: python scripts/add_diagnosis.py --preset {args.preset} --out {args.out} "
        f"--images {args.images} --seed {args.seed}\n\n"
        f"Batch: {args.images} training-split images (seed {args.seed}); background colour {colour}; "
        f"ADD options: teacher guidance {options.teacher_guidance:g}, student times "
        f"{[round(t, 4) for t in time_grid(options.student_steps, options.shift)[:-1].tolist()]}.\n\n"
        "## 1. Distillation loss (batch mean of (1 - t') |x0_fake - x0_teacher|^2) per re-noising time t'\n\n"
        f"{markdown(distill, 5)}\n\n"
        "## 2. x0 predictions at the student times (t = 1 from pure noise, else noised real images)\n\n"
        "mean, std in [-1, 1]; = background: fraction of pixels equal to the background colour once quantised to "
        f"uint8; within {NEAR}: every channel within {NEAR} levels of it.\n\n"
        f"{markdown(predictions, 3)}\n"
    )
    path = args.out / "diagnostics" / "add.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
