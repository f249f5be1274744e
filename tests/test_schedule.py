import pytest
import torch

from ntm.schedule import shift_time, time_grid, unshift_time


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_shift_maps_unit_interval_onto_itself_monotonically(shift):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = shift_time(t, shift)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted[1:] > shifted[:-1]).all()
    torch.testing.assert_close(unshift_time(shifted, shift), t, rtol=0, atol=1e-15)


def test_shift_above_one_moves_times_towards_noise():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert (shift_time(t, 3.0) > t).all()
    assert (shift_time(t, 1 / 3) < t).all()
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)
    torch.testing.assert_close(shift_time(t, 1.0), t, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [1, 4, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("t_min", [0.0, 0.02])
def test_time_grid_endpoints_exact_and_strictly_decreasing(steps, shift, t_min):
    times = time_grid(steps, shift=shift, t_min=t_min)
    assert times.shape == (steps + 1,) and times.dtype == torch.float64
    assert times[0].item() == 1.0 and times[-1].item() == t_min
    assert (times[1:] < times[:-1]).all()


def test_time_grid_endpoints_survive_rounding_in_the_shift():
    # unshift then shift is off by an ulp for most of these; the grid must still end exactly at t_min
    for shift in (0.3, 1.7, 3.0, 7.3):
        for t_min in torch.linspace(0.001, 0.2, 50, dtype=torch.float64).tolist():
            times = time_grid(4, shift=shift, t_min=t_min)
            assert times[0].item() == 1.0 and times[-1].item() == t_min


def test_time_grid_is_uniform_before_the_shift():
    torch.testing.assert_close(time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    times = time_grid(5, shift=3.0, t_min=0.05)
    unshifted = unshift_time(times, 3.0)
    gaps = unshifted[:-1] - unshifted[1:]
    torch.testing.assert_close(gaps, gaps.mean().expand(5), rtol=0, atol=1e-12)


def test_time_grid_dtype():
    assert time_grid(3, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"steps": 2.5},
        {"steps": True},
        {"steps": 4, "t_min": 1.0},
        {"steps": 4, "t_min": -0.1},
        {"steps": 4, "shift": 0.0},
        {"steps": 4, "shift": -2.0},
    ],
)
def test_time_grid_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        time_grid(**kwargs)
