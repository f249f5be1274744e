"""Estimator agreement: does each model's NLL hold still when its estimator's knobs move?

NTM (IWAE; Burda et al., 2016, Thm. 1): IWAE_1 = ELBO and the IWAE bound on -log p(x) is
non-increasing in the number of chains K, so NLL_IWAE(K) must not rise from K to a larger K beyond
sampling error; the tightening ELBO - IWAE_K grows towards the bound's gap. The flow-matching
teacher (ODE; Chen et al., 2018; Grathwohl et al., 2019): the NLL at each step count should not
differ from the finest one's beyond what the table prints, nor move with the number of Hutchinson
probes beyond its standard error. NTM's exact trajectory NLL (a sum of Gaussian and log-det terms)
should not move when the model runs in float64 instead of float32.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from baselines.training import per_sample_noise
from benchmarks.audit.findings import finding
from benchmarks.suites.nll import bits_per_dim
from ntm.flow_matching import Velocity, ode_log_likelihood
from ntm.model import NTM


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error over the first axis (0 error for a single value)."""
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(se)


def _bpd(nats: float, dim: int) -> float:
    """A per-image NLL difference in nats as bits per dimension (differences need no dequantisation terms)."""
    return nats / (dim * math.log(2))


@dataclass(frozen=True)
class IwaeLadder:
    """Per-image IWAE and ELBO NLLs (nats), one row per chain count in `samples` (ascending)."""

    model: str
    samples: tuple[int, ...]
    iwae_nll: np.ndarray
    elbo_nll: np.ndarray
    dim: int

    def steps(self) -> list[tuple[int, int, float, float, bool]]:
        """(K_a, K_b, mean NLL(K_b) - NLL(K_a), its SE, non-increasing within 3 SE) for consecutive counts."""
        out = []
        for a, b in itertools.pairwise(range(len(self.samples))):
            change, se = mean_and_se(self.iwae_nll[b] - self.iwae_nll[a])
            out.append((self.samples[a], self.samples[b], change, se, change <= 3 * se))
        return out

    @property
    def monotone(self) -> bool:
        return all(ok for *_, ok in self.steps())

    def rows(self) -> list[dict]:
        rows = []
        for i, k in enumerate(self.samples):
            tightening, se = mean_and_se(self.elbo_nll[i] - self.iwae_nll[i])
            rows.append(finding(
                self.model, "agreement", f"ELBO - IWAE_{k}", _bpd(tightening, self.dim), _bpd(se, self.dim), "bits/dim",
                "upper bound", f"IWAE_{k} NLL {bits_per_dim(self.iwae_nll[i].mean(), self.dim):.4f} bits/dim",
            ))
        for a, b, change, se, ok in self.steps():
            rows.append(finding(
                self.model, "agreement", f"IWAE_{b} - IWAE_{a}", _bpd(change, self.dim), _bpd(se, self.dim), "bits/dim",
                "tightens with K" if ok else "bound rises with K: bug", "must be <= 0 within 3 SE",
            ))
        return rows


def iwae_ladder(
    model: NTM, name: str, x: Tensor, tokens: Tensor, seeds: Sequence[int], samples: Sequence[int]
) -> IwaeLadder:
    """NTM.data_bound at each chain count in `samples`, the same per-image seeds for all."""
    samples = tuple(sorted(samples))
    iwae, elbo = [], []
    for k in samples:
        bound = model.data_bound(x, tokens, k, list(seeds))
        iwae.append(-bound.iwae_nats.double().cpu().numpy())
        elbo.append(-bound.elbo_nats.double().cpu().numpy())
    return IwaeLadder(name, samples, np.stack(iwae), np.stack(elbo), x[0].numel())


