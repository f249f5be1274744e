"""Digits world: scikit-learn's bundled 8x8 handwritten digits, captioned "the digit 3"."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.datasets import load_digits

from benchmarks.geneval_rules import Detection
from benchmarks.worlds.base import Batch, World, check_split

TEST_FRACTION = 0.2
_SPLIT_SEED = 0
_CAPTION = re.compile(r"the digit (?P<digit>[0-9])")


class DigitsWorld(World):
    """1797 real 8x8 digits (values 0-16 rescaled to 0-255); a fixed seeded 80/20 train/test split."""

    name = "digits"
    channels = 1
    categories: tuple[str, ...] = ()
    RESOLUTIONS = (8,)

    def __init__(self, resolution: int = 8) -> None:
        if resolution not in self.RESOLUTIONS:
            raise ValueError(f"world 'digits' supports resolution 8 only; got {resolution}")
        self.resolution = resolution
        data = load_digits()
        images = np.rint(data.images * (255 / 16)).astype(np.uint8)[:, None]
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
        n_test = round(TEST_FRACTION * len(images))
        self._splits = {
            "train": (images[order[:-n_test]], data.target[order[:-n_test]]),
            "test": (images[order[-n_test:]], data.target[order[-n_test:]]),
        }

    def split_size(self, split: str) -> int:
        """Number of distinct images in a split; `batch` indices wrap around it."""
        check_split(split)
        return len(self._splits[split][0])

    def batch(self, indices: Sequence[int], split: str = "train") -> Batch:
        check_split(split)
        images, labels = self._splits[split]
        rows = np.asarray(indices, dtype=np.int64) % len(images)
        return Batch(images[rows], [f"the digit {labels[i]}" for i in rows], [{} for _ in rows])

    def vocabulary(self) -> list[str]:
        return sorted(["the", "digit", *map(str, range(10))])

    def prompts(self, per_category: int, seed: int = 0) -> list[dict]:
        """None: digits have no GenEval task kinds."""
        return []

    def render_caption(self, caption: str, seed: int) -> np.ndarray:
        """A random test image of the captioned digit."""
        m = _CAPTION.fullmatch(" ".join(caption.lower().split()))
        if m is None:
            raise ValueError(f"caption {caption!r} is not in the digits grammar ('the digit 0' ... 'the digit 9')")
        images, labels = self._splits["test"]
        candidates = np.flatnonzero(labels == int(m["digit"]))
        return images[np.random.default_rng(seed).choice(candidates)].copy()

    def detect(self, image: np.ndarray) -> list[Detection]:
        raise NotImplementedError(
            "the digits world has no object detector: GenEval-style scoring needs a world with "
            "categories (e.g. 'shapes')"
        )
