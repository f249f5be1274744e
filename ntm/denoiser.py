"""NTM self-distillation: a Tweedie target from the exact trajectory score, and a one-pass denoiser (issue 3, item 7).

Times run as in `ntm.model`: tau_0 = 1 > tau_1 > ... > tau_K = t_min, traj[k] = x at tau_k, r_k = 1 - tau_k.

Derivation. Under the forward process the trajectory given x0 is, per pixel, Gaussian across times:
    traj | x0 ~ N(r x0, S),  S_jk = m^2 (1 - M) / (1 - m),  m = min(tau_j, tau_k), M = max(tau_j, tau_k),
because x_{tau_K} = r_K x0 + tau_K eps and each x_t = a x_s + sig eps (a = (1-t)/(1-s)) leaves
Cov(x_t, x_s | x0) = a Var(x_s | x0) = s^2 (1-t)/(1-s) (S_kk = tau_k^2; row tau = 1 is e_0: x_1 is
independent of x0). Differentiating p(traj) = int N(traj; r x0, S) p(x0 | c) dx0 gives Tweedie's
formula for a non-isotropic Gaussian corruption, a (K+1)-vector identity per pixel:
    r E[x0 | traj] = traj + S g,    g = grad_traj log p(traj | c)                                 (T1)
(the issue writes it with g = -grad NLL: x0_hat = (x - S grad NLL) / (1 - t)). Row k gives one
estimate (traj_k + (S g)_k) / r_k for each tau_k < 1; for the true density they all coincide. For a
learned density they need not, so they are combined by generalised least squares,
    x0_hat = (r^T S^-1 r)^-1 r^T S^-1 (traj + S g).
Column K of S is proportional to r (S_jK = tau_K^2 r_j / r_K), so S^-1 r = (r_K / tau_K^2) e_K and
the GLS combination is exactly the t_min row, with no inverse of S:
    x0_hat = (x_{t_min} + sum_k S_Kk g_k) / (1 - t_min)
           = (x_{t_min} + tau_K^2 / r_K * sum_k r_k g_k) / r_K.                                  (T2)
sum_k (r_k / r_K) g_k is the derivative of log p along traj + delta r / r_K, a shift that leaves
every forward noise unchanged; for the true density it is grad log p_{t_min}(x_{t_min}), and (T2)
is the familiar one-time Tweedie estimate at t_min. x_{t_min} is sufficient for x0, which is why
only the t_min row carries information about it.

Self-distillation: trajectories come from the model's own sampler (no data), the target (T2) from
the model's exact score, and a small non-causal DiT g(u_{t_min}, t_min, c) regresses onto it, so
fast sampling is K predictor passes and one denoiser pass: no inverse of f_T, no backward pass.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntm.backbone import BackboneConfig, DiT
from ntm.checkpoint import PretrainedMixin
from ntm.model import NTM
from ntm.predictor import per_sample



def trajectory_score(model: NTM, traj: Tensor, times: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(log p(traj | c) (B,), g = grad_traj log p(traj | c)) for every state of traj (K+1, B, ...), one backward pass (T1)."""
    with torch.enable_grad():
        states = traj.detach().requires_grad_(True)
        log_p, _ = model.trajectory_log_prob(states, times, tokens)
        # samples never interact in the model, so the gradient of the batch sum is each sample's own
        (score,) = torch.autograd.grad(log_p.sum(), states)
    return log_p.detach(), score


def trajectory_covariance(times: Tensor) -> Tensor:
    """S_jk = min(tau_j, tau_k)^2 (1 - max) / (1 - min), Cov(x_{tau_j}, x_{tau_k} | x0) per pixel: (K+1, K+1) or (B, K+1, K+1)."""
    times = times.to(torch.float64)
    lo = torch.minimum(times[..., :, None], times[..., None, :])
    hi = torch.maximum(times[..., :, None], times[..., None, :])
    # (1 - max) / (1 - min) = 1 on the diagonal, including at tau = 1 where it reads 0 / 0
    ratio = torch.where(lo == hi, torch.ones_like(lo), (1 - hi) / (1 - lo))
    return lo.square() * ratio


def tweedie_x0(traj: Tensor, score: Tensor, times: Tensor) -> Tensor:
    """x0_hat = (x_{t_min} + sum_k S_Kk g_k) / (1 - t_min), the GLS combination of Tweedie's rows (T2); (B, ...) in traj's dtype."""
    b = traj.shape[1]
    grid = times.to(torch.float64).reshape(-1, times.shape[-1]).expand(b, -1).to(traj.device)
    row = trajectory_covariance(grid)[:, -1]
    like = traj[0]
    shift = sum(per_sample(row[:, k], like) * score[k] for k in range(grid.shape[1]))
    return (traj[-1] + shift) / per_sample(1 - grid[:, -1], like)


