"""Checks of a world's detector on its own ground truth, and a captioned grid of its scenes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.geneval_rules import score
from benchmarks.plots import image_grid
from benchmarks.worlds.base import World


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian pixel noise of std `sigma` (0-255 units), rounded and clipped back to uint8."""
    if sigma == 0:
        return image
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def check_world(world: World, n: int, noise_levels: Sequence[float] = (0, 8, 16, 32, 48, 64), seed: int = 0) -> dict:
    """GenEval accuracy of the world's detector on `n` ground-truth scenes per category, per noise level.

    Scenes are rendered from the world's own prompts, so each category's scenes are of that
    category only; accuracy at noise 0 is the ceiling a perfect generator would reach.
    """
    if not world.categories:
        raise ValueError(f"world {world.name!r} has no GenEval categories to check")
    rows = world.prompts(n, seed=seed)
    render_seeds = np.random.default_rng(seed).integers(0, 2**63, size=len(rows))
    clean = [world.render_caption(row["prompt"], int(s)) for row, s in zip(rows, render_seeds)]
    noise = {}
    for k, sigma in enumerate(sorted({0, *noise_levels})):
        rng = np.random.default_rng((seed, k))
        correct = [score(world.detect(add_noise(img, sigma, rng)), row)[0] for img, row in zip(clean, rows)]
        per_category = {
            tag: float(np.mean([c for c, row in zip(correct, rows) if row["tag"] == tag])) for tag in world.categories
        }
        noise[sigma] = {"per_category": per_category, "overall": float(np.mean(list(per_category.values())))}
    return {
        "per_category": noise[0]["per_category"],
        "overall": noise[0]["overall"],
        "noise": {str(sigma): noise[sigma] for sigma in noise_levels},
        "resolution": world.resolution,
        "n": n,
    }


def show_grid(world: World, n: int, out: Path, seed: int = 0, columns: int = 8) -> Path:
    """Save a PNG of `n` training scenes titled with their captions; returns `out`."""
    indices = np.random.default_rng(seed).integers(0, 2**31, size=n).tolist()
    batch = world.batch(indices, split="train")
    return image_grid(batch.images, batch.captions, out, columns=columns, title=f"{world.name} @ {world.resolution}px")
