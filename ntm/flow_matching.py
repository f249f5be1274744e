"""Rectified flow (Liu et al., 2022; Lipman et al., 2022): loss, guided samplers, ODE likelihood.

Convention: x_t = (1 - t) x0 + t eps with t = 1 noise and t = 0 data; the velocity network
v(x, t, cond) targets eps - x0, and dx/dt = v. Samplers and the likelihood integrate in float64
and call the network in the dtype of their input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor, Tensor], Tensor]
"""v(x: (B, C, H, W), t: (B,), cond: (B, ...)) -> (B, C, H, W); cond is opaque, batch first."""

StepCallback = Callable[[int, float, Tensor], None]
"""callback(i, t, x): called after step i with the state x at time t = times[i + 1]."""

TimeDistribution = Literal["logit_normal", "uniform"]
OdeSolver = Literal["euler", "heun", "rk4"]
TraceEstimator = Literal["auto", "exact", "hutchinson"]


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample times (B,) to broadcast against `like` (B, ...)."""
    return t.to(like.dtype).reshape(-1, *[1] * (like.ndim - 1))


def sample_training_times(
    n: int,
    generator: torch.Generator,
    kind: TimeDistribution = "logit_normal",
    *,
    loc: float = 0.0,
    scale: float = 1.0,
) -> Tensor:
    """n training times in (0, 1): logit-normal t = sigmoid(loc + scale z) (Esser et al., 2024) or uniform."""
    if kind == "logit_normal":
        z = torch.randn(n, generator=generator, device=generator.device)
        return torch.sigmoid(loc + scale * z)
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=generator.device)
    raise ValueError(f"kind must be 'logit_normal' or 'uniform', got {kind!r}")


def flow_matching_loss(velocity: Velocity, x0: Tensor, cond: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Conditional flow-matching loss, mean of (v(x_t, t) - (eps - x0))^2 per sample (Lipman et al., 2022)."""
    t_x = _per_sample(t, x0)
    x_t = (1 - t_x) * x0 + t_x * noise
    error = velocity(x_t, t.to(x0.dtype), cond) - (noise - x0)
    return error.square().flatten(1).mean(1)


def guided_velocity(
    velocity: Velocity, x: Tensor, t: Tensor, cond: Tensor, null_cond: Tensor | None, guidance: float
) -> Tensor:
    """Classifier-free guidance v_u + w (v_c - v_u) (Ho & Salimans, 2022), batched over [cond; null]."""
    if guidance == 1:
        return velocity(x, t, cond)
    if null_cond is None:
        raise ValueError(f"guidance {guidance} != 1 needs a null condition")
    if guidance == 0:
        return velocity(x, t, null_cond)
    v_c, v_u = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null_cond])).chunk(2)
    return v_u + guidance * (v_c - v_u)


def _evals_per_call(guidance: float) -> int:
    """Network evaluations per guided velocity: 2 when CFG doubles the batch, else 1."""
    return 1 if guidance in (0, 1) else 2


def nfe(solver: Literal["euler", "heun"], steps: int, guidance: float = 1.0, *, t_min: float = 0.0) -> int:
    """Network evaluations of `sample_euler` / `sample_heun` over `steps` steps ending at t_min.

    Convention: one evaluation is one network call per sample; classifier-free guidance runs the
    conditional and unconditional branches as one doubled batch and counts as 2 (w = 1 and w = 0
    need one branch only and count as 1). Heun skips its correction on a final step to t = 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if solver == "euler":
        calls = steps
    elif solver == "heun":
        calls = 2 * steps - (1 if t_min == 0 else 0)
    else:
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    return calls * _evals_per_call(guidance)


def _check_times(times: Tensor) -> list[float]:
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times must be a 1-D grid of at least 2 times, got shape {tuple(times.shape)}")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must be strictly decreasing (from noise, t = 1, towards data, t = 0)")
    return times.tolist()


