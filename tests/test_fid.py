"""FID / KID maths against closed forms and reference implementations; the cache; the fid suite end to end."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from cleanfid.fid import fid_from_feats
from cleanfid.inception_torchscript import InceptionV3W
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from benchmarks.fid import (
    INCEPTION_FILE, FeatureNet, cache_key, clean_resize, feature_stats, fid_from_stats, frechet_distance,
    gaussian_stats, inception_net, kernel_inception_distance, mmd2_unbiased,
)
from benchmarks.reference import GroundTruth
from benchmarks.suites.base import NotApplicable
from benchmarks.suites.fid import FidSuite
from benchmarks.worlds import get_world

pytestmark = pytest.mark.usefixtures("one_thread")


def two_feature_sets(n: int = 60, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = 0.7 * rng.normal(size=(n + 7, d)) @ rng.normal(size=(d, d)) + 0.5
    return a, b


def closed_form(m1: np.ndarray, a: np.ndarray, m2: np.ndarray, b: np.ndarray) -> float:
    """FID of N(m1, Q diag(a) Q^T) vs N(m2, Q diag(b) Q^T): |m1 - m2|^2 + sum (sqrt a - sqrt b)^2."""
    return float(((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


class Lookup(nn.Module):
    """torchmetrics feature module returning precomputed features; the image's first two pixels hold the row."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = torch.from_numpy(table)
        self.num_features = table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()]


