"""Gaussian world: images from a mixture of diagonal Gaussians in pixel space, with a closed-form density.

Image y in R^D (pixel units) is drawn from component k, N(mu_k, diag sigma_k^2), with probability
w_k, then quantised to v = clip(floor(y), 0, 255). The probability of the discrete image is exact:
per pixel the mass of its bin [v, v + 1) (the end bins take the tails) is a difference of normal
CDFs, the pixels of a component are independent, and the mixture is a logsumexp over components.
Under uniform dequantisation into model space, x = (v + u) / 128 - 1 with u ~ U[0, 1)^D (as
`baselines.base.to_model_space` does), the density is constant on each bin of volume 128^-D:
    log p_deq(x) = log P(v) + D log 128,
the quantity a model's continuous NLL of x in [-1, 1]^D estimates from above (Theis et al., 2016).
Captions name the component ("mode 2"); the empty caption is the whole mixture.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from scipy.special import log_ndtr, logsumexp, ndtr

from benchmarks.geneval_rules import Detection
from benchmarks.worlds.base import Batch, World, check_split

_STREAMS = {"train": 0, "test": 1, "caption": 2}
_CAPTION = re.compile(r"mode (?P<k>[0-9]+)")
_PARAMETER_SEED = 20240601
LOG_BIN_VOLUME = math.log(128.0)
"""-log of one bin's side in model space ([-1, 1] holds 256 bins): log p_deq = log P(v) + D * this."""


