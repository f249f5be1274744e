"""Time schedules of the rectified-flow forward process (t = 1 noise, t = 0 data)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")


def shift_time(t: Tensor | float, shift: float) -> Tensor | float:
    """SD3 timestep shift t' = shift t / (1 + (shift - 1) t) (Esser et al., 2024, resolution shifting)."""
    _check_shift(shift)
    return shift * t / (1 + (shift - 1) * t)


def unshift_time(t: Tensor | float, shift: float) -> Tensor | float:
    """Inverse of `shift_time`: t = t' / (shift - (shift - 1) t')."""
    _check_shift(shift)
    return t / (shift - (shift - 1) * t)


def time_grid(
    steps: int, shift: float = 1.0, t_min: float = 0.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """steps + 1 times from 1 down to t_min, uniform in unshifted time, then SD3-shifted."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
    u_min = unshift_time(t_min, shift)
    u = torch.linspace(1.0, u_min, steps + 1, dtype=torch.float64)
    times = shift_time(u, shift)
    # pin the endpoints so that rounding in the shift never moves them
    times[0], times[-1] = 1.0, t_min
    return times.to(dtype)


def _sqrt(x: Tensor | float) -> Tensor | float:
    """Square root clamped at 0, so rounding never turns a zero variance into NaN."""
    if isinstance(x, Tensor):
        return x.clamp_min(0).sqrt()
    return math.sqrt(max(float(x), 0.0))


def transition(s: Tensor | float, t: Tensor | float) -> tuple[Tensor | float, Tensor | float]:
    """x_t = a x_s + sig eps (s < t), a = (1-t)/(1-s), sig^2 = t^2 - a^2 s^2 (DESIGN, NTM)."""
    if not isinstance(s, Tensor) and not isinstance(t, Tensor):
        s, t = float(s), float(t)
    a = (1 - t) / (1 - s)
    return a, _sqrt(t**2 - a**2 * s**2)


def posterior(
    s: Tensor | float, t: Tensor | float
) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
    """Forward posterior q(x_s | x_t, x0) = N(A x_t + B x0, C^2 I), s < t (issue 3, item 1).

    A = s^2 (1-t) / (t^2 (1-s)), B = (t-s)(t+s-2ts) / (t^2 (1-s)),
    C^2 = s^2 (t-s)(t+s-2ts) / (t^2 (1-s)^2); at t = 1 this is A = 0, B = 1 - s, C = s.
    """
    if not isinstance(s, Tensor) and not isinstance(t, Tensor):
        s, t = float(s), float(t)
    gap = (t - s) * (t + s - 2 * t * s)
    A = s**2 * (1 - t) / (t**2 * (1 - s))
    B = gap / (t**2 * (1 - s))
    C = _sqrt(s**2 * gap) / (t * (1 - s))
    return A, B, C


def sample_t_min(
    n: int,
    generator: torch.Generator | None = None,
    high: float = 0.05,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Training end times t_0 ~ U[0, high], one per sample (DESIGN, NTM: t_min ~ U[0, 0.05])."""
    if not 0.0 <= high < 1.0:
        raise ValueError(f"high must lie in [0, 1), got {high}")
    return torch.rand(n, generator=generator, dtype=torch.float64).mul_(high).to(dtype)
