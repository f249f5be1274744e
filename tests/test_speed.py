"""The speed suite: its arithmetic against generators whose call times are known."""

from __future__ import annotations

import math
import time

import pytest
import torch

from baselines.base import Capabilities, Generator, GeneratorSpec, LikelihoodResult
from benchmarks.reference import GroundTruth
from benchmarks.suites.speed import SpeedSuite
from benchmarks.worlds import get_world


class Sleeper(Generator):
    """Each sample() call sleeps the next time from `sample_s`; each log_likelihood() call `nll_s`."""

    capabilities = Capabilities(likelihood=True)

    def __init__(self, sample_s: list[float], nll_s: float) -> None:
        self.spec = GeneratorSpec("sleeper", "test", 4, 8, 0, "none")
        self.sample_s, self.nll_s = list(sample_s), nll_s
        self.calls: list[int] = []
        self.events: list[str] = []

    def sample(self, prompts, seeds, steps=None):
        self.calls.append(len(prompts))
        self.events.append("sample")
        time.sleep(self.sample_s.pop(0))
        return torch.zeros((len(prompts), 3, 16, 16), dtype=torch.uint8)

    def log_likelihood(self, x, prompts, seeds):
        assert x.shape == (len(prompts), 3, 16, 16) and -1 <= x.min() and x.max() <= 1
        time.sleep(self.nll_s)
        return LikelihoodResult(torch.zeros(len(x)), "exact", "data", {})


@pytest.fixture(scope="module")
def world():
    return get_world("shapes", 16)


def test_ground_truth_has_a_positive_rate_and_its_spec_nfe(world, one_thread):
    truth = GroundTruth(world, "ground-truth")
    result = SpeedSuite({"batch_size": 4, "repeats": 2}).run(truth, world, seed=0, progress=False)
    m = result.metrics
    assert m["img_per_s"] > 0 and math.isfinite(m["img_per_s"])
    assert m["nfe"] == truth.spec.nfe == 0 and m["nll_per_s"] is None  # a renderer: no network, no likelihood
    assert m["threads"] == 1 and m["device"].startswith("cpu") and m["speed_images"] == 4
    assert [r["warmup"] for r in result.rows] == [True, False, False]


def test_rate_is_batch_over_the_median_timed_call(world):
    # warm-up 0.2 s, then 0.05, 0.15, 0.05: median 0.05 s; the mean (0.083) or a counted warm-up (0.1) would miss
    gen = Sleeper([0.2, 0.05, 0.15, 0.05], nll_s=0.05)
    result = SpeedSuite({"batch_size": 8, "repeats": 3, "warmup": 1}).run(gen, world, seed=0, progress=False)
    m = result.metrics
    assert gen.calls == [8, 8, 8, 8]
    assert m["img_per_s"] == pytest.approx(8 / 0.05, rel=0.3)
    assert m["nll_per_s"] == pytest.approx(8 / 0.05, rel=0.3)
    assert m["nfe"] == 8
    sample_rows = [r for r in result.rows if r["call"] == "sample"]
    assert [r["warmup"] for r in sample_rows] == [True, False, False, False]
    for row, slept in zip(sample_rows, [0.2, 0.05, 0.15, 0.05], strict=True):
        assert row["seconds"] == pytest.approx(slept, rel=0.3) and row["per_s"] == pytest.approx(8 / row["seconds"])
    assert sum(r["call"] == "log_likelihood" for r in result.rows) == 4


def test_each_call_is_bracketed_by_cuda_synchronize_when_cuda_is_in_use(world, monkeypatch):
    gen = Sleeper([0.0] * 3, nll_s=0.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: gen.events.append("sync"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Fake GPU")
    result = SpeedSuite({"batch_size": 2, "repeats": 2}).run(gen, world, seed=0, progress=False)
    assert gen.events[:9] == ["sync", "sample", "sync"] * 3  # queued kernels finish inside the timed interval
    assert result.metrics["device"] == "cuda:0 (Fake GPU)"  # CPU images after GPU work (diffusers adapters)


def test_bad_options_are_refused(world):
    with pytest.raises(ValueError, match="repeats >= 1"):
        SpeedSuite({"repeats": 0}).run(Sleeper([], 0.0), world, seed=0, progress=False)
