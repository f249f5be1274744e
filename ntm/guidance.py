"""Classifier-free guidance on a Gaussian step (mu, sigma), as STARFlow guides its flows (Gu et al., 2025).

Instead of extrapolating means alone, the guided step is the Gaussian proportional to
p_c^w p_u^(1-w), the density-space form of CFG (log p_u + w (log p_c - log p_u)). Convention as in
`ntm.flow_matching.guided_velocity`: w = 1 is the conditional step, w = 0 the unconditional one.
  - 0 <= w <= 1: a product of two Gaussians with non-negative weights, precision
    w / sigma_c^2 + (1 - w) / sigma_u^2 > 0, taken exactly.
  - w > 1: the precision (w - (w - 1) r) / sigma_c^2 with r = sigma_c^2 / sigma_u^2 could vanish or turn
    negative when sigma_u < sigma_c; STARFlow clips r at 1, so the precision lies in
    [1 / sigma_c^2, w / sigma_c^2] and sigma stays in [sigma_c / sqrt(w), sigma_c]. With r clipped
    the mean is ((w mu_c - (w - 1) r mu_u) / (w - (w - 1) r)); at r = 1 that is plain CFG on the mean.
Everything is computed from log sigma, so extreme scales neither overflow nor reach sigma = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def guide_gaussian(
    mu_c: Tensor, log_sigma_c: Tensor, mu_u: Tensor, log_sigma_u: Tensor, w: float
) -> tuple[Tensor, Tensor]:
    """Guided (mu, log sigma) of N(mu_c, sigma_c^2)^w N(mu_u, sigma_u^2)^(1-w) (STARFlow's guidance), r clipped at 1."""
    if not w >= 0 or not math.isfinite(w):
        raise ValueError(f"guidance weight must be finite and >= 0, got {w}")
    if w == 1:
        return mu_c, log_sigma_c
    if w == 0:
        return mu_u, log_sigma_u
    log_r = 2 * (log_sigma_c - log_sigma_u)
    if w < 1:
        # precision-weighted average of the means, weight lam = (w / sigma_c^2) / precision on mu_c
        lam = torch.sigmoid(math.log(w) - math.log1p(-w) - log_r)
        log_precision = torch.logaddexp(math.log(w) - 2 * log_sigma_c, math.log1p(-w) - 2 * log_sigma_u)
        return lam * mu_c + (1 - lam) * mu_u, -0.5 * log_precision
    r = log_r.clamp(max=0).exp()
    denom = w - (w - 1) * r
    return (w * mu_c - (w - 1) * r * mu_u) / denom, log_sigma_c - 0.5 * torch.log(denom)