def index_images(rows: range) -> torch.Tensor:
    x = torch.zeros(len(rows), 3, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor([r // 256 for r in rows], dtype=torch.uint8)
    x[:, 0, 0, 1] = torch.tensor([r % 256 for r in rows], dtype=torch.uint8)
    return x


def test_frechet_distance_exact_closed_form_diagonal_and_commuting():
    rng = np.random.default_rng(1)
    d = 6
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = closed_form(m1, a, m2, b)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # random rotation: commuting, non-diagonal covariances
    assert frechet_distance(m1, q @ np.diag(a) @ q.T, m2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_sqrtm_formula_for_non_commuting_covariances():
    rng = np.random.default_rng(2)
    d = 5
    g1, g2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = g1 @ g1.T + 0.1 * np.eye(d), g2 @ g2.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    root = scipy.linalg.sqrtm(s1)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(root @ s2 @ root)).real
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_from_large_gaussian_samples_within_monte_carlo_tolerance():
    rng = np.random.default_rng(3)
    d, n = 4, 40_000
    m1, m2 = np.array([0.0, 1.0, -1.0, 0.5]), np.array([0.5, 0.0, -1.0, 1.5])
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([3.0, 0.5, 0.5, 1.0])
    x = m1 + np.sqrt(a) * rng.normal(size=(n, d))
    y = m2 + np.sqrt(b) * rng.normal(size=(n, d))
    expected = closed_form(m1, a, m2, b)  # 3.25 + 1.12
    assert fid_from_stats(gaussian_stats(x), gaussian_stats(y)) == pytest.approx(expected, rel=0.03)


def test_fid_of_a_set_with_itself_is_zero_even_when_covariance_is_singular():
    a, _ = two_feature_sets(n=30, d=50)  # fewer samples than dimensions: rank-deficient covariance
    s = gaussian_stats(a)
    assert abs(fid_from_stats(s, s)) < 1e-6 * np.trace(s.sigma)


def test_fid_agrees_with_torchmetrics_and_cleanfid():
    a, b = two_feature_sets()
    ours = fid_from_stats(gaussian_stats(a), gaussian_stats(b))
    table = np.concatenate([a, b])
    metric = FrechetInceptionDistance(feature=Lookup(table))
    metric.update(index_images(range(len(a))), real=True)
    metric.update(index_images(range(len(a), len(table))), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-3)
    assert ours == pytest.approx(float(fid_from_feats(a, b)), rel=1e-6)


def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(u @ v) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_full_set_matches_brute_force_and_torchmetrics():
    a, b = two_feature_sets(n=15, d=5)
    b = b[:15]
    brute = brute_force_mmd2(a, b)
    assert mmd2_unbiased(a, b) == pytest.approx(brute, rel=1e-10)
    kid, std = kernel_inception_distance(a, b, subsets=3, subset_size=15)
    assert kid == pytest.approx(brute, rel=1e-10) and std < 1e-9 * abs(brute)  # every subset is the whole set
    table = np.concatenate([a, b])
    metric = KernelInceptionDistance(feature=Lookup(table), subsets=3, subset_size=15)
    metric.update(index_images(range(15)), real=True)
    metric.update(index_images(range(15, 30)), real=False)
    tm_mean, tm_std = metric.compute()
    assert kid == pytest.approx(float(tm_mean), rel=1e-6)


def test_kid_averages_brute_force_mmd_over_its_subsets():
    a, b = two_feature_sets(n=40, d=5)
    kid, std = kernel_inception_distance(a, b, subsets=4, subset_size=10, seed=7)
    rng = np.random.default_rng(7)
    scores = []
    for _ in range(4):
        x, y = a[rng.choice(len(a), 10, replace=False)], b[rng.choice(len(b), 10, replace=False)]
        scores.append(brute_force_mmd2(x, y))
    assert kid == pytest.approx(np.mean(scores), rel=1e-9)
    assert std == pytest.approx(np.std(scores), rel=1e-9) and std > 0


def counting_net(weights_hash: str = "w0") -> tuple[FeatureNet, list[int]]:
    calls: list[int] = []
    proj = np.random.default_rng(0).normal(size=(3 * 4 * 4, 6))

    def embed(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return np.tanh(images.reshape(len(images), -1).astype(np.float32) / 255 @ proj).astype(np.float32)

    return FeatureNet("toy", weights_hash, embed), calls


def test_feature_cache_hit_is_identical_and_keys_follow_content(tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 4, 4), dtype=np.uint8)
    net, calls = counting_net()
    first = feature_stats(images, net, batch_size=4, cache_dir=tmp_path)
    assert calls == [4, 4, 2]
    second = feature_stats(images, net, batch_size=4, cache_dir=tmp_path)
    assert calls == [4, 4, 2]  # served from the cache
    for field in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert second.n == first.n == 10
    assert [p.name for p in tmp_path.iterdir()] == [f"{cache_key(images, net)}.npz"]  # no temporary files left
    changed = images.copy()
    changed[3, 1, 2, 2] ^= 1
    assert cache_key(changed, net) != cache_key(images, net)
    assert cache_key(images, counting_net("w1")[0]) != cache_key(images, net)


def tiny_inception(folder: Path, active: int | None = None) -> Path:
    """A torchscript with clean-fid's Inception interface (.layers: normalised 299x299 -> 2048) and random weights;
    with `active`, only that many output features are non-zero (a covariance of small rank, well conditioned)."""

    class Layers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2048, 13, stride=13)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = Layers()

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return self.layers(x)

    torch.manual_seed(0)
    net = Net()
    if active is not None:
        with torch.no_grad():
            net.layers.conv.weight[active:] = 0
            net.layers.conv.bias[active:] = 0
    path = folder / INCEPTION_FILE
    torch.jit.save(torch.jit.script(net), str(path))
    return path


def test_inception_glue_matches_cleanfid_folder_pipeline(tmp_path: Path):
    from cleanfid.fid import get_folder_features

    images = np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    path = tiny_inception(tmp_path)
    ours = inception_net(path, "cpu").embed(images)
    assert ours.shape == (3, 2048)
    assert clean_resize(images).shape == (3, 3, 299, 299)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img.transpose(1, 2, 0)).save(pngs / f"{i}.png")
    model = InceptionV3W(str(tmp_path), download=False)
    theirs = get_folder_features(str(pngs), model, num_workers=0, batch_size=8, device=torch.device("cpu"),
                                 mode="clean", verbose=False)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_suite_reports_fid_inception_as_cleanfid_computes_it_folder_to_folder(tmp_path: Path):
    from cleanfid.fid import get_folder_features

    class Recording(GroundTruth):
        images: list = []

        def sample(self, prompts, seeds, steps=None):
            self.images.append(super().sample(prompts, seeds))
            return self.images[-1]

    world = get_world("shapes", 16)
    generator = Recording(world, "ground-truth")
    n = 16
    options = {"images": n, "batch_size": 16, "kid_subsets": 3, "kid_subset_size": 8, "features": "inception",
               "inception_path": str(tiny_inception(tmp_path, active=6)), "device": "cpu", "bootstrap_draws": 20}
    m = FidSuite(options).run(generator, world, seed=0, progress=False).metrics
    assert {"fid_inception", "kid_inception", "fid_inception_lo", "fid_inception_floor"} <= set(m)
    assert not any(k.startswith(("fid_evalclip", "kid_evalclip")) for k in m) and m["fid_features"] == "inception"
    folders = {}
    for name, images in (("generated", torch.cat(generator.images).numpy()), ("reference", world.batch(list(range(n)), split="test").images)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img.transpose(1, 2, 0)).save(folders[name] / f"{i:03d}.png")
    model = InceptionV3W(str(tmp_path), download=False)
    feats = {k: get_folder_features(str(f), model, num_workers=0, batch_size=16, device=torch.device("cpu"),
                                    mode="clean", verbose=False) for k, f in folders.items()}
    theirs = fid_from_feats(feats["generated"][:, :6], feats["reference"][:, :6])  # the zero features add nothing
    assert m["fid_inception"] == pytest.approx(theirs, rel=1e-4, abs=1e-6)


def test_missing_inception_names_the_file_and_where_to_put_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE) as err:
        inception_net(tmp_path / "nowhere", "cpu")
    assert "inception_path" in str(err.value) and "https://" in str(err.value)


