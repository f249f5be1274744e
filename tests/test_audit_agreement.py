"""Estimator agreement: the IWAE ladder of a real (briefly trained) NTM, ODE settings on a closed form, float64."""

import math

import numpy as np
import pytest
import torch

from baselines.base import BuildContext
from baselines.ntm import train_ntm
from benchmarks.audit.agreement import IwaeLadder, PrecisionCheck, iwae_ladder, ode_grid, precision_check
from benchmarks.suites.base import dequantise
from benchmarks.worlds.gaussian import GaussianWorld
from ntm.model import NTM


@pytest.fixture(scope="module")
def trained_ntm(one_thread, tmp_path_factory):
    """An NTM trained 30 steps on the 8 px gaussian world (about 2 s), with eight held-out images."""
    world = GaussianWorld()
    backbone = {"size": "tiny", "patch": 4, "transporter": {"width": 32, "blocks": 2, "spline_bins": 8}}
    ctx = BuildContext(world, torch.device("cpu"), tmp_path_factory.mktemp("ckpt"), backbone,
                       {"ntm": {"steps": 30, "batch_size": 8, "warmup": 5}}, progress=False)
    model = NTM.from_pretrained(train_ntm(ctx, transporter=True)).eval()
    batch = world.batch(range(8), "test")
    seeds = list(range(100, 108))
    return model, dequantise(batch.images, seeds), model.encode_text(batch.captions), seeds


def test_iwae_tightens_monotonically_on_a_trained_ntm(trained_ntm):
    model, x, tokens, seeds = trained_ntm
    ladder = iwae_ladder(model, "ntm", x, tokens, seeds, (16, 1, 4))
    assert ladder.samples == (1, 4, 16)
    np.testing.assert_allclose(ladder.iwae_nll[0], ladder.elbo_nll[0], rtol=0, atol=1e-9)  # IWAE_1 is the ELBO
    assert (ladder.elbo_nll >= ladder.iwae_nll - 1e-9).all()  # Jensen, per image, for the same chains
    assert ladder.monotone
    changes = [change for _, _, change, _, _ in ladder.steps()]
    assert all(c < 0 for c in changes)
    rows = ladder.rows()
    checks = ["ELBO - IWAE_1", "ELBO - IWAE_4", "ELBO - IWAE_16", "IWAE_4 - IWAE_1", "IWAE_16 - IWAE_4"]
    assert [r["check"] for r in rows] == checks
    assert rows[0]["value"] == pytest.approx(0, abs=1e-12) and rows[1]["value"] < rows[2]["value"]
    assert {r["verdict"] for r in rows[3:]} == {"tightens with K"}


def test_a_bound_that_rises_with_k_is_flagged():
    rng = np.random.default_rng(0)
    base = rng.normal(500, 10, size=12)
    nll = np.stack([base, base + 5 + rng.normal(0, 0.1, 12)])  # K = 4 five nats worse than K = 1
    ladder = IwaeLadder("broken", (1, 4), nll, nll + 1, dim=192)
    assert not ladder.monotone and ladder.rows()[-1]["verdict"] == "bound rises with K: bug"


def test_float64_and_float32_trajectory_nll_agree(trained_ntm):
    model, x, tokens, seeds = trained_ntm
    check = precision_check(model, "ntm", x, tokens, seeds)
    assert np.isfinite(check.nll64).all() and check.max_difference_bpd < 1e-5
    assert check.rows()[0]["verdict"] == "exact: precision-stable"
    loose = PrecisionCheck("m", np.zeros(3), np.array([0.0, 0.0, 192 * math.log(2) * 0.01]), 192, 1e-3)
    assert loose.rows()[0]["verdict"] == "exact: float32 rounding matters"


def linear_velocity(rate: float):
    """v(x, t) = rate * x: x_1 = e^rate x_0 and div v = rate * D, so log p_0(x) = log N(e^rate x; 0, I) + rate D."""
    return lambda x, t, cond: rate * x


def test_ode_grid_on_a_closed_form():
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0)).double()
    tokens = torch.zeros(5, 1)
    grid = ode_grid(linear_velocity(0.5), "linear", x, tokens, range(5), steps=(4, 8, 16), probes=(1, 3))
    d = 48
    exact = 0.5 * (math.exp(0.5) * x).reshape(5, -1).square().sum(1) + 0.5 * d * math.log(2 * math.pi) - 0.5 * d
    assert sorted(grid.nll) == [(4, 1), (8, 1), (16, 1), (16, 3)]
    for nll in grid.nll.values():
        np.testing.assert_allclose(nll, exact.numpy(), rtol=1e-5)  # Rademacher probes trace c I exactly
    rows = {r["check"]: r for r in grid.rows()}
    assert rows["ODE 4 - 16 steps"]["verdict"] == rows["ODE 8 - 16 steps"]["verdict"] == "estimate: converged"
    assert rows["ODE 3 - 1 probes"]["verdict"] == "estimate: probe-consistent"
    # a stiff field: one RK4 step misses e^8 by a factor of 10, so the NLL moves with the step count
    stiff = ode_grid(linear_velocity(8.0), "stiff", x, tokens, range(5), steps=(1, 16), probes=(1,))
    ((steps, change, _),) = stiff.step_errors()
    assert steps == 1 and abs(change) > 1 and stiff.rows()[-1]["verdict"] == "estimate: solver error too large"
