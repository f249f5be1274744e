import pytest
import torch

from ntm.schedule import posterior, sample_t_min, transition

TIMES = (1.0, 0.754, 0.509, 0.263, 0.02)
# (A, B, C) from issue 3, to the digits the issue gives
EXPECTED = (
    (0.0, 0.246, 0.754),
    (0.2283, 0.4348, 0.479),
    (0.1779, 0.6497, 0.2469),
    (0.0043, 0.9768, 0.02),
)
DIGITS = ((0, 3, 3), (4, 4, 3), (4, 4, 4), (4, 4, 2))


def test_posterior_pins_the_issue_values():
    for (t, s), expected, digits in zip(zip(TIMES, TIMES[1:]), EXPECTED, DIGITS):
        got = posterior(s, t)
        for g, e, d in zip(got, expected, digits):
            assert round(g, d) == e, (s, t, got)


def test_posterior_at_t_one_is_finite_closed_form():
    s = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64)
    A, B, C = posterior(s, torch.ones_like(s))
    assert (A == 0).all()
    torch.testing.assert_close(B, 1 - s, rtol=0, atol=1e-15)
    torch.testing.assert_close(C, s, rtol=0, atol=1e-15)


def _random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(2, n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return torch.minimum(a, b), torch.maximum(a, b)


def test_posterior_equals_gaussian_conditioning_of_the_joint():
    # given x0, x_s = (1-s) x0 + s e and x_t = a x_s + sig e'; condition x_s on x_t
    s, t = _random_pairs(64, 0)
    a, sig = transition(s, t)
    var_s, mean_s_coef = s**2, 1 - s
    cov_st = a * var_s
    var_t = a**2 * var_s + sig**2
    gain = cov_st / var_t
    A_ref = gain
    B_ref = mean_s_coef - gain * (1 - t)
    C_ref = (var_s - gain * cov_st).sqrt()
    A, B, C = posterior(s, t)
    for got, ref in ((A, A_ref), (B, B_ref), (C, C_ref)):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_transition_composes_and_matches_marginals():
    s, t = _random_pairs(64, 1)
    g = torch.Generator().manual_seed(2)
    m = s + (t - s) * torch.rand(64, generator=g, dtype=torch.float64)
    a_sm, sig_sm = transition(s, m)
    a_mt, sig_mt = transition(m, t)
    a_st, sig_st = transition(s, t)
    torch.testing.assert_close(a_mt * a_sm, a_st, rtol=0, atol=1e-13)
    torch.testing.assert_close(a_mt**2 * sig_sm**2 + sig_mt**2, sig_st**2, rtol=0, atol=1e-13)
    # from data (s = 0) the transition is the marginal x_t = (1-t) x0 + t eps
    a0, sig0 = transition(torch.zeros_like(t), t)
    torch.testing.assert_close(a0, 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(sig0, t, rtol=0, atol=1e-15)
    # and it carries the marginal at s onto the marginal at t
    torch.testing.assert_close(a_st * (1 - s), 1 - t, rtol=0, atol=1e-15)
    torch.testing.assert_close(a_st**2 * s**2 + sig_st**2, t**2, rtol=0, atol=1e-15)


def test_transition_and_posterior_accept_floats_in_float64():
    a, sig = transition(0.25, 0.75)
    assert isinstance(a, float) and isinstance(sig, float)
    assert a == pytest.approx(1 / 3, abs=1e-15)
    assert sig == pytest.approx((0.75**2 - (0.25 / 3) ** 2) ** 0.5, abs=1e-15)
    assert all(isinstance(v, float) for v in posterior(0.25, 0.75))


def test_transition_at_equal_times_is_identity_without_nan():
    t = torch.tensor([0.0, 0.4, 0.999], dtype=torch.float64)
    a, sig = transition(t, t)
    assert (a == 1).all() and not sig.isnan().any()
    torch.testing.assert_close(sig, torch.zeros_like(t), rtol=0, atol=1e-7)


def test_sample_t_min_is_seeded_uniform_on_the_interval():
    draw = sample_t_min(10_000, torch.Generator().manual_seed(0))
    again = sample_t_min(10_000, torch.Generator().manual_seed(0))
    assert torch.equal(draw, again) and draw.shape == (10_000,)
    assert draw.min() >= 0 and draw.max() <= 0.05
    assert draw.mean().item() == pytest.approx(0.025, abs=5e-4)
    assert sample_t_min(1000, torch.Generator().manual_seed(0), high=0.01).max() <= 0.01
    with pytest.raises(ValueError):
        sample_t_min(3, None, high=1.5)
