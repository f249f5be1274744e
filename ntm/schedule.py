"""Time schedules of the rectified-flow forward process (t = 1 noise, t = 0 data)."""

from __future__ import annotations

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
