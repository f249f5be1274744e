"""A model's NLL of uint8 images, dequantised exactly as the NLL suite does, so the numbers match it.

Image i gets uniform dequantisation noise and Monte-Carlo seed from its own seed (the NLL suite's
convention, `benchmarks.suites.nll`), so a score never depends on the batch it was computed in and
the same image scored twice (under another caption, say) sees the same noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from baselines.base import Generator, LikelihoodResult
from benchmarks.suites.base import dequantise, in_batches


@dataclass(frozen=True)
class Scores:
    """Per-image NLL in nats of x in [-1, 1]^D, and how the model obtained it."""

    nll_nats: np.ndarray
    estimator: str
    target: str
    settings: Mapping[str, Any]


def score_images(
    generator: Generator, images: np.ndarray, captions: Sequence[str], seeds: Sequence[int], batch_size: int,
    description: str, progress: bool = False,
) -> Scores:
    """`generator.log_likelihood` of the dequantised images under their captions, in batches."""
    if not len(images) == len(captions) == len(seeds):
        raise ValueError(f"{len(images)} images, {len(captions)} captions and {len(seeds)} seeds")
    x = dequantise(images, seeds)

    def evaluate(part: slice) -> LikelihoodResult:
        return generator.log_likelihood(x[part], list(captions[part]), list(seeds[part]))

    results = in_batches(evaluate, len(images), batch_size, description, progress)
    nll = torch.cat([r.nll_nats for r in results]).double().cpu().numpy()
    return Scores(nll, results[0].estimator, results[0].target, dict(results[0].settings))
