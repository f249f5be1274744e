"""Typicality: are a model's own samples as likely under it as held-out data?

If sampling draws from the density the likelihood reports, NLLs of the model's samples and of data
differ only by the model's misfit; guidance, truncation or a sampler that is not the density's
(a distilled denoiser) shift them. The two NLL distributions are compared by the two-sample
Kolmogorov-Smirnov statistic (scipy.stats.ks_2samp); samples much more likely than data are the
"atypically likely" outputs of Nalisnick et al. (2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp

from baselines.base import Generator
from benchmarks.audit.findings import finding
from benchmarks.audit.likelihood import score_images
from benchmarks.suites.base import item_seed, sample_all
from benchmarks.suites.nll import bits_per_dim
from benchmarks.worlds.base import World

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Typicality:
    """Conditional NLL in bits/dim of held-out data and of the model's samples for the same captions."""

    model: str
    data_bpd: np.ndarray
    sample_bpd: np.ndarray
    ks: float
    p_value: float

    @property
    def verdict(self) -> str:
        if self.p_value >= SIGNIFICANCE:
            return "typical"
        if np.median(self.sample_bpd) < np.median(self.data_bpd):
            return "atypical: samples more likely than data"
        return "atypical: samples less likely than data"

    def rows(self) -> list[dict]:
        shift = float(self.sample_bpd.mean() - self.data_bpd.mean())
        return [finding(
            self.model, "typicality", "KS statistic, samples vs data NLL", self.ks, None, "KS", self.verdict,
            f"p = {self.p_value:.3g}; mean NLL samples - data {shift:+.3f} bits/dim "
            f"({len(self.sample_bpd)} samples, {len(self.data_bpd)} images)",
        )]


def typicality(
    generator: Generator, world: World, samples: int, seed: int, batch_size: int = 32, progress: bool = False,
    data_bpd: np.ndarray | None = None,
) -> Typicality:
    """NLL of `samples` held-out images and of one model sample per caption of theirs; the KS test between them.

    `data_bpd`, the held-out images' NLL from a model with the same likelihood, is reused when given.
    """
    batch = world.batch(range(samples), split="test")
    seeds = [item_seed(seed, i) for i in range(samples)]
    sample_seeds = [item_seed(seed, samples + i) for i in range(samples)]
    name, dim = generator.spec.name, int(np.prod(batch.images.shape[1:]))
    drawn = sample_all(generator, batch.captions, sample_seeds, batch_size, f"{name} samples", progress)
    if data_bpd is None:
        data = score_images(generator, batch.images, batch.captions, seeds, batch_size, f"{name} data nll", progress)
        data_bpd = bits_per_dim(data.nll_nats, dim)
    own = score_images(generator, drawn, batch.captions, seeds, batch_size, f"{name} sample nll", progress)
    sample_bpd = bits_per_dim(own.nll_nats, dim)
    test = ks_2samp(sample_bpd, data_bpd)
    return Typicality(name, data_bpd, sample_bpd, float(test.statistic), float(test.pvalue))
