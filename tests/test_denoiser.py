"""NTM self-distillation: Tweedie target against Gaussian conditioning, the exact score, the fast sampler, checkpoints."""

import json

import pytest
import torch
from torch import Tensor, nn

from ntm.denoiser import (
    Denoiser,
    distillation_loss,
    fast_sample,
    trajectory_covariance,
    trajectory_score,
    tweedie_x0,
)
from ntm.model import NTM
from ntm.schedule import time_grid
from tests.test_ntm_model import PROMPTS, make_ntm, noises_for, randomise

pytestmark = pytest.mark.usefixtures("one_thread")

M, V = 0.3, 0.7  # the Gaussian data x0 ~ N(M, V I)




def chain_covariance(times: Tensor) -> Tensor:
    """Cov(traj | x0) per pixel, built as L L^T from the chain's independent noises (not from the min/max formula)."""
    n = times.shape[0]
    L = torch.zeros(n, n, dtype=torch.float64)
    L[n - 1, n - 1] = times[-1]
    for k in range(n - 2, -1, -1):
        t, s = times[k], times[k + 1]
        a = (1 - t) / (1 - s)
        L[k] = a * L[k + 1]
        L[k, k] = (t**2 - a**2 * s**2).sqrt()
    return L @ L.T


def gaussian_trajectories(times: Tensor, b: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Trajectories (K+1, b, 3, 4, 4) of Gaussian data, their true score, and E[x0 | traj] by Gaussian conditioning."""
    g = torch.Generator().manual_seed(seed)
    r = 1 - times
    cov = V * torch.outer(r, r) + chain_covariance(times)
    z = torch.randn(b, 3, 4, 4, times.shape[0], generator=g, dtype=torch.float64)
    y = r * M + z @ torch.linalg.cholesky(cov).T  # (..., K+1): one trajectory per pixel
    resid = torch.linalg.solve(cov, (y - r * M).unsqueeze(-1)).squeeze(-1)
    posterior_mean = M + V * (resid * r).sum(-1)
    return y.movedim(-1, 0), (-resid).movedim(-1, 0), posterior_mean


class GaussianReverse(nn.Module):
    """The true reverse step p(x_s | x_t) for x0 ~ N(M, V), by conditioning the joint of (x_s, x_t); a predictor stand-in."""

    def forward(self, u: Tensor, t: Tensor, s: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        t, s = t.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)
        var_t, var_s = (1 - t) ** 2 * V + t**2, (1 - s) ** 2 * V + s**2
        cov = (1 - s) * (1 - t) * V + s**2 * (1 - t) / (1 - s)
        mean = (1 - s) * M + cov / var_t * (u - (1 - t) * M)
        return mean, 0.5 * (var_s - cov**2 / var_t).log()


# --- the Tweedie target ----------------------------------------------------------------------------


@pytest.mark.parametrize("shift,t_min", [(1.0, 0.02), (3.0, 0.05), (3.0, 0.001)])
def test_trajectory_covariance_is_the_forward_chains(shift, t_min):
    times = time_grid(4, shift, t_min)
    assert torch.allclose(trajectory_covariance(times), chain_covariance(times), rtol=0, atol=1e-15)
    batched = trajectory_covariance(torch.stack([times, time_grid(4, 1.0, 0.03)]))
    assert batched.shape == (2, 5, 5) and torch.equal(batched[0], trajectory_covariance(times))


@pytest.mark.parametrize("shift,t_min", [(1.0, 0.02), (3.0, 0.05), (3.0, 0.001)])
def test_tweedie_target_from_the_true_score_is_the_posterior_mean(shift, t_min):
    """Closed form (issue 3): with the true trajectory density of N(M, V) data, (T2) is E[x0 | traj]."""
    times = time_grid(4, shift, t_min)
    traj, score, expected = gaussian_trajectories(times, b=5)
    got = tweedie_x0(traj, score, times)
    assert got.shape == (5, 3, 4, 4) and got.dtype == torch.float64
    assert (got - expected).abs().max() < 1e-13
    # every row of (T1) with tau < 1 gives the same estimate for the true density
    S, r = trajectory_covariance(times), 1 - times
    rows = traj + torch.einsum("jk,k...->j...", S, score)
    for k in range(1, 5):
        assert (rows[k] / r[k] - expected).abs().max() < 1e-12
    assert rows[0].abs().max() < 1e-12


def test_tweedie_target_from_an_ntm_with_the_true_reverse_steps():
    """End to end: trajectory_score of an NTM (f_T = id) whose steps are the true reverse posteriors, then (T2)."""
    model = make_ntm(transporter=False).double()
    model.predictor = GaussianReverse()
    grids = torch.stack([time_grid(4, 3.0, 0.02), time_grid(4, 3.0, 0.04), time_grid(4, 3.0, 0.01)])
    tokens = torch.ones(3, 2, dtype=torch.long)
    # one sample per time grid, so per-sample times are exercised
    drawn = [gaussian_trajectories(grid, b=1, seed=i) for i, grid in enumerate(grids)]
    traj = torch.cat([d[0] for d in drawn], 1)
    expected = torch.cat([d[2] for d in drawn])
    log_p, score = trajectory_score(model, traj, grids, tokens)
    assert (tweedie_x0(traj, score, grids) - expected).abs().max() < 1e-13
    r = 1 - grids
    for i in range(3):
        cov = V * torch.outer(r[i], r[i]) + chain_covariance(grids[i])
        true = torch.distributions.MultivariateNormal(r[i] * M, cov).log_prob(traj[:, i].movedim(0, -1)).sum()
        assert abs(log_p[i] - true) < 1e-9


# --- the exact score -------------------------------------------------------------------------------


def test_trajectory_score_is_the_gradient_of_the_exact_log_likelihood():
    model = make_ntm(transporter=True)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    times = model.times(torch.tensor([0.01, 0.03, 0.05], dtype=torch.float64))
    traj = model.forward_trajectory(x0, times, torch.randn(5, 3, 3, 8, 8, generator=g, dtype=torch.float64))
    tokens = model.encode_text(PROMPTS[:3])
    log_p, score = trajectory_score(model, traj, times, tokens)
    assert torch.equal(log_p, model.trajectory_log_prob(traj, times, tokens)[0])
    assert score.shape == traj.shape and score.dtype == torch.float64
    assert all(p.grad is None for p in model.parameters())
    assert (score[1:].abs().flatten(1).sum(1) > 0).all()  # f_T and the predictor see every state
    with torch.no_grad():
        for i in range(3):
            direction = torch.randn(traj[:, i].shape, generator=g, dtype=torch.float64)
            h = 1e-5

            def f(eps: float) -> Tensor:
                moved = traj.clone()
                moved[:, i] += eps * direction
                return model.trajectory_log_prob(moved, times, tokens)[0][i]

            finite = (f(h) - f(-h)) / (2 * h)
            exact = (score[:, i] * direction).sum()
            assert abs(finite - exact) < 1e-8 * max(1.0, abs(float(exact))), (i, finite, exact)
            # the other samples' gradients do not leak into sample i
            moved = traj.clone()
            moved[:, i] += h * direction
            others = [j for j in range(3) if j != i]
            assert (model.trajectory_log_prob(moved, times, tokens)[0][others] - log_p[others]).abs().max() < 1e-9


# --- the denoiser and the fast sampler ----------------------------------------------------------------


def make_denoiser(model: NTM, seed: int = 1) -> Denoiser:
    torch.manual_seed(seed)
    denoiser = Denoiser.for_model(model, depth=1)
    randomise(denoiser)
    return denoiser.to(next(model.parameters()).dtype).eval()


class NoInverse(nn.Module):
    def forward(self, *args):
        raise AssertionError("fast_sample must not invert f_T")


def test_fast_sample_is_the_u_loop_then_one_denoiser_pass_without_the_inverse():
    model = make_ntm(transporter=True)
    denoiser = make_denoiser(model)
    noises, tokens, null = noises_for([1, 2, 3]).double(), model.encode_text(PROMPTS[:3]), model.encode_text([""] * 3)
    t0 = torch.full((3,), 0.03, dtype=torch.float64)
    # NTM.sample's own loop, then f_T back to u_{t_0}: the state fast_sample must hand the denoiser
    with torch.no_grad():
        u0, _ = model.transport(model.sample(noises, tokens, null, 2.0, t_min=0.03), t0, tokens)
        expected = denoiser(u0, t0, tokens)
    model.transporter.inverse = NoInverse()
    got = fast_sample(model, denoiser, noises, tokens, null, guidance=2.0, t_min=0.03)
    assert got.shape == (3, 3, 8, 8) and got.dtype == torch.float64
    assert (got - expected).abs().max() < 1e-9
    assert not torch.equal(got, u0)


def test_fast_sample_does_not_depend_on_batch_size():
    model = make_ntm(transporter=True).float()
    denoiser = make_denoiser(model)
    seeds = [11, 5, 7, 2]
    tokens, null = model.encode_text(PROMPTS), model.encode_text([""] * 4)
    whole = fast_sample(model, denoiser, noises_for(seeds), tokens, null, 2.0)
    parts = torch.cat([fast_sample(model, denoiser, noises_for(seeds[i : i + 2]), tokens[i : i + 2], null[i : i + 2], 2.0) for i in (0, 2)])
    assert whole.shape == (4, 3, 8, 8) and whole.dtype == torch.float32
    assert (whole - parts).abs().max() < 1e-5
    with pytest.raises(ValueError, match="K \\+ 1"):
        fast_sample(model, denoiser, noises_for(seeds)[:4], tokens)


def test_untrained_denoiser_returns_the_samplers_last_u_state():
    model = make_ntm(transporter=True)
    denoiser = Denoiser.for_model(model).double()
    noises, tokens = noises_for([4, 9]).double(), model.encode_text(PROMPTS[:2])
    with torch.no_grad():
        states, _ = model.sample_u(noises, tokens)
    assert torch.equal(fast_sample(model, denoiser, noises, tokens), states[-1])


def test_denoiser_must_match_the_model():
    model = make_ntm(transporter=False)
    other = Denoiser.for_model(model, vocabulary=("blue",))
    with pytest.raises(ValueError, match="vocabulary"):
        fast_sample(model, other, noises_for([0]).double(), model.encode_text(PROMPTS[:1]))
    with pytest.raises(ValueError, match="n_times"):
        Denoiser(model.config.predictor)


# --- the distillation loss ---------------------------------------------------------------------------


def test_distillation_loss_regresses_onto_the_tweedie_target_of_the_models_own_samples():
    model = make_ntm(transporter=True)
    denoiser = make_denoiser(model)
    tokens, null = model.encode_text(PROMPTS[:2]), model.encode_text([""] * 2)
    loss = distillation_loss(denoiser, model, tokens, torch.Generator().manual_seed(5), null, 2.0, t_min=0.03)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.parameters())
    # independently: sample in x-space step by step, score it, and regress
    noises = torch.randn(5, 2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).double()
    times = model.times(0.03)
    x, traj = noises[0], [noises[0]]
    with torch.no_grad():
        for i in range(4):
            t, s = times[i].expand(2), times[i + 1].expand(2)
            u_t = x if i == 0 else model.transport(x, t, tokens)[0]  # u_1 = x_1
            mu, log_sigma = model.step(u_t, t, s, tokens, null, 2.0)
            x = model.untransport(mu + log_sigma.exp() * noises[i + 1], s, tokens)
            traj.append(x)
    traj = torch.stack(traj)
    _, score = trajectory_score(model, traj, times, tokens)
    with torch.no_grad():
        u0, _ = model.transport(traj[-1], times[-1].expand(2), tokens)
        pred = denoiser(u0, times[-1].expand(2), tokens)
    expected = (pred - tweedie_x0(traj, score, times)).square().flatten(1).mean(1)
    assert torch.allclose(loss.detach(), expected, rtol=1e-8, atol=0)


# --- checkpoints ---------------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path):
    model = make_ntm(transporter=False).float()
    denoiser = make_denoiser(model)
    denoiser.save_pretrained(tmp_path / "den", note="x")
    loaded = Denoiser.from_pretrained(tmp_path / "den")
    assert loaded.config == denoiser.config
    u, t, tokens = torch.randn(2, 3, 8, 8), torch.tensor([0.02, 0.04]), model.encode_text(PROMPTS[:2])
    with torch.no_grad():
        assert torch.equal(loaded(u, t, tokens), denoiser(u, t, tokens))
    config = json.loads((tmp_path / "den" / "config.json").read_text())
    assert config["kind"] == "ntm_denoiser" and config["metadata"] == {"note": "x"}
    model.save_pretrained(tmp_path / "ntm")
    with pytest.raises(ValueError, match="ntm_denoiser"):
        Denoiser.from_pretrained(tmp_path / "ntm")