class TinyClip:
    """Stand-in for the eval-CLIP image tower: a fixed random projection of pixels."""

    def __init__(self, resolution: int) -> None:
        dim = 3 * resolution * resolution
        self.proj = torch.randn(dim, 8, generator=torch.Generator().manual_seed(0)) / dim**0.5
        self.weights_hash = "tiny-random-clip"
        self.report = {"accuracy": 0.5}

    def image_features(self, images: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(images).float().flatten(1) / 127.5 - 1) @ self.proj


class Blank(GroundTruth):
    """The ground truth's spec but grey images: a generator that ignores the prompt."""

    def sample(self, prompts, seeds, steps=None) -> torch.Tensor:
        return torch.full((len(prompts), 3, self.world.resolution, self.world.resolution), 128, dtype=torch.uint8)


@pytest.fixture
def tiny_clip(monkeypatch):
    module = types.ModuleType("benchmarks.features")
    module.load_eval_clip = lambda world, resolution, device: TinyClip(resolution)
    monkeypatch.setitem(sys.modules, "benchmarks.features", module)


def test_suite_on_ground_truth_with_tiny_feature_net(tiny_clip, tmp_path: Path):
    world = get_world("shapes", 16)
    options = {"images": 24, "batch_size": 12, "kid_subsets": 5, "kid_subset_size": 12, "cache_dir": str(tmp_path)}
    suite = FidSuite(options | {"device": "cpu"})
    truth = suite.run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False)
    m = truth.metrics
    assert "fid" not in m and "kid" not in m  # names carry the feature network
    assert m["fid_evalclip"] >= 0 and m["fid_evalclip_floor"] > 0 and np.isfinite(m["kid_evalclip_floor"])
    assert m["fid_evalclip_lo"] < m["fid_evalclip"] < m["fid_evalclip_hi"]
    assert m["kid_evalclip_std"] > 0 and len(list(tmp_path.iterdir())) == 2  # reference and floor stats cached
    assert m["fid_images"] == 24 and m["fid_feature_hash"] == "tiny-random-clip" and m["kid_subset_size"] == 12
    assert m["fid_feature_accuracy"] == 0.5  # the ruler's own accuracy travels into the protocol
    assert len(truth.rows) == 24 and truth.artifacts["images"].shape == (16, 3, 16, 16)
    again = suite.run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False).metrics
    assert again == m  # read back from the cache: the same numbers
    blank = suite.run(Blank(world, "blank"), world, seed=0, progress=False).metrics
    assert blank["fid_evalclip"] > 5 * max(m["fid_evalclip"], m["fid_evalclip_floor"])
    assert blank["kid_evalclip"] > m["kid_evalclip"] + 5 * m["kid_evalclip_std"]
    assert blank["fid_evalclip_floor"] == m["fid_evalclip_floor"]  # the floor does not depend on the model


def test_reference_statistics_are_cached_by_default_in_the_user_cache(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("NTM_BENCH_CACHE", str(tmp_path / "cache"))
    world = get_world("shapes", 16)
    options = {"images": 12, "batch_size": 12, "kid_subsets": 2, "kid_subset_size": 6, "bootstrap_draws": 20}
    FidSuite(options | {"device": "cpu"}).run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False)
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*.npz"))) == 2
    FidSuite(options | {"device": "cpu", "cache_dir": None}).run(Blank(world, "b"), world, seed=0, progress=False)
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*.npz"))) == 2  # None: no cache read or written


def test_suite_refuses_a_floor_that_would_reuse_images(tiny_clip):
    world = get_world("digits")
    suite = FidSuite({"images": 200, "device": "cpu"})
    with pytest.raises(NotApplicable, match="images <= 179"):
        suite.run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False)
    with pytest.raises(ValueError, match="features"):
        FidSuite({"features": "vgg"})