def _sample(
    velocity: Velocity,
    noise: Tensor,
    cond: Tensor,
    null_cond: Tensor | None,
    times: Tensor,
    guidance: float,
    callback: StepCallback | None,
    second_order: bool,
) -> Tensor:
    """Euler or Heun integration of dx/dt = v from times[0] to times[-1] (Karras et al., 2022, Alg. 1)."""
    grid = _check_times(times)
    dtype, batch = noise.dtype, noise.shape[0]

    def v(x: Tensor, t: float) -> Tensor:
        t_vec = torch.full((batch,), t, dtype=dtype, device=noise.device)
        return guided_velocity(velocity, x.to(dtype), t_vec, cond, null_cond, guidance).double()

    x = noise.double()
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        # Euler step
        d_cur = v(x, t_cur)
        x_next = x + (t_next - t_cur) * d_cur
        # second-order correction, skipped on a final step to t = 0 as in EDM
        if second_order and t_next > 0:
            x_next = x + (t_next - t_cur) * 0.5 * (d_cur + v(x_next, t_next))
        x = x_next
        if callback is not None:
            callback(i, t_next, x.to(dtype))
    return x.to(dtype)


def sample_euler(
    velocity: Velocity,
    noise: Tensor,
    cond: Tensor,
    null_cond: Tensor | None,
    times: Tensor,
    guidance: float = 1.0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler sampler of the probability-flow ODE from noise at times[0] to x at times[-1]."""
    return _sample(velocity, noise, cond, null_cond, times, guidance, callback, second_order=False)


def sample_heun(
    velocity: Velocity,
    noise: Tensor,
    cond: Tensor,
    null_cond: Tensor | None,
    times: Tensor,
    guidance: float = 1.0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Heun's 2nd-order sampler (Karras et al., 2022, Alg. 1) from noise at times[0] to x at times[-1]."""
    return _sample(velocity, noise, cond, null_cond, times, guidance, callback, second_order=True)


# Butcher tableaus (a, b, c) of the explicit Runge-Kutta methods `ode_log_likelihood` offers.
_TABLEAUS: dict[str, tuple[list[list[float]], list[float], list[float]]] = {
    "euler": ([[]], [1.0], [0.0]),
    "heun": ([[], [1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}


@dataclass(frozen=True)
class OdeLikelihood:
    """log p_0(x0) per sample in nats (float64), its Monte-Carlo standard error, and the settings.

    `stderr_nats` is the spread of the Hutchinson estimate over its probes (None for the exact
    trace or a single probe); it does not include the ODE solver's discretisation error.
    """

    logp_nats: Tensor
    stderr_nats: Tensor | None
    settings: dict[str, Any]


def _basis_chunks(
    batch: int, dim: int, chunk: int, dtype: torch.dtype, device: torch.device
) -> Iterator[Tensor]:
    """Basis vectors e_j repeated over the batch, in chunks (k, B, D): the exact trace's directions."""
    for start in range(0, dim, chunk):
        k = min(chunk, dim - start)
        dirs = torch.zeros(k, batch, dim, dtype=dtype, device=device)
        dirs[torch.arange(k), :, start + torch.arange(k)] = 1
        yield dirs


def _rademacher_probes(seeds: Sequence[int], probes: int, dim: int) -> Tensor:
    """Rademacher probes (P, B, D), sample b's drawn from its own CPU generator seeded with seeds[b]."""
    per_sample = [
        torch.randint(0, 2, (probes, dim), generator=torch.Generator().manual_seed(seed)) for seed in seeds
    ]
    return torch.stack(per_sample, 1).double() * 2 - 1


def ode_log_likelihood(
    velocity: Velocity,
    x0: Tensor,
    cond: Tensor,
    *,
    steps: int = 16,
    solver: OdeSolver = "rk4",
    trace: TraceEstimator = "auto",
    probes: int = 1,
    seeds: Sequence[int] | None = None,
    exact_max_dim: int = 256,
    chunk: int = 64,
) -> OdeLikelihood:
    """log p_0(x0) = log N(x_1; 0, I) + int_0^1 div v(x_t, t) dt along the probability-flow ODE.

    Instantaneous change of variables (Chen et al., 2018, Thm. 1) integrated jointly with x from
    t = 0 to 1 by a fixed-step Runge-Kutta method. The divergence is exact (D vector-Jacobian
    products per evaluation, `chunk` at a time) or Hutchinson's estimate with Rademacher probes
    held fixed along the trajectory (Grathwohl et al., 2019), `probes` of them, sample b's drawn
    from seeds[b] (default b), so the result does not depend on batch size or order.
    `trace="auto"` is exact when D = C*H*W <= exact_max_dim.
    """
    batch, dim = x0.shape[0], x0[0].numel()
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if solver not in _TABLEAUS:
        raise ValueError(f"solver must be one of {sorted(_TABLEAUS)}, got {solver!r}")
    if trace not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"trace must be 'auto', 'exact' or 'hutchinson', got {trace!r}")
    if probes < 1 or chunk < 1:
        raise ValueError(f"probes and chunk must be >= 1, got probes={probes}, chunk={chunk}")
    seeds = list(range(batch)) if seeds is None else list(seeds)
    if len(seeds) != batch:
        raise ValueError(f"need one seed per sample: {len(seeds)} seeds for {batch} samples")
    exact = trace == "exact" or (trace == "auto" and dim <= exact_max_dim)
    a, b, c = _TABLEAUS[solver]
    dtype, device = x0.dtype, x0.device

    # leave any caller's inference mode so that the graph for the vector-Jacobian products can be built
    with torch.inference_mode(False):
        cond = cond.clone()
        probe_dirs = None if exact else _rademacher_probes(seeds, probes, dim).to(device=device, dtype=dtype)

        def derivatives(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
            """dx/dt = v (B, D) and the divergence rows (1 exact, or P Hutchinson, B), both float64."""
            t_vec = torch.full((batch,), t, dtype=dtype, device=device)
            with torch.enable_grad():
                x_in = x.detach().to(dtype).reshape(x0.shape).requires_grad_(True)
                v = velocity(x_in, t_vec, cond)
                chunks = _basis_chunks(batch, dim, chunk, dtype, device) if exact else probe_dirs.split(chunk)
                n_chunks = math.ceil((dim if exact else probes) / chunk)
                quads = []
                for i, dirs in enumerate(chunks):
                    # rows of dirs^T J at once, then their inner products with dirs: e^T J e per direction
                    (vjp,) = torch.autograd.grad(
                        v,
                        x_in,
                        grad_outputs=dirs.reshape(-1, *x0.shape),
                        retain_graph=i < n_chunks - 1,
                        is_grads_batched=True,
                        materialize_grads=True,
                    )
                    quads.append((vjp.reshape(dirs.shape).double() * dirs.double()).sum(-1))
            quad = torch.cat(quads)
            div = quad.sum(0, keepdim=True) if exact else quad
            return v.detach().double().reshape(batch, dim), div

        x = x0.detach().to(torch.float64, copy=True).reshape(batch, dim)
        integral = torch.zeros(1 if exact else probes, batch, dtype=torch.float64, device=device)
        h = 1.0 / steps
        for n in range(steps):
            t = n * h
            # one explicit Runge-Kutta step on the augmented state (x, int div v dt)
            ks: list[tuple[Tensor, Tensor]] = []
            for a_row, c_i in zip(a, c):
                x_stage = sum((h * a_ij * k[0] for a_ij, k in zip(a_row, ks)), x)
                ks.append(derivatives(x_stage, t + c_i * h))
            x = x + h * sum(b_i * k[0] for b_i, k in zip(b, ks))
            integral = integral + h * sum(b_i * k[1] for b_i, k in zip(b, ks))

        log_prior = -0.5 * x.square().sum(1) - 0.5 * dim * math.log(2 * math.pi)
        per_probe = log_prior + integral
        logp = per_probe.mean(0)
        stderr = None if exact or probes < 2 else per_probe.std(0) / math.sqrt(probes)

    evals = steps * len(b)
    settings = {
        "estimator": "ode",
        "solver": solver,
        "steps": steps,
        "trace": "exact" if exact else "hutchinson",
        "probes": None if exact else probes,
        "probe_distribution": None if exact else "rademacher",
        "nfe": evals,
        "vjps": evals * (dim if exact else probes),
    }
    return OdeLikelihood(logp_nats=logp, stderr_nats=stderr, settings=settings)
