"""Diagnostics of the NTM rows: where along the trajectory each model's likelihood goes, and what its samples lack.

`steps.csv`: one row per (model, step) for every NTM-family model (the NTMs and their f_T = id ablation),
averaged over held-out forward trajectories: the step's NLL -log p(x_s | x_t, c) / D, its log|det df_T| / D
(nats per dimension) and the mean predicted sigma_P. A step whose NLL equals the ablation's is one the
transporter does not shape.
`samples.csv`: one row per model: the fraction of samples in which the world's detector finds no object, and
the coloured specks per image it drops as too small (`ShapesWorld.fragments`).

Both read a validation range of the world's held-out stream (scenes VALIDATION_OFFSET onwards, captions of
those scenes), disjoint from the evaluation suites' sets; they choose nothing, they describe.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from baselines.training import per_sample_noise
from benchmarks.presets import Preset
from benchmarks.runner import build_context, train
from benchmarks.suites.base import dequantise, item_seed, sample_all
from ntm.checkpoint import atomic_write_bytes
from ntm.model import NTM

VALIDATION_OFFSET = 100_000
STEP_COLUMNS = ("model", "step", "t", "s", "nll_per_dim", "logdet_per_dim", "sigma_mean")
SAMPLE_COLUMNS = ("model", "images", "empty_fraction", "fragments_per_image")


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def step_rows(name: str, model: NTM, images: np.ndarray, captions: list[str], seeds: list[int]) -> list[dict]:
    """Per-step means over one forward trajectory per image (dequantised, from each image's seed)."""
    device = next(model.parameters()).device
    x = dequantise(images, seeds).to(device=device, dtype=next(model.parameters()).dtype)
    times = model.times(model.config.t_min_eval)
    noises = per_sample_noise([s + 1 for s in seeds], (model.config.steps, *x.shape[1:]), device).transpose(0, 1)
    traj, _ = model.chain_from(x, times, noises)
    terms = model.step_diagnostics(traj, times, model.encode_text(captions))
    return [
        {
            "model": name, "step": i + 1, "t": round(float(times[i]), 6), "s": round(float(times[i + 1]), 6),
            **{key: float(value[:, i].mean()) for key, value in terms.items()},
        }
        for i in range(model.config.steps)
    ]


def sample_row(name: str, generator, world, captions: list[str], seeds: list[int], batch_size: int) -> dict:
    images = sample_all(generator, captions, seeds, batch_size, f"{name} diagnose", progress=False)
    empty = [not world.detect(image) for image in images]
    fragments = [world.fragments(image) for image in images] if hasattr(world, "fragments") else None
    return {
        "model": name, "images": len(images), "empty_fraction": float(np.mean(empty)),
        "fragments_per_image": None if fragments is None else float(np.mean(fragments)),
    }


def diagnose(
    preset: Preset, out_dir: Path, device: str | None = None, models: Sequence[str] | None = None,
    trajectories: int = 128, samples: int = 256, batch_size: int = 64, seed: int = 0,
) -> tuple[Path, Path]:
    """Write OUT/diagnostics/steps.csv and samples.csv for `models` (default: the preset's); returns both paths.

    Models are built as `reproduce` builds them (cached weights are reused; missing ones are trained).
    """
    names = list(models or preset.models)
    built = {name: train(preset, out_dir, name, device, progress=False) for name in names}
    world = build_context(preset, out_dir, device, progress=False).world
    held_out = world.batch(range(VALIDATION_OFFSET, VALIDATION_OFFSET + max(trajectories, samples)), split="test")
    seeds = [item_seed(seed, i) for i in range(max(trajectories, samples))]
    steps, sampled = [], []
    for name, generator in built.items():
        model = getattr(generator, "model", None)
        if isinstance(model, NTM) and generator.capabilities.likelihood:
            steps += step_rows(name, model, held_out.images[:trajectories], held_out.captions[:trajectories], seeds[:trajectories])
        if samples:
            sampled.append(sample_row(name, generator, world, held_out.captions[:samples], seeds[:samples], batch_size))
    folder = Path(out_dir) / "diagnostics"
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "steps.csv", STEP_COLUMNS, steps)
    _write_csv(folder / "samples.csv", SAMPLE_COLUMNS, sampled)
    return folder / "steps.csv", folder / "samples.csv"
