"""The Suite interface: score any Generator on a world, per item, into rows and a summary."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from rich.progress import Progress

from baselines.base import Generator


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


def item_seed(seed: int, index: int) -> int:
    """The seed of item `index` in a run with `seed`; independent of batching and ranks."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def in_batches(
    fn: Callable[[slice], Any], n: int, batch_size: int, description: str, progress: bool
) -> list[Any]:
    """Call `fn` on consecutive slices of range(n) under a progress bar; returns the outputs."""
    outputs = []
    with Progress(disable=not progress, transient=True) as bar, torch.no_grad():
        task = bar.add_task(description, total=n)
        for start in range(0, n, batch_size):
            part = slice(start, min(n, start + batch_size))
            outputs.append(fn(part))
            bar.update(task, advance=part.stop - part.start)
    return outputs


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
