"""Conditional calibration: does a model's log p(x | c) prefer the caption an image was drawn from?

For each held-out image, the NLL under its own caption is compared with the NLL under captions
from the world's grammar that the image does not satisfy (by the world's own detector and
GenEval's rules; for a world without a detector, any other caption of its training scenes). Top-1 accuracy (the matched
caption has the lowest NLL of the 1 + M) is read against chance 1 / (1 + M); the AUROC ranks all
matched pairs against all mismatched pairs by log-likelihood. The same dequantisation noise and
estimator seed serve every caption of an image (common random numbers), so the comparison sees
only the caption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from baselines.base import Generator
from benchmarks.audit.findings import finding
from benchmarks.audit.likelihood import score_images
from benchmarks.audit.roc import auroc
from benchmarks.geneval_rules import score
from benchmarks.suites.base import item_seed
from benchmarks.worlds.base import World

PROMPT_POOL_PER_CATEGORY = 8
CAPTION_POOL = 256
"""Training scenes whose captions are the candidates in a world without a detector."""


def mismatched_captions(
    world: World, images: np.ndarray, captions: Sequence[str], count: int, seed: int
) -> list[list[str]]:
    """`count` captions per image, drawn without repetition, that the image does not satisfy."""
    rng = np.random.default_rng(seed)
    rows = world.prompts(PROMPT_POOL_PER_CATEGORY, seed=seed) if world.categories else []
    pool = sorted(set(world.batch(range(CAPTION_POOL), split="train").captions)) if not rows else []
    out = []
    for image, caption in zip(images, captions, strict=True):
        if rows:
            detections = world.detect(image)
            wrong = sorted({row["prompt"] for row in rows if not score(detections, row)[0]} - {caption})
        else:
            wrong = [p for p in pool if p != caption]
        if len(wrong) < count:
            raise ValueError(f"only {len(wrong)} mismatched captions for {caption!r}; asked for {count}")
        out.append([wrong[i] for i in rng.choice(len(wrong), size=count, replace=False)])
    return out


@dataclass(frozen=True)
class ConditionalCalibration:
    """NLL (nats) under the matched caption (N,) and under M mismatched ones (N, M)."""

    model: str
    matched: np.ndarray
    mismatched: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.matched < self.mismatched.min(1)).mean())

    @property
    def chance(self) -> float:
        return 1.0 / (1 + self.mismatched.shape[1])

    @property
    def auroc(self) -> float:
        return auroc(-self.matched, -self.mismatched)

    def rows(self) -> list[dict]:
        n, acc = len(self.matched), self.accuracy
        se = math.sqrt(acc * (1 - acc) / n)
        verdict = "prefers the matched caption" if acc - 2 * se > self.chance else "no better than chance"
        return [
            finding(self.model, "conditional", "matched caption ranked first", acc, se, "accuracy", verdict,
                    f"chance {self.chance:.3f}; {n} images x {self.mismatched.shape[1]} mismatched captions"),
            finding(self.model, "conditional", "AUROC matched vs mismatched", self.auroc, None, "AUROC",
                    "separates captions" if self.auroc >= 0.6 else "does not separate captions",
                    "pairs ranked by log p(x | c)"),
        ]


def conditional_calibration(
    generator: Generator, world: World, images: int, mismatched: int, seed: int, batch_size: int = 32,
    progress: bool = False,
) -> ConditionalCalibration:
    """The model's NLL of `images` held-out scenes under their own and `mismatched` wrong captions each."""
    batch = world.batch(range(images), split="test")
    wrong = mismatched_captions(world, batch.images, batch.captions, mismatched, seed)
    columns = [list(batch.captions)] + [[w[j] for w in wrong] for j in range(mismatched)]
    seeds = [item_seed(seed, i) for i in range(images)] * len(columns)
    stacked = np.concatenate([batch.images] * len(columns))
    captions = [c for column in columns for c in column]
    nll = score_images(generator, stacked, captions, seeds, batch_size, f"{generator.spec.name} captions", progress)
    table = nll.nll_nats.reshape(len(columns), images)
    return ConditionalCalibration(generator.spec.name, table[0], table[1:].T)