@dataclass(frozen=True)
class OdeGrid:
    """Per-image ODE NLLs (nats): every solver step count at the fewest probes, every probe count at the most steps."""

    model: str
    nll: dict[tuple[int, int], np.ndarray]
    dim: int
    tolerance_bpd: float

    @property
    def steps(self) -> list[int]:
        return sorted({s for s, _ in self.nll})

    @property
    def probes(self) -> list[int]:
        return sorted({p for _, p in self.nll})

    def step_errors(self) -> list[tuple[int, float, float]]:
        """(steps, mean NLL(steps) - NLL(most steps), its paired SE) in bits/dim, for each coarser step count."""
        finest, p = self.nll[self.steps[-1], self.probes[0]], self.probes[0]
        out = []
        for s in self.steps[:-1]:
            change, se = mean_and_se(self.nll[s, p] - finest)
            out.append((s, _bpd(change, self.dim), _bpd(se, self.dim)))
        return out

    def probe_shift(self) -> tuple[float, float]:
        """Mean NLL(most probes) - NLL(fewest) at the most steps, with its paired SE, in bits/dim."""
        s = self.steps[-1]
        change, se = mean_and_se(self.nll[s, self.probes[-1]] - self.nll[s, self.probes[0]])
        return _bpd(change, self.dim), _bpd(se, self.dim)

    def rows(self) -> list[dict]:
        rows = []
        for (s, p), nll in sorted(self.nll.items()):
            mean, se = mean_and_se(nll)
            rows.append(finding(
                self.model, "agreement", f"ODE NLL, {s} steps, {p} probes", bits_per_dim(mean, self.dim),
                _bpd(se, self.dim), "bits/dim", "estimate", "SE over images",
            ))
        for s, change, se in self.step_errors():
            rows.append(finding(
                self.model, "agreement", f"ODE {s} - {self.steps[-1]} steps", change, se, "bits/dim",
                "estimate: converged" if abs(change) <= self.tolerance_bpd else "estimate: solver error too large",
                f"tolerance {self.tolerance_bpd} bits/dim; {self.probes[0]} probes",
            ))
        if len(self.probes) > 1:
            shift, se = self.probe_shift()
            rows.append(finding(
                self.model, "agreement", f"ODE {self.probes[-1]} - {self.probes[0]} probes", shift, se, "bits/dim",
                "estimate: probe-consistent" if abs(shift) <= 3 * se + 1e-12 else "estimate: probe count matters",
                f"Hutchinson estimates are unbiased: the mean must not move beyond 3 SE; {self.steps[-1]} steps",
            ))
        return rows


def ode_grid(
    velocity: Velocity, name: str, x: Tensor, tokens: Tensor, seeds: Sequence[int], steps: Sequence[int],
    probes: Sequence[int], solver: str = "rk4", tolerance_bpd: float = 0.01,
) -> OdeGrid:
    """ode_log_likelihood with the Hutchinson trace: each step count at the fewest probes, each probe count at
    the most steps (per-image seeds shared, so differences are paired)."""
    settings = {(s, min(probes)) for s in steps} | {(max(steps), p) for p in probes}
    nll = {}
    for s, p in sorted(settings):
        result = ode_log_likelihood(
            velocity, x, tokens, steps=s, solver=solver, trace="hutchinson", probes=p, seeds=list(seeds)
        )
        nll[s, p] = -result.logp_nats.double().cpu().numpy()
    return OdeGrid(name, nll, x[0].numel(), tolerance_bpd)


@dataclass(frozen=True)
class PrecisionCheck:
    """NTM's exact trajectory NLL of the same trajectories from a float64 and a float32 copy of the model (nats)."""

    model: str
    nll64: np.ndarray
    nll32: np.ndarray
    dim: int
    tolerance_bpd: float

    @property
    def max_difference_bpd(self) -> float:
        return _bpd(float(np.abs(self.nll32 - self.nll64).max()), self.dim)

    def rows(self) -> list[dict]:
        mean, se = mean_and_se(self.nll32 - self.nll64)
        ok = self.max_difference_bpd <= self.tolerance_bpd
        return [finding(
            self.model, "agreement", "trajectory NLL float32 - float64", _bpd(mean, self.dim), _bpd(se, self.dim),
            "bits/dim", "exact: precision-stable" if ok else "exact: float32 rounding matters",
            f"max |difference| {self.max_difference_bpd:.2e} bits/dim (tolerance {self.tolerance_bpd}); "
            "a trajectory density over (K + 1) D numbers, not comparable with the data NLL",
        )]


@torch.no_grad()
def precision_check(
    model: NTM, name: str, x: Tensor, tokens: Tensor, seeds: Sequence[int], tolerance_bpd: float = 1e-3
) -> PrecisionCheck:
    """One forward trajectory per image, drawn in float64 from its seed, scored by model.double() and by model."""
    wide = copy.deepcopy(model).double()
    times = model.times(model.config.t_min_eval)
    noises = per_sample_noise(seeds, (model.config.steps, *x.shape[1:]), x.device).transpose(0, 1).double()
    traj, _ = wide.chain_from(x.double(), times, noises)
    nll64 = -wide.trajectory_log_prob(traj, times, tokens)[0]
    nll32 = -model.trajectory_log_prob(traj.float(), times, tokens)[0]
    return PrecisionCheck(name, nll64.cpu().numpy(), nll32.double().cpu().numpy(), x[0].numel(), tolerance_bpd)
