"""Normalizing Trajectory Models (arXiv 2605.08078): K exact conditional-flow reverse steps.

Times 1 = times[0] > times[1] > ... > times[K] = t_min run from noise to data; a trajectory
`traj` (K+1, B, C, H, W) holds x at those times in the same order. One reverse step t -> s < t is
    p(x_s | x_t, c) = N(f_T(x_s, s); mu_P, sigma_P^2 I) |det df_T/dx (x_s)|,
with (mu_P, sigma_P) from the predictor at u_t = f_T(x_t, t), and u_1 = x_1 (f_T is never applied at
t = 1: x_1's density is N(0, I) itself).
With no transporter (f_T = id) this is Gaussian few-step diffusion with a learned variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from ntm.backbone import BackboneConfig
from ntm.checkpoint import PretrainedMixin
from ntm.guidance import guide_gaussian
from ntm.predictor import Predictor, VelocityPredictor, per_sample, posterior_mean, predictor_config
from ntm.schedule import posterior, sample_t_min, time_grid, transition
from ntm.teacher import FlowMatchingTeacher
from ntm.transporter import Transporter, TransporterConfig

TrainingMode = Literal["end_to_end", "pairwise"]
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class NTMConfig:
    """Everything needed to rebuild an NTM; `transporter=None` means f_T = id (the Gaussian baseline).

    `predictor=None` marks an NTM around a foreign velocity network (`NTM.from_velocity`), whose
    architecture this config cannot describe.
    """

    predictor: BackboneConfig | None
    transporter: TransporterConfig | None = None
    steps: int = 4
    shift: float = 1.0
    t_min_high: float = 0.05
    t_min_eval: float = 0.02
    t_min_low: float = 0.0
    mode: TrainingMode = "end_to_end"
    data_variance: float | None = None
    step_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        object.__setattr__(self, "step_counts", tuple(self.step_counts))
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.step_counts):
            raise ValueError(f"step_counts must be integers >= 1 (step counts to train over), got {self.step_counts}")
        if self.step_counts and self.mode != "end_to_end":
            raise ValueError("training over several step counts (step_counts) needs mode = 'end_to_end'")
        if self.mode not in get_args(TrainingMode):
            raise ValueError(f"mode must be one of {get_args(TrainingMode)}, got {self.mode!r}")
        if not (0 <= self.t_min_low <= self.t_min_high < 1 and 0 < self.t_min_eval < 1):
            raise ValueError(
                f"need 0 <= t_min_low <= t_min_high < 1 and 0 < t_min_eval < 1, got {self.t_min_low}, {self.t_min_high}, "
                f"{self.t_min_eval}"
            )
        p, f = self.predictor, self.transporter
        if f is not None and p is not None and (f.resolution, f.channels) != (p.resolution, p.in_channels):
            raise ValueError(
                f"transporter ({f.resolution} px, {f.channels} channels) does not match the predictor "
                f"({p.resolution} px, {p.in_channels} channels)"
            )

    @property
    def trained_steps(self) -> tuple[int, ...]:
        """The step counts K this model trained over: `step_counts`, or the configured K alone."""
        return self.step_counts or (self.steps,)

    def to_dict(self) -> dict:
        return {
            "predictor": None if self.predictor is None else self.predictor.to_dict(),
            "transporter": None if self.transporter is None else self.transporter.to_dict(),
            "steps": self.steps,
            "shift": self.shift,
            "t_min_high": self.t_min_high,
            "t_min_eval": self.t_min_eval,
            "t_min_low": self.t_min_low,
            "mode": self.mode,
            "data_variance": self.data_variance,
            "step_counts": list(self.step_counts),
        }

    @classmethod
    def from_dict(cls, d: dict) -> NTMConfig:
        transporter, predictor = d["transporter"], d["predictor"]
        return cls(
            **(
                d
                | {
                    "predictor": None if predictor is None else BackboneConfig.from_dict(predictor),
                    "transporter": None if transporter is None else TransporterConfig.from_dict(transporter),
                }
            )
        )


@dataclass(frozen=True)
class DataBound:
    """Lower bounds on log p(x_{t_0} = x) in nats per sample (float64), by estimator name."""

    elbo_nats: Tensor
    iwae_nats: Tensor
    samples: int
    t_min: float

    def by_estimator(self) -> dict[str, Tensor]:
        return {"elbo": self.elbo_nats, "iwae": self.iwae_nats}


def gaussian_log_prob(x: Tensor, mu: Tensor | float, log_sigma: Tensor | float) -> Tensor:
    """sum_d log N(x_d; mu_d, sigma_d^2) per sample (B,), in float64."""
    x = x.double()
    mu = torch.as_tensor(mu, dtype=torch.float64, device=x.device)
    log_sigma = torch.as_tensor(log_sigma, dtype=torch.float64, device=x.device)
    z = (x - mu) * torch.exp(-log_sigma)
    return (-0.5 * z.square() - log_sigma - 0.5 * _LOG_2PI).expand_as(x).flatten(1).sum(1)


def eta_step(u_t: Tensor, mu: Tensor, log_sigma: Tensor, t: Tensor, s: Tensor, eta: float, noise: Tensor) -> Tensor:
    """One u-space step t -> s from the step's Gaussian (mu_P, sigma_P) with fresh noise eta sigma_P (DDIM-like).

    The mean gives x0_hat = (mu_P - A u_t) / B, and u_t = (1 - t) x0_hat + t eps_hat gives eps_hat. Of the
    step's total noise scale sqrt(A^2 t^2 + sigma_P^2) (A t eps_hat carried by A u_t, sigma_P drawn fresh),
    eta sigma_P is drawn fresh and the rest follows eps_hat:
        u_s = mu_P + (sqrt(A^2 t^2 + (1 - eta^2) sigma_P^2) - A t) eps_hat + eta sigma_P noise.
    eta = 1 is the ancestral step; eta = 0 with sigma_P = C is DDIM's (1 - s) x0_hat + s eps_hat (Song et al., 2021).
    """
    A, B, _ = posterior(s.double(), t.double())
    A, B, t = per_sample(A, u_t), per_sample(B, u_t), per_sample(t, u_t)
    x0_hat = (mu - A * u_t) / B
    eps_hat = (u_t - (1 - t) * x0_hat) / t
    sigma = log_sigma.exp()
    carried = torch.sqrt((A * t).square() + (1 - eta**2) * sigma.square()) - A * t
    return mu + carried * eps_hat + eta * sigma * noise


def alignment_weight(step: int, anneal_steps: int, initial: float = 1.0) -> float:
    """Weight of the teacher-alignment loss: cosine from `initial` at step 0 to 0 at `anneal_steps`, then 0."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return 0.0
    return initial * 0.5 * (1 + math.cos(math.pi * step / anneal_steps))