def denoiser_config(predictor: BackboneConfig, depth: int = 2, **overrides) -> BackboneConfig:
    """A small backbone for g(u, t_min, c): the predictor's patches, width and vocabulary, `depth` blocks, one time, C outputs."""
    return dataclasses.replace(
        predictor, depth=depth, n_times=1, out_channels=predictor.in_channels, **overrides
    )


class Denoiser(PretrainedMixin, nn.Module):
    """g(u_{t_min}, t_min, c) = u + net(u, t_min, c) ~ E[x0 | trajectory], x-space output (DESIGN, NTM: self-distillation).

    The skip makes an untrained denoiser (zero-initialised output) return u_{t_min}, the sampler's
    own last state, so distillation starts from NTM's sample with f_T^-1 replaced by the identity.
    """

    KIND = "ntm_denoiser"

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if config.n_times != 1 or config.out_channels != config.in_channels:
            raise ValueError(
                "the denoiser reads t_min alone and outputs an image: it needs n_times = 1 and out_channels = "
                f"in_channels, got n_times={config.n_times}, in_channels={config.in_channels}, "
                f"out_channels={config.out_channels}"
            )
        self.net = DiT(config)

    @classmethod
    def for_model(cls, model: NTM, depth: int = 2, **overrides) -> Denoiser:
        """A denoiser reading this NTM's u-space and captions (`denoiser_config` of its predictor)."""
        return cls(denoiser_config(model.config.predictor, depth, **overrides))

    @property
    def config(self) -> BackboneConfig:
        return self.net.config

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.net.encode_text(prompts)

    def forward(self, u: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        """x0_hat (B, C, H, W) from u_{t_min} (B, C, H, W) at per-sample times t (B,)."""
        return u + self.net(u, t, tokens)

    def check_compatible(self, model: NTM) -> None:
        """Raise unless this denoiser reads `model`'s images and caption tokens."""
        mine, theirs = self.config, model.config.predictor
        fields = ("resolution", "in_channels", "vocabulary", "max_text_len")
        wrong = [f for f in fields if getattr(mine, f) != getattr(theirs, f)]
        if wrong:
            raise ValueError(f"denoiser and NTM differ in {', '.join(wrong)}: build it with Denoiser.for_model(model)")

    def to_config(self) -> dict:
        return {"denoiser": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> Denoiser:
        return cls(BackboneConfig.from_dict(config["denoiser"]))


@torch.no_grad()
def fast_sample(
    model: NTM,
    denoiser: Denoiser,
    noises: Tensor,
    tokens: Tensor,
    null_tokens: Tensor | None = None,
    guidance: float = 1.0,
    t_min: float | None = None,
) -> Tensor:
    """x0_hat = g(u_{t_min}, t_min, c) after K predictor passes in u-space: no inverse of f_T, no backward pass."""
    denoiser.check_compatible(model)
    states, grid = model.sample_u(noises, tokens, null_tokens, guidance, t_min)
    return denoiser(states[-1], grid[:, -1], tokens)


def distillation_loss(
    denoiser: Denoiser,
    model: NTM,
    tokens: Tensor,
    generator: torch.Generator,
    null_tokens: Tensor | None = None,
    guidance: float = 1.0,
    t_min: float | None = None,
) -> Tensor:
    """Per-sample mean over dimensions of (g(u_{t_min}, t_min, c) - x0_hat)^2 (B,), x0_hat from (T2).

    Trajectories come from the model's own sampler (guided as `fast_sample` will be), not from the
    forward process on data: the denoiser then trains on exactly the u_{t_min} it will read at
    sampling time, and needs no data. Their x-states are f_T^-1(u) at each time (one batched
    inverse of K*B states); the score is of the conditional density log p(traj | c), exact, with
    no gradient into the NTM.
    """
    denoiser.check_compatible(model)
    c = model.config.predictor
    k, b = model.config.steps, tokens.shape[0]
    weight = next(model.parameters())
    noises = torch.randn((k + 1, b, c.in_channels, c.resolution, c.resolution), generator=generator)
    noises = noises.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        states, grid = model.sample_u(noises, tokens, null_tokens, guidance, t_min)
        lower = model.untransport(states[1:].flatten(0, 1), grid[:, 1:].T.reshape(-1), tokens.repeat(k, 1))
        traj = torch.cat([states[:1], lower.unflatten(0, (k, b))])
    _, score = trajectory_score(model, traj, grid, tokens)
    target = tweedie_x0(traj, score, grid)
    prediction = denoiser(states[-1], grid[:, -1], tokens)
    return F.mse_loss(prediction, target, reduction="none").flatten(1).mean(1)
