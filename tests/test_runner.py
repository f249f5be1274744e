"""Runner, records, suites and tables end to end on a few-step preset."""

import json
import math

import numpy as np
import pytest
import torch

from baselines.base import Capabilities, Generator, GeneratorSpec, LikelihoodResult
from baselines.registry import UnknownNameError, register
from benchmarks.presets import load_preset
from benchmarks.runner import evaluate
from benchmarks.suites import available_suites, get_suite
from benchmarks.suites.nll import bits_per_dim
from benchmarks.tables import write_tables
from benchmarks.worlds import available_worlds, get_world


class UniformDensity(Generator):
    """Uniform density on [-1, 1]^D (nll = D ln 2 exactly) and blank white samples."""

    capabilities = Capabilities(likelihood=True)

    def __init__(self, name: str) -> None:
        self.spec = GeneratorSpec(name, "test", 1, 0, 0, "none")

    @classmethod
    def from_context(cls, ctx, name):
        return cls(name)

    def sample(self, prompts, seeds, steps=None):
        return torch.full((len(prompts), 3, 16, 16), 255, dtype=torch.uint8)

    def log_likelihood(self, x, prompts, seeds):
        d = x[0].numel()
        return LikelihoodResult(torch.full((len(x),), d * math.log(2), dtype=torch.float64), "exact", "data", {})


register("test-uniform", UniformDensity, "test double")


def test_bits_per_dim_of_the_uniform_density_is_eight():
    world = get_world("shapes", 16)
    result = get_suite("nll", {"images": 3}).run(build_uniform(), world, seed=0, progress=False)
    assert result.metrics["nll_bpd"] == pytest.approx(8.0, abs=1e-12)
    assert result.metrics["nll_estimator"] == "exact" and len(result.rows) == 3
    assert bits_per_dim(np.array([0.0]), 1)[0] == pytest.approx(7.0)  # density 1 on [-1,1]: 8 - 1 bits


def build_uniform():
    return UniformDensity("test-uniform")


def test_geneval_suite_ground_truth_is_ceiling_and_blank_images_fail_with_reasons(preset_file):
    world = get_world("shapes", 16)
    suite = get_suite("geneval", {"prompts_per_category": 2, "images_per_prompt": 2})
    from benchmarks.reference import GroundTruth

    truth = suite.run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False)
    assert truth.metrics["geneval_overall"] == 1.0
    assert set(truth.metrics) >= {f"geneval_{t}" for t in world.categories}
    blank = suite.run(build_uniform(), world, seed=0, progress=False)
    assert blank.metrics["geneval_overall"] == 0.0
    assert all(not r["correct"] and "found 0" in r["reason"] for r in blank.rows)
    assert blank.artifacts["images"].shape[1:] == (3, 16, 16)


def test_reproduce_writes_tables_and_does_not_recompute(preset_file, tmp_path):
    preset = load_preset(preset_file)
    out = tmp_path / "out"
    first = evaluate(preset, out, models=["ground-truth", "fm-teacher-4", "test-uniform"], progress=False)
    assert len(first) == 3 * 2
    frame = write_tables(out)
    for name in ("summary.csv", "summary.md", "summary.tex", "samples/fm-teacher-4.png"):
        assert (out / name).is_file(), name
    row = frame.set_index("model").loc["fm-teacher-4"]
    assert row["nfe"] == 8 and row["steps"] == 4 and row["nll_estimator"] == "ode" and np.isfinite(row["nll_bpd"])
    truth = frame.set_index("model").loc["ground-truth"]
    assert truth["family"] == "reference" and truth["geneval_overall"] == 1.0 and truth["nll_estimator"] == "n/a"
    assert "n/a" in (out / "summary.md").read_text()
    summaries = sorted((out / "records").glob("*/*.summary.json"))
    stamps = [p.stat().st_mtime_ns for p in summaries]
    assert evaluate(preset, out, models=["ground-truth", "fm-teacher-4", "test-uniform"], progress=False) == []
    assert [p.stat().st_mtime_ns for p in summaries] == stamps
    record = json.loads(summaries[0].read_text())
    assert {"commit", "packages", "device"} <= set(record["protocol"]) and record["spec_hash"]
    rebuilt = write_tables(out)
    assert rebuilt.equals(frame)


def test_unknown_names_list_the_valid_ones(preset_file, tmp_path):
    preset = load_preset(preset_file)
    out = tmp_path / "out"
    with pytest.raises(UnknownNameError, match="available: .*fm-teacher-4"):
        evaluate(preset, out, models=["nope"], progress=False)
    with pytest.raises(UnknownNameError, match=f"available: {', '.join(available_suites())}"):
        evaluate(preset, out, suites=["nope"], progress=False)
    with pytest.raises(UnknownNameError, match="available: .*tiny"):
        load_preset("nope")
    with pytest.raises(KeyError, match=f"available: {', '.join(available_worlds())}"):
        get_world("nope")
    assert not out.exists()  # nothing written on failure


def test_preset_rejects_unknown_keys(tmp_path, preset_file):
    bad = tmp_path / "bad.toml"
    bad.write_text("bogus = 1\n" + preset_file.read_text())
    with pytest.raises(ValueError, match="unknown key.*bogus"):
        load_preset(bad)
    bad.write_text(preset_file.read_text() + "\nbogus = 1\n")  # lands in [suite_options.nll]
    with pytest.raises(ValueError, match="unknown option.*bogus.*nll"):
        load_preset(bad)
    bad.write_text(preset_file.read_text().replace("batch_size = 8", "batch_sise = 8"))
    with pytest.raises(ValueError, match="unknown training option.*batch_sise"):
        load_preset(bad)
    with pytest.raises(ValueError, match="unknown option.*bogus.*geneval"):
        get_suite("geneval", {"bogus": 1})
