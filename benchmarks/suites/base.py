"""The Suite interface: score any Generator on a world, per item, into rows and a summary."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from rich.progress import Progress

from baselines.base import Generator, to_model_space
from ntm import distributed


class NotApplicable(Exception):
    """The suite cannot score this (world, model) pair; the table shows n/a with this reason."""


@dataclass
class SuiteResult:
    rows: list[dict]
    metrics: dict[str, Any]
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)


class Suite(ABC):
    """A versioned benchmark; bump `version` whenever a prompt set, rule or threshold changes."""

    name: ClassVar[str]
    version: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        known = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for suite {self.name!r}; valid: {sorted(known)}")
        self.options = self.Options(**options)

    @abstractmethod
    def run(self, generator: Generator, world: Any, seed: int, progress: bool = True) -> SuiteResult: ...


def dequantise(images: np.ndarray, seeds: Sequence[int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> x in [-1, 1]: pixel + u, u ~ U[0, 1) drawn from each image's seed (the nll suite's input)."""
    shape = images.shape[1:]
    noise = [torch.rand(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return to_model_space(images, torch.stack(noise))


def item_seed(seed: int, index: int) -> int:
    """The seed of item `index` in a run with `seed`; independent of batching and ranks."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


_SHARDED: ContextVar[bool] = ContextVar("in_batches_sharded", default=False)
"""True while `fn` of a sharded `in_batches` runs: a nested call then runs all its batches on this rank."""


def in_batches(
    fn: Callable[[slice], Any], n: int, batch_size: int, description: str, progress: bool
) -> list[Any]:
    """Call `fn` on consecutive slices of range(n) under a progress bar; returns the outputs.

    With several processes (`ntm.distributed`; every rank calls this alike) rank r calls `fn` on
    the slices j with j % world == r, and the outputs (tensors moved to the CPU) are gathered back in
    slice order on every rank: the slices are those of one process, so the list is the same, value for
    value. `fn` must return its results (RuntimeError on None: side effects stay on one rank). An
    `in_batches` inside `fn` runs whole on its rank.
    """
    parts = [slice(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    world = 1 if _SHARDED.get() else distributed.world_size()
    mine = range(distributed.rank(), len(parts), world) if world > 1 else range(len(parts))
    outputs = {}
    token = _SHARDED.set(_SHARDED.get() or world > 1)
    try:
        with Progress(disable=not progress, transient=True) as bar, torch.no_grad():
            task = bar.add_task(description, total=sum(parts[j].stop - parts[j].start for j in mine))
            for j in mine:
                outputs[j] = fn(parts[j])
                if world > 1 and outputs[j] is None:
                    raise RuntimeError(
                        f"{description}: the batch function returned None, so its results are side effects that "
                        "cannot be gathered from several processes; return them from the function instead"
                    )
                bar.update(task, advance=parts[j].stop - parts[j].start)
    finally:
        _SHARDED.reset(token)
    if world > 1:
        for gathered in distributed.gather_objects(outputs):
            outputs |= gathered
    return [outputs[j] for j in range(len(parts))]


def sample_all(
    generator: Generator, prompts: Sequence[str], seeds: Sequence[int], batch_size: int, description: str, progress: bool
) -> np.ndarray:
    """uint8 samples (N, C, H, W) for all prompts, checked against the protocol."""
    parts = in_batches(
        lambda s: generator.sample(list(prompts[s]), list(seeds[s])), len(prompts), batch_size, description, progress
    )
    images = torch.cat(parts).cpu().numpy()
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(prompts):
        raise ValueError(
            f"{generator.spec.name}.sample returned {images.dtype} {images.shape}; "
            f"the protocol is uint8 (N={len(prompts)}, C, H, W)"
        )
    return images
