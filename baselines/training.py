"""Training glue shared by every trained model: seeded world batches in, a cached checkpoint out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from baselines.base import BuildContext, DataSource, to_model_space
from ntm import distributed
from ntm.train import TrainConfig


def training_batch(
    world: DataSource, step: int, batch_size: int, seed: int, cfg_dropout: float, device: torch.device
) -> tuple[Tensor, list[str]]:
    """Batch number `step` of a training run: dequantised images in [-1, 1] and captions.

    Everything is drawn from (seed, step), so a run is reproducible and a resumed run sees the
    same batches. A fraction `cfg_dropout` of captions is replaced by the empty (null) prompt,
    which trains the unconditional model classifier-free guidance needs.

    With several processes (`ntm.distributed`) every rank makes the same full-batch draw and
    keeps its share `[rank::world]` of it (`batch_size` must split evenly): only that share's scenes
    are rendered, as a scene depends on its index alone. In one process the share is the whole batch.
    """
    rng = np.random.default_rng([seed, step])
    indices = distributed.shard(rng.integers(0, 2**31 - 1, size=batch_size))
    batch = world.batch(indices.tolist(), split="train")
    noise = torch.from_numpy(distributed.shard(rng.random((batch_size, *batch.images.shape[1:]))))
    drops = distributed.shard(rng.random(batch_size) < cfg_dropout)
    captions = [("" if drop else c) for c, drop in zip(batch.captions, drops, strict=True)]
    return to_model_space(batch.images, noise).to(device), captions


def per_sample_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """One standard-normal draw of `shape` per seed: sample i never depends on the batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


class CountingTeacher(nn.Module):
    """Wraps a frozen teacher and counts its forward passes per sample (a CFG pair counts 2).

    Every method that learns from a teacher calls it through this wrapper, so the recorded
    `teacher_nfe` is what training actually spent, not a formula. With several processes each
    rank sees its share of the batch and counts the passes of all ranks (`count`), so every rank
    holds, and rank 0 records, the total.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.calls = 0

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def count(self, samples: int) -> None:
        """Count one pass over `samples` samples on every rank (the ranks run their equal shares alike)."""
        self.calls += samples * distributed.world_size()

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        self.count(x.shape[0])
        return self.teacher(x, t, tokens)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.teacher.encode_text(prompts)

    def pass_count(self) -> PassCount:
        """The count alone, as a `fit` state entry: a teacher used beside the model (not inside it, where
        its extra state travels with the model's) keeps its count across a resumed training run."""
        return PassCount(self)


class PassCount:
    """state_dict / load_state_dict of a CountingTeacher's count, for `ntm.train.fit(state=...)`."""

    def __init__(self, teacher: CountingTeacher) -> None:
        self.teacher = teacher

    def state_dict(self) -> dict:
        return self.teacher.get_extra_state()

    def load_state_dict(self, state: dict) -> None:
        self.teacher.set_extra_state(state)


def budget(ctx: BuildContext, train: TrainConfig, teacher_nfe: int, **extra: Any) -> dict[str, Any]:
    """The training budget a spec records and the tables show: same keys for every trained model."""
    return {
        "backbone": ctx.backbone.get("size", "?"), "optimizer_steps": train.steps,
        "batch_size": train.batch_size, "teacher_nfe": int(teacher_nfe),
    } | extra
