"""The gaussian world's exact discrete density against numerical integration, its sampler and its registry row."""

import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import logsumexp

from benchmarks.suites.nll import bits_per_dim
from benchmarks.worlds import get_world
from benchmarks.worlds.gaussian import LOG_BIN_VOLUME, GaussianWorld, log_interval_mass


def test_registered_and_batches_are_seeded_and_captioned():
    world = get_world("gaussian")
    assert isinstance(world, GaussianWorld) and (world.resolution, world.channels, world.dim) == (8, 3, 192)
    batch = world.batch([5, 0, 5], split="test")
    assert batch.images.dtype == np.uint8 and batch.images.shape == (3, 3, 8, 8)
    assert np.array_equal(batch.images[0], batch.images[2]) and batch.captions[0] == batch.captions[2]
    assert not np.array_equal(world.batch([5], "train").images[0], batch.images[0])
    assert all(c.startswith("mode ") for c in batch.captions)
    assert set(" ".join(batch.captions).split()) <= set(world.vocabulary())
    with pytest.raises(ValueError, match="not in the gaussian grammar"):
        world.log_prob(batch.images[:1], ["a photo of a circle"])
    with pytest.raises(ValueError, match="modes 0..3"):
        world.render_caption("mode 7", 0)


def test_one_pixel_bin_mass_equals_numerical_integration():
    """Interior and both end bins (which take the tails) of one pixel, against quad of the normal pdf."""
    world = GaussianWorld()
    mu, sigma = world.means[1, 2, 3, 4], world.scales[1, 2, 3, 4]
    for v in (0, 1, 60, int(mu), 200, 254, 255):
        lo, hi = (-np.inf if v == 0 else v), (np.inf if v == 255 else v + 1)
        mass, _ = integrate.quad(lambda y: stats.norm.pdf(y, mu, sigma), lo, hi, epsabs=1e-300, epsrel=1e-12)
        image = np.full((1, 3, 8, 8), int(mu), np.uint8)
        image[0, 2, 3, 4] = v
        others = image.copy()
        others[0, 2, 3, 4] = int(mu)
        # the image's log mass changes by exactly this pixel's log bin mass
        delta = world.component_log_prob(image)[0, 1] - world.component_log_prob(others)[0, 1]
        ref = math.log(stats.norm.cdf(int(mu) + 1, mu, sigma) - stats.norm.cdf(int(mu), mu, sigma))
        assert delta + ref == pytest.approx(math.log(mass), rel=1e-9), v


def test_deep_tail_intervals_stay_finite_and_accurate():
    # 40 standard deviations out, Phi(b) - Phi(a) is 0 in float64; the log-CDF route is not
    got = log_interval_mass(np.array([40.0, -41.0]), np.array([41.0, -40.0]))
    assert np.allclose(got, stats.norm.logsf(40.0) + np.log1p(-np.exp(stats.norm.logsf(41.0) - stats.norm.logsf(40.0))))
    assert got[0] == pytest.approx(got[1])


def test_image_log_prob_sums_pixels_and_mixes_components():
    world = GaussianWorld(resolution=4, components=3)
    images = np.stack([world.render_caption(f"mode {i % 3}", i) for i in range(4)])
    v = images.astype(np.float64)
    per = world.component_log_prob(images)
    for i in range(4):
        k = i % 3  # scored under its own component, so every CDF difference is far from float64 underflow
        cdf = lambda y: stats.norm.cdf(y, world.means[k], world.scales[k])  # noqa: E731
        mass = np.where(v[i] == 255, 1.0, cdf(v[i] + 1)) - np.where(v[i] == 0, 0.0, cdf(v[i]))
        assert per[i, k] == pytest.approx(np.log(mass).sum(), rel=1e-10)
    assert np.allclose(world.log_prob(images), logsumexp(per, axis=1) - math.log(3))
    mixed = world.log_prob(images, ["mode 2", "", "mode 0", "mode 1"])
    assert np.allclose(mixed, [per[0, 2], world.log_prob(images)[1], per[2, 0], per[3, 1]])
    nll = world.nll_nats(images)
    assert np.allclose(nll, -world.log_prob(images) - world.dim * LOG_BIN_VOLUME)
    # in bits/dim of the discrete data the dequantisation terms cancel: -log2 P(v) / D
    assert np.allclose(bits_per_dim(nll, world.dim), -world.log_prob(images) / (world.dim * math.log(2)))


def test_one_pixel_masses_sum_to_one_and_match_the_sampler():
    world = GaussianWorld(resolution=2, components=2)
    mu, sigma = world.means[0, 0, 1, 1], world.scales[0, 0, 1, 1]
    base = world.means[0].round().astype(np.uint8)
    images = np.broadcast_to(base, (256, 3, 2, 2)).copy()
    images[:, 0, 1, 1] = np.arange(256)
    # log P(image) minus the other pixels' log mass leaves the log mass of the varied pixel's bin
    others = world.component_log_prob(base[None])[0, 0] - math.log(
        stats.norm.cdf(base[0, 1, 1] + 1.0, mu, sigma) - stats.norm.cdf(base[0, 1, 1], mu, sigma)
    )
    log_mass = world.component_log_prob(images)[:, 0] - others
    assert logsumexp(log_mass) == pytest.approx(0.0, abs=1e-10)


def test_sampler_quantises_by_floor_as_the_density_assumes():
    """Pooled over 12 pixels x 8000 draws, P(v < round(mu)) = Phi((round(mu) - mu) / sigma) within 4 SE.

    Rounding instead of flooring would shift each probability by about pdf / 2 (~0.01): > 5 SE here.
    """
    world = GaussianWorld(resolution=2, components=2)
    mu, sigma = world.means[0], world.scales[0]
    cut = mu.round()
    draws = np.stack([world.render_caption("mode 0", s) for s in range(8000)]).astype(np.float64)
    expected = stats.norm.cdf((cut - mu) / sigma)
    freq = (draws < cut).mean(0)
    se = math.sqrt((expected * (1 - expected)).sum() / 8000) / expected.size
    assert abs(freq.mean() - expected.mean()) < 4 * se, (freq.mean(), expected.mean(), se)


def test_entropy_is_the_mean_nll_with_its_standard_error():
    world = GaussianWorld()
    h, se = world.entropy(200)
    nll = world.nll_nats(world.batch(range(200), "test").images)
    assert h == pytest.approx(nll.mean()) and se == pytest.approx(nll.std(ddof=1) / math.sqrt(200))
    h_c, _ = world.entropy(200, conditional=True)
    # the components barely overlap: H(x) = H(x | c) + H(c) = H(x | c) + log 4
    assert h - h_c == pytest.approx(math.log(4), abs=1e-3)
