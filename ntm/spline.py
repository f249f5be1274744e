"""Monotone rational-quadratic splines (Gregory & Delbourgo, 1982; Durkan et al., 2019): an
element-wise invertible map with an exact log-derivative and a closed-form inverse.

On [-bound, bound] the map is piecewise rational-quadratic through K + 1 knots (x_k, y_k) with
positive bin widths w_k, heights h_k and knot derivatives d_k; outside it is the identity (the
boundary derivatives are fixed at 1, so the map is C^1 everywhere). With xi = (x - x_k) / w_k and
s_k = h_k / w_k, bin k maps
    y = y_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / (s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)),
    dy/dx = s_k^2 (d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2) / (s_k + ...)^2.
Both are written below as the identity plus terms that vanish when every s_k = d_k = 1, so the
spline with zero parameters is the identity to the last bit (needed for an exactly-identity
zero-initialised transporter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_BIN = 1e-3


def spline_knots(
    width_logits: Tensor, height_logits: Tensor, derivative_logits: Tensor, bound: float, max_log_slope: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Knot positions x (..., K+1), y (..., K+1) and derivatives d (..., K+1) from unconstrained parameters.

    widths and heights are softmaxes (each bin at least MIN_BIN of the range) summing to 2 * bound;
    the K - 1 interior derivatives are exp(M tanh(logit / M)), in [e^-M, e^M]; the two ends are 1.
    Zero logits give equal bins and unit derivatives: the identity.
    """
    bins = width_logits.shape[-1]
    if derivative_logits.shape[-1] != bins - 1 or height_logits.shape[-1] != bins:
        raise ValueError(f"need K widths, K heights and K - 1 derivatives, got {width_logits.shape[-1]}, "
                         f"{height_logits.shape[-1]}, {derivative_logits.shape[-1]}")

    def knots(logits: Tensor) -> Tensor:
        sizes = MIN_BIN + (1 - MIN_BIN * bins) * torch.softmax(logits, dim=-1)
        edges = F.pad(torch.cumsum(sizes, dim=-1), (1, 0))
        return 2 * bound * edges - bound

    inner = torch.exp(max_log_slope * torch.tanh(derivative_logits / max_log_slope))
    return knots(width_logits), knots(height_logits), F.pad(inner, (1, 1), value=1.0)


def _bin(values: Tensor, edges: Tensor) -> Tensor:
    """Index k of the bin [edges_k, edges_{k+1}) holding each value, clamped to 0..K-1."""
    inner = edges[..., 1:-1].contiguous()
    return torch.searchsorted(inner, values.contiguous(), right=True)


def _gather(knots: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    return knots.gather(-1, k), knots.gather(-1, k + 1)


def rq_spline(x: Tensor, xk: Tensor, yk: Tensor, dk: Tensor, bound: float, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """The spline (or its inverse) applied element-wise, and log|dy/dx| at each point (of the forward map).

    x (..., N) holds N values per row; xk, yk, dk (..., K+1) hold the row's knots (broadcast over N by
    gathering). Values outside [-bound, bound] pass through with log-derivative 0.
    """
    inside = (x > -bound) & (x < bound)
    x_in = torch.where(inside, x, torch.zeros_like(x))
    k = _bin(x_in, yk if inverse else xk)
    x0, x1 = _gather(xk, k)
    y0, y1 = _gather(yk, k)
    d0, d1 = _gather(dk, k)
    w, h = x1 - x0, y1 - y0
    s = h / w
    bend = d1 + d0 - 2 * s
    if inverse:
        dy = x_in - y0
        a = h * (s - d0) + dy * bend
        b = h * d0 - dy * bend
        c = -s * dy
        xi = (2 * c) / (-b - torch.sqrt((b.square() - 4 * a * c).clamp_min(0)))
    else:
        xi = (x_in - x0) / w
    one_minus = 1 - xi
    denominator = s + bend * xi * one_minus
    # y - x = (y_k - x_k) + (h - w) xi + h xi (1 - xi) (d_k - s - bend xi) / denominator: every term is
    # exactly 0 at s = d = 1
    rational = h * xi * one_minus * ((d0 - s - bend * xi) / denominator)
    if inverse:
        out = x_in + (x0 - y0) + (w - h) * xi - rational
    else:
        out = x_in + (y0 - x0) + (h - w) * xi + rational
    numerator = s + (d1 - s) * xi.square() + (d0 - s) * one_minus.square()
    log_slope = 2 * torch.log(s) + torch.log(numerator) - 2 * torch.log(denominator)
    return torch.where(inside, out, x), torch.where(inside, log_slope, torch.zeros_like(log_slope))
