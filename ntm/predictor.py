"""The NTM predictor: one DiT for every reverse step, a diagonal Gaussian for u_s given (u_t, t, s, c).

The network reads both ends of a step (n_times = 2) and outputs 2C channels (v_hat, delta), which
are read around the forward posterior q(x_s | x_t, x0) = N(A x_t + B x0, C^2) with x0 replaced by
the flow-matching estimate u_t - t v_hat (DESIGN, NTM):
    mu_P = A u_t + B (u_t - t v_hat),    log sigma_P = log C + delta.
A velocity network therefore initialises it exactly: v_hat = v_teacher and delta = 0 give the
teacher's posterior step with sigma_P = C.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ntm.backbone import DiT, BackboneConfig, timestep_embedding
from ntm.schedule import posterior
from ntm.teacher import FlowMatchingTeacher


def predictor_config(velocity: BackboneConfig) -> BackboneConfig:
    """The predictor's backbone for a velocity backbone: same network, times (t, s), outputs (v_hat, delta)."""
    return dataclasses.replace(velocity, n_times=2, out_channels=2 * velocity.in_channels)


def per_sample(x: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample scalars (B,) to broadcast against `like` (B, ...), in like's dtype."""
    return x.to(like.dtype).reshape(-1, *[1] * (like.ndim - 1))


def posterior_mean(u_t: Tensor, v: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The step t -> s around a velocity v: mu = A u_t + B (u_t - t v), and the posterior's B and C (float64).

    The forward-posterior mean with x0 replaced by its flow-matching estimate u_t - t v; A, B, C are
    computed in float64 (near t_0 -> 0, C and B are differences of nearly equal numbers).
    """
    A, B, C = posterior(s.double(), t.double())
    mu = per_sample(A, u_t) * u_t + per_sample(B, u_t) * (u_t - per_sample(t, u_t) * v)
    return mu, B, C


class Predictor(nn.Module):
    """p(u_s | u_t, c) = N(mu_P, sigma_P^2 I), weights shared across all steps (DESIGN, NTM)."""

    def __init__(self, config: BackboneConfig, data_variance: float | None = None) -> None:
        super().__init__()
        if data_variance is not None and not data_variance > 0:
            raise ValueError(f"data_variance must be > 0 or None, got {data_variance}")
        self.data_variance = data_variance
        if config.n_times != 2 or config.out_channels != 2 * config.in_channels:
            raise ValueError(
                "the predictor backbone reads (t, s) and outputs (v_hat, delta): it needs n_times = 2 and "
                f"out_channels = 2 * in_channels, got n_times={config.n_times}, "
                f"in_channels={config.in_channels}, out_channels={config.out_channels}"
            )
        self.net = DiT(config)

    @property
    def config(self) -> BackboneConfig:
        return self.net.config

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.net.encode_text(prompts)

    def raw(self, u_t: Tensor, t: Tensor, s: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The network's two heads (v_hat, delta), each (B, C, H, W), for per-sample times t, s (B,)."""
        out = self.net(u_t, torch.stack([t, s], dim=1), tokens)
        return out.chunk(2, dim=1)

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_P, log sigma_P) for the step t -> s < t: mu_P = A u_t + B (u_t - t v_hat), log sigma_P = log sigma_0 + delta."""
        v_hat, delta = self.raw(u_t, t, s, tokens)
        mu, B, C = posterior_mean(u_t, v_hat, t, s)
        return mu, per_sample(self.base_log_sigma(t.double(), B, C), u_t) + delta

    def base_log_sigma(self, t: Tensor, B: Tensor, C: Tensor) -> Tensor:
        """log of the scale that delta = 0 stands for: C (the posterior step), or the reverse scale for Gaussian data.

        With `data_variance` v, sigma_0^2 = C^2 + B^2 Var(x0 | x_t) for x0 ~ N(0, v I), where
        Var(x0 | x_t) = v t^2 / ((1 - t)^2 v + t^2). Unlike C, which vanishes as s -> 0, it stays of the
        order of the real uncertainty, so a from-scratch predictor does not start with near-zero scales
        at the last step (t_0 ~ U[0, 0.05]) whose squared errors would dominate the loss.
        """
        if self.data_variance is None:
            return C.log()
        v = self.data_variance
        x0_variance = v * t**2 / ((1 - t) ** 2 * v + t**2)
        return 0.5 * torch.log(C**2 + B**2 * x0_variance)

    @classmethod
    def from_teacher(cls, teacher: FlowMatchingTeacher) -> Predictor:
        """A predictor whose step is exactly the teacher's posterior step: v_hat = v_teacher(u_t, t), delta = 0."""
        source = teacher.net
        model = cls(predictor_config(source.config))
        state = source.state_dict()
        # the second time MLP (reads s) adds nothing until trained: zero its last layer
        state |= {f"time_mlps.1.{k}": v for k, v in model.net.time_mlps[1].state_dict().items()}
        state["time_mlps.1.2.weight"] = torch.zeros_like(state["time_mlps.1.2.weight"])
        state["time_mlps.1.2.bias"] = torch.zeros_like(state["time_mlps.1.2.bias"])
        # unpatchify reads feature c*p*p + i*p + j as channel c, so channels [0, C) (v_hat) are the
        # first C*p*p output rows, and channels [C, 2C) (delta) the rest: zero those
        state["out.weight"] = torch.cat([source.out.weight, torch.zeros_like(source.out.weight)])
        state["out.bias"] = torch.cat([source.out.bias, torch.zeros_like(source.out.bias)])
        model.net.load_state_dict(state)
        return model.to(source.out.weight.device)


class VelocityPredictor(nn.Module):
    """A predictor around any velocity network v(x, t, tokens) (e.g. a diffusers transformer behind an adapter).

    mu_P = A u_t + B (u_t - t v(u_t, t, c)) and log sigma_P = log C + delta, where delta comes from a small
    head over (u_t, v) and the times (t, s) whose last layer is zero-initialised: at initialisation the step
    is exactly the velocity network's posterior step with sigma_P = C, as for `Predictor.from_teacher`.
    The velocity network's convention must be this project's: x_t = (1 - t) x0 + t eps, v = eps - x0, t in
    [0, 1] (t = 1 noise), returning a tensor of x's shape. Both the network and the head train.
    """

    def __init__(
        self, velocity: nn.Module, channels: int, width: int = 32, encode_text: Callable[[list[str]], Tensor] | None = None
    ) -> None:
        super().__init__()
        if encode_text is None and not callable(getattr(velocity, "encode_text", None)):
            raise ValueError("pass encode_text (prompts -> token ids the velocity network reads) or give the network an encode_text method")
        self.velocity = velocity
        self._encode_text = encode_text
        self.width = width
        self.time = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, 2 * width))
        self.inp = nn.Conv2d(2 * channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self._encode_text(prompts) if self._encode_text is not None else self.velocity.encode_text(prompts)

    def _times(self, t: Tensor, s: Tensor, like: Tensor) -> Tensor:
        feats = torch.cat([timestep_embedding(t, self.width), timestep_embedding(s, self.width)], dim=1)
        return self.time(feats.to(like.dtype))

    def forward(self, u_t: Tensor, t: Tensor, s: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_P, log sigma_P) for the step t -> s < t, as `Predictor.forward`."""
        v = self.velocity(u_t, t.to(u_t.dtype), tokens)
        scale, shift = self._times(t, s, u_t).chunk(2, dim=1)
        h = self.inp(torch.cat([u_t, v], dim=1)) * (1 + scale[..., None, None]) + shift[..., None, None]
        delta = self.out(nn.functional.silu(h))
        mu, _, C = posterior_mean(u_t, v, t, s)
        return mu, per_sample(C.log(), u_t) + delta
