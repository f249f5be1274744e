"""Truth gap: the exact oracle scores 0 and passes; a broken copy (a dropped Jacobian) is flagged; noise is not."""

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from baselines.base import LikelihoodResult, to_model_space
from benchmarks.audit.oracle import OracleGenerator, pixel_bins
from benchmarks.audit.truth_gap import truth_gap
from benchmarks.worlds.gaussian import GaussianWorld

WORLD = GaussianWorld(resolution=4)


class DroppedJacobian(OracleGenerator):
    """The oracle's density computed for y = (x + 1) / 2 in [0, 1] and reported as one of x: log 2 per dim too low."""

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        exact = super().log_likelihood(x, prompts, seeds)
        return LikelihoodResult(exact.nll_nats - x[0].numel() * math.log(2), "iwae", "data", {})


class NoisyEstimate(OracleGenerator):
    """The exact NLL plus zero-mean noise of 5 nats, like an unbiased Monte-Carlo estimate."""

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        exact = super().log_likelihood(x, prompts, seeds)
        draws = [torch.randn((), generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
        noise = torch.stack(draws)
        return LikelihoodResult(exact.nll_nats + 5 * noise, "ode", "data", {})


def test_pixel_bins_invert_uniform_dequantisation():
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
    for u in (0.0, 0.5, 0.999):
        x = to_model_space(images, torch.full(images.shape, u, dtype=torch.float64))
        assert np.array_equal(pixel_bins(x), images)


@pytest.mark.parametrize("conditional", [True, False])
def test_oracle_scores_zero_gap_and_is_not_flagged(conditional):
    gap = truth_gap(OracleGenerator(WORLD), WORLD, images=24, seed=0, conditional=conditional)
    assert abs(gap.gap_nats) < 1e-6 and gap.stderr_nats < 1e-6
    assert not gap.below_truth and gap.verdict == "exact"
    # the truth is the world's entropy estimate on the same held-out draws
    assert gap.true_nll_nats == pytest.approx(WORLD.entropy(24, conditional=conditional)[0])
    (row,) = gap.rows()
    assert row["part"] == "truth gap" and row["verdict"] == "exact" and abs(row["value"]) < 1e-8


def test_a_dropped_jacobian_is_flagged_below_truth():
    gap = truth_gap(DroppedJacobian(WORLD), WORLD, images=24, seed=0)
    assert gap.gap_nats == pytest.approx(-WORLD.dim * math.log(2))
    assert gap.below_truth and gap.kind == "upper bound" and gap.verdict == "below truth: bug"
    assert gap.rows()[0]["value"] == pytest.approx(-1.0)  # exactly one bit per dimension


def test_unbiased_noise_is_within_error_and_a_biased_estimate_is_named_so():
    noisy = truth_gap(NoisyEstimate(WORLD), WORLD, images=24, seed=0)
    assert noisy.stderr_nats == pytest.approx(5 / math.sqrt(24), rel=0.4)
    assert abs(noisy.gap_nats) < 3 * noisy.stderr_nats and not noisy.below_truth and noisy.verdict == "estimate"

    class Biased(NoisyEstimate):
        def log_likelihood(self, x, prompts, seeds):
            r = super().log_likelihood(x, prompts, seeds)
            return LikelihoodResult(r.nll_nats - 20.0, "ode", "data", {})

    biased = truth_gap(Biased(WORLD), WORLD, images=24, seed=0)
    assert biased.below_truth and biased.verdict == "below truth: biased estimate"


def test_a_trajectory_nll_is_refused():
    class Trajectory(OracleGenerator):
        def log_likelihood(self, x, prompts, seeds):
            return LikelihoodResult(torch.zeros(len(x)), "exact", "trajectory", {})

    with pytest.raises(ValueError, match="only a data NLL has a truth"):
        truth_gap(Trajectory(WORLD), WORLD, images=4, seed=0)
