"""Truth gap: a model's held-out NLL against the exact NLL of the same images under the world's density.

For data from p and any model density q, E_p[-log q(x)] - E_p[-log p(x)] = KL(p || q) >= 0, and an
upper bound on -log q (ELBO, IWAE; Burda et al., 2016) only adds to it. So the mean per-image gap
    gap = mean_i (NLL_model(x_i) - NLL_true(x_i))
must be >= 0 up to sampling error. A gap below -3 standard errors means the number is not what it
claims to be: a dropped log-determinant or dequantisation term, or an estimate that is no bound
(a coarse ODE solve). The audit reads the data NLL (`Generator.log_likelihood`); NTM's trajectory
NLL is a density over (K + 1) D numbers and has no truth to compare with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from baselines.base import Generator
from benchmarks.audit.findings import BELOW_TRUTH, finding
from benchmarks.audit.likelihood import score_images
from benchmarks.suites.base import item_seed
from benchmarks.suites.nll import bits_per_dim
from benchmarks.worlds.gaussian import GaussianWorld

KINDS = {"exact": "exact", "elbo": "upper bound", "iwae": "upper bound", "ode": "estimate"}
"""What each estimator's NLL is relative to the model's true NLL."""


@dataclass(frozen=True)
class TruthGap:
    """The gap of one model under one conditioning ("conditional": log p(x | mode k); "unconditional": log p(x))."""

    model: str
    condition: str
    estimator: str
    images: int
    dim: int
    model_nll_nats: float
    true_nll_nats: float
    gap_nats: float
    stderr_nats: float
    below_truth: bool

    @property
    def kind(self) -> str:
        return KINDS[self.estimator]

    @property
    def verdict(self) -> str:
        if self.below_truth:
            return f"{BELOW_TRUTH}: bug" if self.kind != "estimate" else f"{BELOW_TRUTH}: biased estimate"
        return self.kind

    def rows(self) -> list[dict]:
        per_dim = self.dim * math.log(2)
        model, true = bits_per_dim(self.model_nll_nats, self.dim), bits_per_dim(self.true_nll_nats, self.dim)
        detail = (
            f"{self.estimator} NLL {model:.4f} vs exact {true:.4f} bits/dim ({self.condition}, {self.images} "
            f"held-out images); gap {self.gap_nats:.2f} +- {self.stderr_nats:.2f} nats per image"
        )
        return [finding(
            self.model, "truth gap", f"gap ({self.condition})", self.gap_nats / per_dim, self.stderr_nats / per_dim,
            "bits/dim", self.verdict, detail,
        )]


def truth_gap(
    generator: Generator, world: GaussianWorld, images: int, seed: int, conditional: bool = True,
    batch_size: int = 32, tolerance_nats: float = 1e-3, progress: bool = False,
) -> TruthGap:
    """Mean and standard error of NLL_model - NLL_true over `images` held-out draws of `world`.

    Conditional: each image under its own caption ("mode k"); unconditional: the empty caption
    against the whole mixture. Flagged below truth when gap < -3 SE and gap < -tolerance_nats (the
    tolerance keeps a gap of exactly 0 with SE 0, the oracle's, from being flagged by rounding).
    """
    if images < 2:
        raise ValueError(f"the standard error needs images >= 2, got {images}")
    batch = world.batch(range(images), split="test")
    captions = batch.captions if conditional else [""] * images
    seeds = [item_seed(seed, i) for i in range(images)]
    name = generator.spec.name
    scores = score_images(generator, batch.images, captions, seeds, batch_size, f"{name} truth gap", progress)
    if scores.target != "data":
        raise ValueError(f"{name}.log_likelihood reports a {scores.target!r} NLL: only a data NLL has a truth")
    true = world.nll_nats(batch.images, captions)
    diff = scores.nll_nats - true
    gap, se = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(images))
    return TruthGap(
        model=name, condition="conditional" if conditional else "unconditional",
        estimator=scores.estimator, images=images, dim=world.dim, model_nll_nats=float(scores.nll_nats.mean()),
        true_nll_nats=float(true.mean()), gap_nats=gap, stderr_nats=se,
        below_truth=bool(gap < -3 * se and gap < -tolerance_nats),
    )
