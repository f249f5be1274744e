"""Classifier-free guidance on Gaussian steps: identities, positivity, the product-of-experts form."""

import pytest
import torch

from ntm.guidance import guide_gaussian


def gaussians(n=64, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=dtype) * scale for scale in (1.0, 1.5, 1.0, 1.5)]


def test_weight_one_is_conditional_and_zero_is_unconditional_exactly():
    mu_c, ls_c, mu_u, ls_u = gaussians()
    for w, (mu, ls) in ((1.0, (mu_c, ls_c)), (0.0, (mu_u, ls_u))):
        got_mu, got_ls = guide_gaussian(mu_c, ls_c, mu_u, ls_u, w)
        assert torch.equal(got_mu, mu) and torch.equal(got_ls, ls)


@pytest.mark.parametrize("w", [0.3, 0.9, 1.5, 4.0])
def test_guided_density_is_the_weighted_product_where_it_exists(w):
    """log N(x; mu_g, sigma_g) - [w log N(x; mu_c, sigma_c) + (1-w) log N(x; mu_u, sigma_u)] is constant in x."""
    mu_c, ls_c, mu_u, ls_u = gaussians()
    if w > 1:
        ls_u = torch.maximum(ls_u, ls_c) + 0.1  # sigma_u > sigma_c: the product is a proper Gaussian, no clipping
    mu, ls = guide_gaussian(mu_c, ls_c, mu_u, ls_u, w)

    def log_n(x, m, log_s):
        return torch.distributions.Normal(m, log_s.exp()).log_prob(x)

    xs = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    gap = log_n(xs, mu, ls) - (w * log_n(xs, mu_c, ls_c) + (1 - w) * log_n(xs, mu_u, ls_u))
    assert (gap - gap[0]).abs().max() < 1e-10


def test_clipped_regime_is_mean_cfg_with_the_conditional_sigma():
    """sigma_u < sigma_c and w > 1: r clips to 1, so sigma = sigma_c and mu = mu_c + (w - 1)(mu_c - mu_u)."""
    mu_c, ls_c, mu_u, _ = gaussians()
    mu, ls = guide_gaussian(mu_c, ls_c, mu_u, ls_c - 0.5, 3.0)
    assert torch.allclose(ls, ls_c, atol=1e-14)
    assert torch.allclose(mu, mu_c + 2.0 * (mu_c - mu_u), atol=1e-12)


def test_sigma_stays_positive_and_finite_for_extreme_inputs():
    ls = torch.tensor([-30.0, -5.0, 0.0, 5.0, 30.0])
    ls_c, ls_u = torch.meshgrid(ls, ls, indexing="ij")
    ls_c, ls_u = ls_c.reshape(-1), ls_u.reshape(-1)
    mu_c, mu_u = torch.full_like(ls_c, 1e6), torch.full_like(ls_c, -1e6)
    for w in (1e-7, 0.5, 1 - 1e-6, 1 + 1e-6, 2.0, 7.5, 1e6):
        mu, log_sigma = guide_gaussian(mu_c, ls_c, mu_u, ls_u, w)
        sigma = log_sigma.exp()
        assert torch.isfinite(mu).all() and torch.isfinite(log_sigma).all(), w
        assert (sigma > 0).all(), w
        if w > 1:
            # precision in [1, w] / sigma_c^2
            assert (log_sigma <= ls_c + 1e-5).all() and (log_sigma >= ls_c - 0.5 * torch.log(torch.tensor(w)) - 1e-5).all()


def test_continuous_across_weight_one():
    mu_c, ls_c, mu_u, ls_u = gaussians()
    below = guide_gaussian(mu_c, ls_c, mu_u, ls_u, 1 - 1e-12)
    above = guide_gaussian(mu_c, ls_c, mu_u, ls_u, 1 + 1e-12)
    for a, b, exact in zip(below, above, (mu_c, ls_c)):
        assert torch.allclose(a, exact, atol=1e-7) and torch.allclose(b, exact, atol=1e-7)


@pytest.mark.parametrize("w", [-0.5, float("nan"), float("inf")])
def test_invalid_weight_is_rejected(w):
    mu_c, ls_c, mu_u, ls_u = gaussians()
    with pytest.raises(ValueError, match="guidance weight"):
        guide_gaussian(mu_c, ls_c, mu_u, ls_u, w)
