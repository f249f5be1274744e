"""The oracle: a Generator whose likelihood is the known-density world's exact one, the audit's control.

Its NLL is -log p_deq(x | caption) (`GaussianWorld.nll_nats`), so its truth gap is 0 by
construction; an audit that flags it, or misses a shifted copy of it, is itself broken.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from baselines.base import Capabilities, Generator, GeneratorSpec, LikelihoodResult
from benchmarks.worlds.gaussian import GaussianWorld


def pixel_bins(x: Tensor) -> np.ndarray:
    """The uint8 bin of each value of x in [-1, 1]: floor((x + 1) * 128), the inverse of uniform dequantisation."""
    return ((x.double() + 1) * 128).floor().clamp(0, 255).to(torch.uint8).cpu().numpy()


class OracleGenerator(Generator):
    """Samples from the gaussian world and reports its exact dequantised NLL (estimator "exact", target "data")."""

    capabilities = Capabilities(likelihood=True)

    def __init__(self, world: GaussianWorld, name: str = "oracle") -> None:
        self.world = world
        self.spec = GeneratorSpec(
            name=name, family="reference", steps=0, nfe=0, parameters=0,
            weights_hash=f"density:{world.name}@{world.resolution}",
        )

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        images = [self.world.render_caption(p, int(s)) for p, s in zip(prompts, seeds, strict=True)]
        return torch.from_numpy(np.stack(images))

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        nll = self.world.nll_nats(pixel_bins(x), list(prompts))
        return LikelihoodResult(torch.from_numpy(nll), "exact", "data", {"of": "p_deq, the dequantised world density"})
