import pytest
import torch

from ntm.spline import MIN_BIN, rq_spline, spline_knots

pytestmark = pytest.mark.usefixtures("one_thread")

BOUND = 3.0


def _knots(seed: int = 0, rows: tuple[int, ...] = (2, 3), bins: int = 6, scale: float = 1.5):
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> torch.Tensor:
        return scale * torch.randn(*rows, n, generator=g, dtype=torch.float64)

    return spline_knots(draw(bins), draw(bins), draw(bins - 1), BOUND, 3.0)


def test_knots_span_the_bound_with_unit_end_slopes():
    xk, yk, dk = _knots()
    for knots in (xk, yk):
        torch.testing.assert_close(knots[..., 0], torch.full_like(knots[..., 0], -BOUND), rtol=0, atol=1e-12)
        torch.testing.assert_close(knots[..., -1], torch.full_like(knots[..., -1], BOUND), rtol=0, atol=1e-12)
        assert (knots.diff(dim=-1) >= 2 * BOUND * MIN_BIN * (1 - 1e-9)).all()
    assert (dk[..., [0, -1]] == 1).all() and (dk > 0).all()


def test_passes_through_knots_with_their_slopes():
    xk, yk, dk = _knots()
    y, log_slope = rq_spline(xk[..., 1:-1], xk, yk, dk, BOUND)
    torch.testing.assert_close(y, yk[..., 1:-1], rtol=0, atol=1e-12)
    torch.testing.assert_close(log_slope, dk[..., 1:-1].log(), rtol=0, atol=1e-10)


def test_inverse_and_log_slope_against_autograd():
    xk, yk, dk = _knots()
    x = (2.2 * torch.randn(2, 3, 200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).requires_grad_()
    y, log_slope = rq_spline(x, xk, yk, dk, BOUND)
    (slope,) = torch.autograd.grad(y.sum(), x)
    assert (slope > 0).all()
    torch.testing.assert_close(log_slope, slope.log(), rtol=0, atol=1e-10)
    back, _ = rq_spline(y.detach(), xk, yk, dk, BOUND, inverse=True)
    assert (back - x.detach()).abs().max() < 1e-10
    # monotone: sorting x sorts y
    order = x.detach().argsort(-1)
    assert (y.detach().gather(-1, order).diff(dim=-1) > 0).all()
    # identity with log-slope 0 outside the bound
    outside = x.detach().abs() >= BOUND
    assert outside.any() and torch.equal(y.detach()[outside], x.detach()[outside]) and (log_slope[outside] == 0).all()
    assert (y.detach()[~outside] != x.detach()[~outside]).any()


def test_zero_parameters_are_exactly_the_identity():
    zeros = torch.zeros(2, 3, 8, dtype=torch.float64)
    xk, yk, dk = spline_knots(zeros, zeros, zeros[..., :-1], BOUND, 3.0)
    x = 2 * torch.randn(2, 3, 100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y, log_slope = rq_spline(x, xk, yk, dk, BOUND)
    assert torch.equal(y, x) and (log_slope == 0).all()
    assert torch.equal(rq_spline(x, xk, yk, dk, BOUND, inverse=True)[0], x)


def test_rejects_mismatched_parameter_counts():
    zeros = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="K - 1 derivatives"):
        spline_knots(zeros, zeros, zeros, BOUND, 3.0)
