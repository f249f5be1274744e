"""Reference rows: the world's own renders of each prompt, the ceiling every suite is read against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from baselines.base import BuildContext, Generator, GeneratorSpec
from baselines.registry import register


class GroundTruth(Generator):
    """Samples are ground-truth renders of the prompt: what a perfect generator would draw."""

    def __init__(self, world, name: str) -> None:
        self.world = world
        self.spec = GeneratorSpec(
            name=name, family="reference", steps=0, nfe=0, parameters=0,
            weights_hash=f"renderer:{world.name}@{world.resolution}",
        )

    @classmethod
    def from_context(cls, ctx: BuildContext, name: str) -> GroundTruth:
        return cls(ctx.world, name)

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        return torch.from_numpy(np.stack([self.world.render_caption(p, int(s)) for p, s in zip(prompts, seeds, strict=True)]))


register("ground-truth", GroundTruth, "the world's own render of each prompt (suite ceiling, family 'reference')")