class NTM(PretrainedMixin, nn.Module):
    """Predictor (deep, non-causal, shared over steps) + transporter f_T (shallow, invertible), DESIGN NTM."""

    KIND = "ntm"

    def __init__(self, config: NTMConfig, predictor: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        if (predictor is None) == (config.predictor is None):
            raise ValueError(
                "give either config.predictor (the shared backbone) or a predictor module (NTM.from_velocity), not both or neither"
            )
        self.predictor = Predictor(config.predictor, config.data_variance) if predictor is None else predictor
        self.transporter = None if config.transporter is None else Transporter(config.transporter)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.predictor.encode_text(prompts)

    # --- times and the forward process -------------------------------------------------------

    def times(self, t_min: float | Tensor, steps: int | None = None) -> Tensor:
        """The K+1 times 1 -> t_min (float64): (K+1,) for a float t_min, (B, K+1) for per-sample t_min (B,).

        K is `steps`, by default the configured sampling step count; the predictor reads (t, s), so one
        model trained over several K (`step_counts`) steps on any of their grids.
        """
        k = self.config.steps if steps is None else steps
        if isinstance(t_min, Tensor):
            return torch.stack([time_grid(k, self.config.shift, float(t)) for t in t_min])
        return time_grid(k, self.config.shift, t_min)

    @staticmethod
    def _grid(times: Tensor, batch: int, device: torch.device) -> Tensor:
        """Times as (B, K+1) float64 on `device`; K = the number of steps, at least 1."""
        grid = times.to(torch.float64).reshape(-1, times.shape[-1]).expand(batch, -1)
        if grid.shape[1] < 2:
            raise ValueError(f"a trajectory needs at least 2 times (1 step), got {grid.shape[1]}")
        return grid.to(device)

    def forward_trajectory(self, x0: Tensor, times: Tensor, noises: Tensor) -> Tensor:
        """The forward Markov chain (K+1, B, ...): x_{t_0} = (1-t_0) x0 + t_0 noises[K], then x_t = a x_s + sig noises[i]."""
        grid = self._grid(times, x0.shape[0], x0.device)
        k = grid.shape[1] - 1
        t0 = per_sample(grid[:, k], x0)
        states = [(1 - t0) * x0 + t0 * noises[k]]
        for i in range(k - 1, -1, -1):
            a, sig = transition(grid[:, i + 1], grid[:, i])
            states.append(per_sample(a, x0) * states[-1] + per_sample(sig, x0) * noises[i])
        return torch.stack(states[::-1])

    # --- the transporter f_T ----------------------------------------------------------------

    def _transporter_tokens(self, tokens: Tensor) -> Tensor | None:
        return tokens if self.transporter is not None and self.transporter.config.vocab_size else None

    def transport(self, x: Tensor, t: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """u = f_T(x, t, c) and log|det df_T/dx| (B,); identity with log-det 0 without a transporter."""
        if self.transporter is None:
            return x, x.new_zeros(x.shape[0])
        return self.transporter(x, t, self._transporter_tokens(tokens))

    def untransport(self, u: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        """x = f_T^{-1}(u, t, c)."""
        if self.transporter is None:
            return u
        return self.transporter.inverse(u, t, self._transporter_tokens(tokens))

    # --- the exact trajectory likelihood ----------------------------------------------------

    def trajectory_log_prob(self, traj: Tensor, times: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """log p(traj | c) = log N(x_1; 0, I) + sum_k log p(x_{t_{k-1}} | x_{t_k}, c), exact (nats, float64).

        Returns the total (B,) and the K step terms (B, K), step i going from times[i] to times[i+1].
        Every f_T and every predictor call of the K steps runs as one batch of K*B.
        """
        b = traj.shape[1]
        grid = self._grid(times, b, traj.device)
        k = grid.shape[1] - 1
        if traj.shape[0] != k + 1:
            raise ValueError(f"{k + 1} times but {traj.shape[0]} states in the trajectory")
        if not bool((grid[:, -1] > 0).all()):
            raise ValueError("the trajectory likelihood needs t_min > 0 (at t_min = 0 the last step is a point mass)")
        gauss, logdet, _ = self._step_terms(traj, grid, tokens)
        per_step = gauss + logdet
        return gaussian_log_prob(traj[0], 0.0, 0.0) + per_step.sum(1), per_step

    def _step_terms(self, traj: Tensor, grid: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per step (B, K): log N(u_s; mu_P, sigma_P^2), log|det df_T/dx (x_s)| (float64), and mean sigma_P."""
        k, b = grid.shape[1] - 1, traj.shape[1]
        t_upper, t_lower = grid[:, :-1].T.reshape(-1), grid[:, 1:].T.reshape(-1)
        tokens_k = tokens.repeat(k, 1)
        u_lower, logdet = self.transport(traj[1:].flatten(0, 1), t_lower, tokens_k)
        # each state below t = 1 is the target of one step and the condition of the next: encode it once
        u_upper = torch.cat([traj[:1], u_lower.unflatten(0, (k, b))[:-1]]).flatten(0, 1)
        mu, log_sigma = self.predictor(u_upper, t_upper, t_lower, tokens_k)
        gauss = gaussian_log_prob(u_lower, mu, log_sigma).view(k, b).T
        sigma = log_sigma.detach().double().exp().flatten(1).mean(1).view(k, b).T
        return gauss, logdet.double().view(k, b).T, sigma

    @torch.no_grad()
    def step_diagnostics(self, traj: Tensor, times: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """Per step of a forward trajectory (B, K), in nats per dimension: the step's NLL
        -log p(x_s | x_t, c) / D, its log|det df_T| / D, and the mean predicted sigma_P."""
        grid = self._grid(times, traj.shape[1], traj.device)
        gauss, logdet, sigma = self._step_terms(traj, grid, tokens)
        dim = traj[0, 0].numel()
        return {"nll_per_dim": -(gauss + logdet) / dim, "logdet_per_dim": logdet / dim, "sigma_mean": sigma}

    def _draw(self, x0: Tensor, generator: torch.Generator, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample times (B, K+1) with t_min ~ U[t_min_low, t_min_high], and the forward chain from x0.

        A floor t_min_low > 0 bounds the last step's gradients: as t_min -> 0 the state x_{t_min} nears the
        data's discrete levels, its density and the gradient norm grow without bound (measured on tiny-long's
        ntm: gradient norm about 100 at t_min = 2e-4, 3 at 0.01).
        """
        k = self.config.steps if steps is None else steps
        c = self.config
        t_min = c.t_min_low + sample_t_min(x0.shape[0], generator, high=c.t_min_high - c.t_min_low)
        times = self.times(t_min, k)
        noises = torch.randn((k + 1, *x0.shape), generator=generator).to(x0)
        return times, self.forward_trajectory(x0, times, noises)

    def draw_steps(self, generator: torch.Generator) -> int:
        """The step count K of one training batch: uniform over `step_counts`, else the configured K."""
        ks = self.config.trained_steps
        return ks[int(torch.randint(len(ks), (1,), generator=generator))] if len(ks) > 1 else ks[0]

    def loss_terms(
        self, x0: Tensor, tokens: Tensor, generator: torch.Generator, steps: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """End-to-end loss (B,) and the per-step NLLs / D (B, K) of one drawn trajectory per sample.

        The loss is -log p(traj | c) / D scaled by K_0 / K (K_0 the configured step count), so batches
        of different K weigh alike; at K = K_0 it is the trajectory NLL / D in nats per dimension.
        """
        k = self.config.steps if steps is None else steps
        times, traj = self._draw(x0, generator, k)
        dim = x0[0].numel()
        log_p, per_step = self.trajectory_log_prob(traj, times, tokens)
        return -log_p / dim * (self.config.steps / k), -per_step / dim

    def loss(self, x0: Tensor, tokens: Tensor, generator: torch.Generator) -> Tensor:
        """Per-sample trajectory NLL / D in nats per dimension (B,), float64, in the configured mode.

        end_to_end: -log p(traj | c) / D, every step, gradients through every u = f_T(x) (`loss_terms`).
        pairwise: an unbiased one-step estimate of the same value, -(log N(x_1; 0, I) + K log p(x_s | x_t, c)) / D
        for one step drawn uniformly per sample, with u_t = f_T(x_t) held constant (no gradient), so
        f_T learns only from its targets u_s and their log-dets; one predictor pass per sample instead of K.
        """
        if self.config.mode == "end_to_end":
            return self.loss_terms(x0, tokens, generator)[0]
        times, traj = self._draw(x0, generator)
        dim = x0[0].numel()
        b, rows = x0.shape[0], torch.arange(x0.shape[0])
        step = torch.randint(self.config.steps, (b,), generator=generator)
        grid = self._grid(times, b, x0.device)
        t, s = grid[rows, step], grid[rows, step + 1]
        with torch.no_grad():
            # the state at t = 1 is its own u (f_T is never applied there)
            first = (step == 0).reshape(-1, *[1] * (x0.ndim - 1)).to(x0.device)
            u_t = torch.where(first, traj[0], self.transport(traj[step, rows], t, tokens)[0])
        u_s, logdet = self.transport(traj[step + 1, rows], s, tokens)
        mu, log_sigma = self.predictor(u_t, t, s, tokens)
        log_step = gaussian_log_prob(u_s, mu, log_sigma) + logdet.double()
        return -(gaussian_log_prob(traj[0], 0.0, 0.0) + self.config.steps * log_step) / dim

    # --- likelihood of data -------------------------------------------------------------------

    @torch.no_grad()
    def data_bound(
        self, x: Tensor, tokens: Tensor, samples: int = 16, seeds: list[int] | None = None, t_min: float | None = None
    ) -> DataBound:
        """Bounds on log p(x_{t_0} = x) through the forward chain q(x_{t_1..K} | x_{t_0}) (NTM; Burda et al., 2016).

        log w_j = log p(x_{t_0..K} | c) - log q(x_{t_1..K} | x_{t_0}) for `samples` chains drawn from q;
        ELBO = mean_j log w_j <= IWAE = logsumexp_j log w_j - log samples <= log p(x_{t_0}).
        Sample b's chains come from a generator seeded with seeds[b] (default b): batch-size independent.
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        b, k = x.shape[0], self.config.steps
        seeds = list(range(b)) if seeds is None else list(seeds)
        if len(seeds) != b:
            raise ValueError(f"need one seed per sample: {len(seeds)} seeds for {b} samples")
        t_min = self.config.t_min_eval if t_min is None else t_min
        grid = self.times(t_min)
        shape = (samples, k, *x.shape[1:])
        per_sample = [torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) for seed in seeds]
        noise = torch.stack(per_sample, dim=2).to(x.device)
        log_w = []
        for j in range(samples):
            traj, log_q = self.chain_from(x, grid, noise[j])
            log_p, _ = self.trajectory_log_prob(traj, grid, tokens)
            log_w.append(log_p - log_q)
        log_w = torch.stack(log_w)
        return DataBound(log_w.mean(0), log_w.logsumexp(0) - math.log(samples), samples, t_min)

    def chain_from(self, x: Tensor, grid: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """One draw of q(x_{t_1..K} | x_{t_0} = x) from noise (K, B, ...): the trajectory (K+1, B, ...) and log q (B,).

        noise[i] makes the state at grid[i] from the one at grid[i + 1] (the K + 1 times of `grid` are shared).
        """
        states, log_q = [x], x.new_zeros(x.shape[0], dtype=torch.float64)
        for i in range(len(grid) - 2, -1, -1):
            a, sig = transition(float(grid[i + 1]), float(grid[i]))
            mean = a * states[-1].double()
            # the model sees the state in its own dtype; score q on exactly that state
            nxt = (mean + sig * noise[i]).to(x.dtype)
            log_q = log_q + gaussian_log_prob(nxt, mean, math.log(sig))
            states.append(nxt)
        return torch.stack(states[::-1]), log_q

    # --- sampling -----------------------------------------------------------------------------

    def step(
        self, u_t: Tensor, t: Tensor, s: Tensor, tokens: Tensor, null_tokens: Tensor | None = None, guidance: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """(mu_P, log sigma_P) of one reverse step, classifier-free guided on the Gaussian (ntm.guidance)."""
        if guidance == 1:
            return self.predictor(u_t, t, s, tokens)
        if null_tokens is None:
            raise ValueError(f"guidance {guidance} != 1 needs null tokens")
        if guidance == 0:
            return self.predictor(u_t, t, s, null_tokens)
        mu, log_sigma = self.predictor(
            torch.cat([u_t, u_t]), torch.cat([t, t]), torch.cat([s, s]), torch.cat([tokens, null_tokens])
        )
        (mu_c, mu_u), (ls_c, ls_u) = mu.chunk(2), log_sigma.chunk(2)
        return guide_gaussian(mu_c, ls_c, mu_u, ls_u, guidance)

    def sample_u(
        self,
        noises: Tensor,
        tokens: Tensor,
        null_tokens: Tensor | None = None,
        guidance: float = 1.0,
        t_min: float | None = None,
        eta: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """The K reverse steps in u-space from noises (K+1, B, C, H, W): u_1 = noises[0], u_s = mu_P + sigma_P noises[i].

        K = len(noises) - 1 (the configured K, or another the model was trained over). With eta < 1 each
        step is `eta_step` instead (eta = 1 is this ancestral sampler). Returns every u-state (K+1, B, ...)
        and their times (B, K+1); no f_T inverse is taken.
        """
        k, b = noises.shape[0] - 1, noises.shape[1]
        trained = self.config.trained_steps
        if k != self.config.steps and k not in trained:
            raise ValueError(
                f"need K + 1 noise tensors (x_1 and one per step) for a step count K this model samples at "
                f"({sorted({self.config.steps, *trained})}), got {noises.shape[0]}"
            )
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1] (1: the ancestral sampler), got {eta}")
        grid = self._grid(self.times(self.config.t_min_eval if t_min is None else t_min, k), b, noises.device)
        states = [noises[0]]
        for i in range(k):
            t, s = grid[:, i], grid[:, i + 1]
            mu, log_sigma = self.step(states[-1], t, s, tokens, null_tokens, guidance)
            if eta == 1:
                states.append(mu + log_sigma.exp() * noises[i + 1])
            else:
                states.append(eta_step(states[-1], mu, log_sigma, t, s, eta, noises[i + 1]))
        return torch.stack(states), grid

    @torch.no_grad()
    def sample(
        self,
        noises: Tensor,
        tokens: Tensor,
        null_tokens: Tensor | None = None,
        guidance: float = 1.0,
        t_min: float | None = None,
        eta: float = 1.0,
    ) -> Tensor:
        """x_{t_0}: the K steps of `sample_u`, then one f_T^{-1} at t_0.

        The K steps stay in u-space (each step's target u_s is the next step's condition), so the
        autoregressive inverse of f_T runs once. A text-conditioned f_T is inverted with `tokens`.
        """
        states, grid = self.sample_u(noises, tokens, null_tokens, guidance, t_min, eta)
        return self.untransport(states[-1], grid[:, -1], tokens)

    # --- initialisation from a flow-matching teacher -------------------------------------------

    @classmethod
    def from_teacher(cls, teacher: FlowMatchingTeacher, config: NTMConfig | None = None) -> NTM:
        """NTM whose every step has the teacher's posterior mean mu = A u + B (u - t v), f_T = id.

        Its scale is the predictor's base sigma_0: C with `data_variance = None` (exactly the teacher's
        posterior step), else sqrt(C^2 + B^2 Var(x0 | x_t)) (`Predictor.base_log_sigma`). The latter keeps the
        expected initial loss finite as t_min -> 0, where C vanishes: C alone gives a last-step NLL that grows
        like 1 / t_min^2 and loss spikes early in training.
        """
        expected = predictor_config(teacher.net.config)
        config = NTMConfig(predictor=expected) if config is None else config
        if config.predictor != expected:
            raise ValueError(
                "config.predictor must be the teacher's backbone read as a predictor "
                "(ntm.predictor.predictor_config(teacher.net.config))"
            )
        model = cls(config).to(teacher.net.out.weight.device)
        model.predictor.load_state_dict(Predictor.from_teacher(teacher).state_dict())
        return model

    @classmethod
    def from_velocity(
        cls, velocity: nn.Module, config: NTMConfig, channels: int, encode_text: Callable[[list[str]], Tensor] | None = None
    ) -> NTM:
        """NTM whose every step is `velocity`'s posterior step (sigma = C), f_T = id: init from any velocity network.

        `velocity(x, t, tokens) -> v` follows this project's convention (`ntm.predictor.VelocityPredictor`); it
        is wrapped, not copied, and trains with the NTM. `config.predictor` must be None. Such a model trains,
        samples and scores like any NTM; on disk it is a state dict, reloaded by rebuilding it the same way.
        Align it to a frozen copy of the same network with `alignment_loss(copy, ...)`.
        """
        if config.predictor is not None or config.data_variance is not None:
            raise ValueError("from_velocity needs config.predictor = None and data_variance = None (sigma starts at C)")
        if config.transporter is not None and config.transporter.channels != channels:
            raise ValueError(f"the transporter has {config.transporter.channels} channels, the images {channels}")
        probe = next(velocity.parameters(), None)
        model = cls(config, VelocityPredictor(velocity, channels, encode_text=encode_text))
        return model if probe is None else model.to(probe.device)

    def alignment_loss(
        self, teacher: FlowMatchingTeacher, x0: Tensor, tokens: Tensor, generator: torch.Generator, steps: int | None = None,
        normalised: bool = True, one_step: bool = False,
    ) -> Tensor:
        """Per-sample mean over steps and dimensions of (mu_P - mu_teacher)^2 / (2 sigma_P^2) (DESIGN, NTM: init from flow matching).

        mu_teacher = A u_t + B (u_t - t v_teacher(u_t)) is the teacher's posterior step. The frozen teacher
        reads the same u_t as the predictor; u_t is held constant, so only the predictor's mean is pulled to
        the teacher. Dividing by the step's own variance (held constant) puts the term on the scale of the
        NLL's (u_s - mu_P)^2 / (2 sigma_P^2): plain squared error is orders of magnitude smaller there, where
        sigma_P is small, and does not act. `normalised = False` gives the plain mean of (mu_P - mu_teacher)^2
        (for ablations). `one_step`: each sample scores one step drawn uniformly, an unbiased estimate of the
        same mean at 1/K of the teacher and predictor passes. Weight it with `alignment_weight`.
        """
        times, traj = self._draw(x0, generator, steps)
        b = x0.shape[0]
        k = times.shape[-1] - 1
        grid = self._grid(times, b, x0.device)
        if one_step:
            rows, step = torch.arange(b), torch.randint(k, (b,), generator=generator)
            t, s, tokens_k, states = grid[rows, step], grid[rows, step + 1], tokens, traj[step, rows]
            above = (step > 0).to(x0.device)
        else:
            t, s, tokens_k = grid[:, :-1].T.reshape(-1), grid[:, 1:].T.reshape(-1), tokens.repeat(k, 1)
            states, above = traj[:-1].flatten(0, 1), t < 1
        with torch.no_grad():
            # u_1 = x_1; every state below t = 1 goes through f_T
            u_t = states.clone()
            if bool(above.any()):
                u_t[above] = self.transport(states[above], t[above], tokens_k[above])[0]
            target, _, _ = posterior_mean(u_t, teacher(u_t, t, tokens_k), t, s)
        mu, log_sigma = self.predictor(u_t, t, s, tokens_k)
        per = (mu - target).square() if not normalised else 0.5 * ((mu - target) * torch.exp(-log_sigma.detach())).square()
        per = per.flatten(1).mean(1)
        return per if one_step else per.view(k, b).mean(0)

    # --- weights on disk ----------------------------------------------------------------------

    def to_config(self) -> dict:
        return {"ntm": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> NTM:
        parsed = NTMConfig.from_dict(config["ntm"])
        if parsed.predictor is None:
            raise ValueError(
                "this NTM wraps a foreign velocity network, which a config cannot rebuild: build it again with "
                "NTM.from_velocity(network, config) and load its state dict"
            )
        return cls(parsed)
