"""Negative log-likelihood in bits/dim on held-out renders, with uniform dequantisation.

For pixels x in {0..255}^D, u ~ U[0,1)^D and z = (x + u) / 128 - 1 in [-1, 1]^D,
-log P(x) <= E_u[-log p(z)] - D ln 2 + D ln 256 (the D ln 2 is log|dz/dy| for y = (x + u)/256),
so bits/dim = (nll_nats - D ln 2 + D ln 256) / (D ln 2). Every row names its estimator and target;
a model without a likelihood gets "n/a", never a number. Models with a generative trajectory
(NTM) also report the exact trajectory NLL, -log p(x_{t_0..K} | c) for one forward trajectory from
each held-out image, in bits per data dimension (`nll_traj_bpd`: a continuous density over
(K+1) D numbers, so it is not comparable with `nll_bpd` and may be negative).

A model whose likelihood is a density of a latent code rather than of pixels (an NTM in a VAE's latent space)
says so in its result's settings (`nll_space = "latent"`, `latent_dim`). Its rows are reported per latent
dimension and without dequantisation terms (the latent is continuous), under their own names
(`nll_latent_bpd`, `nll_traj_latent_bpd`), so they never sit in the pixel `nll_bpd` column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from baselines.base import Generator, LikelihoodResult
from benchmarks.suites.base import Suite, SuiteResult, dequantise, in_batches, item_seed


@dataclass(frozen=True)
class NllOptions:
    images: int = 64
    batch_size: int = 32


def bits_per_dim(nll_nats: np.ndarray, dim: int) -> np.ndarray:
    """Discrete-data bits/dim from the continuous NLL in nats of z in [-1, 1]^D."""
    return (nll_nats - dim * math.log(2) + dim * math.log(256)) / (dim * math.log(2))


class NllSuite(Suite):
    """Held-out negative log-likelihood in bits/dim; estimator and target in every row."""

    name = "nll"
    version = "1"
    Options = NllOptions

    def run(self, generator: Generator, world, seed: int, progress: bool = True) -> SuiteResult:
        o = self.options
        if not generator.capabilities.likelihood:
            return SuiteResult([], {"nll_bpd": None, "nll_estimator": "n/a", "nll_target": "n/a"})
        batch = world.batch(list(range(o.images)), split="test")
        dim = int(np.prod(batch.images.shape[1:]))
        seeds = [item_seed(seed, i) for i in range(o.images)]
        # Dequantisation noise per image, from its own seed.
        x = dequantise(batch.images, seeds)

        def evaluate(part: slice) -> LikelihoodResult:
            return generator.log_likelihood(x[part], batch.captions[part], seeds[part])

        results = in_batches(evaluate, o.images, o.batch_size, f"{generator.spec.name} nll", progress)
        trajectory = None
        if generator.capabilities.trajectory:
            parts = in_batches(
                lambda part: generator.trajectory_log_likelihood(x[part], batch.captions[part], seeds[part]),
                o.images, o.batch_size, f"{generator.spec.name} trajectory nll", progress,
            )
            trajectory = torch.cat([r.nll_nats for r in parts]).double().cpu().numpy()
        nll = torch.cat([r.nll_nats for r in results]).double().cpu().numpy()
        stderr = [r.stderr for r in results]
        stderr = torch.cat(stderr).double().cpu().numpy() if all(s is not None for s in stderr) else None
        first = results[0]
        latent = first.settings.get("nll_space") == "latent"
        if latent:
            return self._latent(first, parts[0] if trajectory is not None else None, batch, seeds, nll, stderr, trajectory)
        bpd = bits_per_dim(nll, dim)
        rows = [
            {
                "item": i, "caption": batch.captions[i], "seed": seeds[i], "nll_nats": float(nll[i]), "bpd": float(bpd[i]),
                "nll_stderr_nats": None if stderr is None else float(stderr[i]),
                "trajectory_nll_nats": None if trajectory is None else float(trajectory[i]),
            }
            for i in range(o.images)
        ]
        metrics = {
            "nll_bpd": float(bpd.mean()),
            "nll_bpd_sem": float(bpd.std(ddof=1) / math.sqrt(len(bpd))) if len(bpd) > 1 else None,
            "nll_estimator": first.estimator,
            "nll_target": first.target,
            "nll_settings": dict(first.settings),
            "nll_dim": dim,
            "nll_images": o.images,
            "nll_units": "bits/dim (discrete data, uniform dequantisation)",
        }
        if trajectory is not None:
            # exact continuous density of a whole trajectory, per data dimension: no dequantisation terms
            metrics["nll_traj_bpd"] = float(trajectory.mean() / (dim * math.log(2)))
            metrics["nll_traj_estimator"] = parts[0].estimator
        return SuiteResult(rows, metrics)

    def _latent(self, first, traj_first, batch, seeds, nll, stderr, trajectory) -> SuiteResult:
        """Rows and metrics of a latent-space likelihood: continuous nats over `latent_dim`, in bits per latent dim."""
        dim = int(first.settings["latent_dim"])
        bits = nll / (dim * math.log(2))
        n = len(bits)
        rows = [
            {
                "item": i, "caption": batch.captions[i], "seed": seeds[i], "nll_nats": float(nll[i]),
                "bits_per_latent_dim": float(bits[i]),
                "nll_stderr_nats": None if stderr is None else float(stderr[i]),
                "trajectory_nll_nats": None if trajectory is None else float(trajectory[i]),
            }
            for i in range(n)
        ]
        metrics = {
            "nll_latent_bpd": float(bits.mean()),
            "nll_latent_bpd_sem": float(bits.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "nll_estimator": first.estimator,
            "nll_target": first.target,
            "nll_settings": dict(first.settings),
            "nll_space": "latent",
            "nll_dim": dim,
            "nll_images": n,
            "nll_units": "bits per latent dimension (continuous density of the VAE latent; not pixel bits/dim)",
        }
        if trajectory is not None:
            metrics["nll_traj_latent_bpd"] = float(trajectory.mean() / (dim * math.log(2)))
            metrics["nll_traj_estimator"] = traj_first.estimator
        return SuiteResult(rows, metrics)