def log_interval_mass(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """log(Phi(upper) - Phi(lower)) for standardised bounds lower < upper (+-inf allowed), stable in both tails.

    In a tail the CDFs are close to 0 or 1 and their difference would cancel, so the difference is
    taken between log-CDFs of the tail side: log Phi(b) + log(1 - exp(d)), d = log Phi(a) - log Phi(b),
    with log(1 - e^d) computed as log(-expm1(d)) near d = 0 and log1p(-e^d) below (Maechler, 2012).
    """
    lower, upper = np.broadcast_arrays(np.asarray(lower, np.float64), np.asarray(upper, np.float64))
    right = lower >= 0  # both bounds in the upper tail: mirror them to the lower one
    tail = (upper <= 0) | right
    a = np.where(right, -upper, lower)[tail]
    b = np.where(right, -lower, upper)[tail]
    out = np.empty(lower.shape)
    with np.errstate(divide="ignore"):
        log_b = log_ndtr(b)
        d = log_ndtr(a) - log_b
        out[tail] = log_b + np.where(d > -math.log(2), np.log(-np.expm1(d)), np.log1p(-np.exp(d)))
        out[~tail] = np.log(ndtr(upper[~tail]) - ndtr(lower[~tail]))
    return out


def parse_caption(caption: str) -> int | None:
    """The component a caption names ("mode 2" -> 2), or None for the empty (unconditional) caption."""
    text = " ".join(caption.lower().split())
    if not text:
        return None
    m = _CAPTION.fullmatch(text)
    if m is None:
        raise ValueError(f"caption {caption!r} is not in the gaussian grammar ('mode 0', 'mode 1', ... or '')")
    return int(m["k"])


class GaussianWorld(World):
    """A mixture of `components` diagonal Gaussians over C x H x W pixel images, equal weights.

    The means are smooth colour waves in [128 - 64, 128 + 64] and the per-pixel scales lie in
    [10, 20] pixel levels, both fixed by a constant seed, so the clipped tails hold little mass
    (they are still counted exactly).
    """

    name = "gaussian"
    channels = 3
    categories: tuple[str, ...] = ()

    def __init__(self, resolution: int = 8, components: int = 4) -> None:
        if resolution < 1 or components < 1:
            raise ValueError(f"world 'gaussian' needs resolution and components >= 1, got {resolution}, {components}")
        self.resolution, self.components = resolution, components
        rng = np.random.default_rng(_PARAMETER_SEED)
        grid = np.arange(resolution) / resolution
        yy, xx = np.meshgrid(grid, grid, indexing="ij")
        means, scales = [], []
        for _ in range(components):
            freq = rng.integers(1, 3, size=2)
            phase = rng.uniform(0, 2 * np.pi, size=(self.channels, 1, 1))
            wave = np.cos(2 * np.pi * (freq[0] * yy + freq[1] * xx)[None] + phase)
            means.append(128.0 + 64.0 * wave)
            scales.append(rng.uniform(10.0, 20.0, size=(self.channels, resolution, resolution)))
        self.means = np.stack(means)
        """(K, C, H, W) component means in pixel units."""
        self.scales = np.stack(scales)
        """(K, C, H, W) component standard deviations in pixel units."""
        self.log_weights = np.full(components, -math.log(components))

    @property
    def dim(self) -> int:
        return self.channels * self.resolution**2

    # --- sampling -------------------------------------------------------------------------------

    def _draw(self, component: int | None, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        k = int(rng.choice(self.components, p=np.exp(self.log_weights))) if component is None else component
        y = self.means[k] + self.scales[k] * rng.standard_normal(self.means.shape[1:])
        return np.clip(np.floor(y), 0, 255).astype(np.uint8), k

    def batch(self, indices: Sequence[int], split: str = "train") -> Batch:
        """One image per index, component drawn by its weight; seeded by (split, index), captioned "mode k"."""
        check_split(split)
        images, captions, metadata = [], [], []
        for index in indices:
            if index < 0:
                raise ValueError(f"indices must be >= 0, got {index}")
            image, k = self._draw(None, np.random.default_rng((_STREAMS[split], int(index))))
            images.append(image)
            captions.append(f"mode {k}")
            metadata.append({"component": k})
        shape = (0, self.channels, self.resolution, self.resolution)
        return Batch(np.stack(images) if images else np.zeros(shape, np.uint8), captions, metadata)

    def vocabulary(self) -> list[str]:
        return sorted(["mode", *map(str, range(self.components))])

    def prompts(self, per_category: int, seed: int = 0) -> list[dict]:
        """None: the gaussian world has no GenEval task kinds."""
        return []

    def render_caption(self, caption: str, seed: int) -> np.ndarray:
        """A draw from the captioned component (the whole mixture for the empty caption)."""
        return self._draw(self._component(caption), np.random.default_rng((_STREAMS["caption"], seed)))[0]

    def detect(self, image: np.ndarray) -> list[Detection]:
        raise NotImplementedError("the gaussian world has no object detector: it is for likelihood audits")

    def _component(self, caption: str) -> int | None:
        k = parse_caption(caption)
        if k is not None and k >= self.components:
            raise ValueError(f"caption {caption!r} names no component; this world has modes 0..{self.components - 1}")
        return k

    # --- the exact density ------------------------------------------------------------------------

    def component_log_prob(self, images: np.ndarray) -> np.ndarray:
        """log P(v | component k) in nats, (N, K): the sum over pixels of the log mass of each pixel's bin."""
        v = np.asarray(images)
        if v.dtype != np.uint8 or v.shape[1:] != self.means.shape[1:]:
            expected = f"(N, {self.channels}, {self.resolution}, {self.resolution})"
            raise ValueError(f"expected uint8 images {expected}, got {v.dtype} {v.shape}")
        v = v.astype(np.float64)[:, None]
        lower = np.where(v == 0, -np.inf, v)
        upper = np.where(v == 255, np.inf, v + 1)
        mass = log_interval_mass((lower - self.means) / self.scales, (upper - self.means) / self.scales)
        return mass.reshape(*mass.shape[:2], -1).sum(-1)

    def log_prob(self, images: np.ndarray, captions: Sequence[str] | None = None) -> np.ndarray:
        """log P(v | caption) in nats, (N,): the named component, or the mixture for "" (or no captions)."""
        per_component = self.component_log_prob(images)
        mixture = logsumexp(per_component + self.log_weights, axis=1)
        if captions is None:
            return mixture
        if len(captions) != len(per_component):
            raise ValueError(f"{len(captions)} captions for {len(per_component)} images")
        ks = [self._component(c) for c in captions]
        return np.array([mixture[i] if k is None else per_component[i, k] for i, k in enumerate(ks)])

    def nll_nats(self, images: np.ndarray, captions: Sequence[str] | None = None) -> np.ndarray:
        """-log p_deq(x | caption) in nats of x in [-1, 1]^D, for any x dequantised from these images (N,)."""
        return -(self.log_prob(images, captions) + self.dim * LOG_BIN_VOLUME)

    def entropy(self, samples: int, split: str = "test", conditional: bool = False) -> tuple[float, float]:
        """Differential entropy of p_deq (nats of x), E[-log p_deq(x)], from `samples` draws: (mean, standard error).

        `conditional` averages -log p_deq(x | its component), i.e. H(x | c); otherwise H(x).
        """
        if samples < 2:
            raise ValueError(f"the standard error needs samples >= 2, got {samples}")
        batch = self.batch(range(samples), split)
        nll = self.nll_nats(batch.images, batch.captions if conditional else None)
        return float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(samples))
