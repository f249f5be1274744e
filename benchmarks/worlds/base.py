"""The World interface: a seeded, captioned image source with its own GenEval detector."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.geneval_rules import Detection

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Batch:
    """Images (uint8, N x C x H x W), one caption and one GenEval metadata row ({} if none) each."""

    images: np.ndarray
    captions: list[str]
    metadata: list[dict]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if not len(self.images) == len(self.captions) == len(self.metadata):
            raise ValueError(
                f"batch has {len(self.images)} images, {len(self.captions)} captions "
                f"and {len(self.metadata)} metadata rows"
            )


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")


class World(ABC):
    """Deterministic captioned scenes: the same (index, split) always gives the same scene."""

    name: str
    resolution: int
    channels: int
    categories: tuple[str, ...]

    @abstractmethod
    def batch(self, indices: Sequence[int], split: str = "train") -> Batch:
        """Scenes for these indices of a split; "train" and "test" are disjoint streams."""

    @abstractmethod
    def vocabulary(self) -> list[str]:
        """Every lower-case, whitespace-separated word a caption or prompt can contain."""

    @abstractmethod
    def prompts(self, per_category: int, seed: int = 0) -> list[dict]:
        """GenEval-style rows ({"tag", "include", ["exclude"], "prompt"}), `per_category` per category."""

    @abstractmethod
    def render_caption(self, caption: str, seed: int) -> np.ndarray:
        """A random uint8 (C, H, W) scene satisfying `caption`; ValueError if it is not in the grammar."""

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Detection]:
        """Read a uint8 (C, H, W) image back into objects."""
