"""The worked adapter example (examples/ntm-bench-midpoint): found through its entry point, run by the runner.

The package is not pip-installed here (too slow for CI): a `.dist-info` folder holding the entry
points its pyproject.toml declares is written to tmp_path, which goes on sys.path with the source.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import torch

from baselines.registry import ENTRY_POINT_GROUP, available_models, get_entry, model_options, reload_entry_points
from baselines.training import CountingTeacher
from benchmarks.presets import load_preset
from benchmarks.runner import evaluate
from ntm.checkpoint import weights_hash
from ntm.schedule import time_grid
from tests.conftest import random_teacher

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ntm-bench-midpoint"
MODULE = "ntm_bench_midpoint"


@contextmanager
def example_installed(site: Path) -> Iterator[None]:
    """Make the example's distribution visible as if pip-installed, and forget it again on exit."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir(parents=True)
    metadata = f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    (dist_info / "METADATA").write_text(metadata)
    lines = [f"{name} = {target}" for name, target in project["entry-points"][ENTRY_POINT_GROUP].items()]
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.syspath_prepend(str(EXAMPLE))
            patch.syspath_prepend(str(site))
            reload_entry_points()
            yield
    finally:
        sys.modules.pop(MODULE, None)
        reload_entry_points()


@pytest.fixture
def midpoint(tmp_path: Path) -> Iterator[None]:
    with example_installed(tmp_path / "site"):
        yield


def test_entry_point_registers_the_model_and_uninstalling_removes_it(tmp_path, one_thread):
    try:
        distribution("ntm-bench-midpoint")
        pytest.skip("the example is pip-installed in this environment, so it cannot be uninstalled here")
    except PackageNotFoundError:
        pass
    assert "fm-midpoint" not in available_models()
    with example_installed(tmp_path / "site"):
        assert "fm-midpoint" in available_models()
        assert get_entry("fm-midpoint").target == f"{MODULE}:MidpointGenerator"
        assert model_options("fm-midpoint") == ["steps", "guidance"]
    assert "fm-midpoint" not in available_models() and MODULE not in sys.modules
    assert "fm-teacher-4" in available_models()  # in-tree registrations survive the re-scan


def test_runner_evaluates_the_example_on_the_shared_teacher(midpoint, preset_file, tmp_path, one_thread):
    out = tmp_path / "out"
    preset = load_preset(preset_file)
    (summary,) = evaluate(preset, out, models=["fm-midpoint"], suites=["geneval"], progress=False)
    record = out / "records" / summary["record"]
    assert json.loads(record.with_name(record.name + ".summary.json").read_text())["model"] == "fm-midpoint"
    rows = record.with_name(record.name + ".rows.jsonl").read_text().splitlines()
    assert len(rows) == 6 * 1 * 2  # six GenEval tasks x 1 prompt x 2 images in the test preset
    spec = summary["spec"]
    assert summary["family"] == "flow-matching" and spec["steps"] == 2 and spec["nfe"] == 8
    assert spec["settings"] == {"solver": "midpoint", "guidance": 2.0}
    (teacher,) = (out / "checkpoints").iterdir()  # the run's one flow-matching teacher, nothing else trained
    assert teacher.name.startswith("flow_matching-") and spec["weights_hash"] == weights_hash(teacher)
    assert spec["training"]["optimizer_steps"] == 3
    assert 0.0 <= summary["metrics"]["geneval_overall"] <= 1.0
    # same spec hash, same record key: a second run finds the record and the cached teacher, and does nothing
    assert evaluate(preset, out, models=["fm-midpoint"], suites=["geneval"], progress=False) == []


def guided(model, x: torch.Tensor, t: float, cond: torch.Tensor, null: torch.Tensor, w: float) -> torch.Tensor:
    """CFG by hand: the conditional and unconditional branches as two separate network calls."""
    t_vec = torch.full((x.shape[0],), t)
    v_c, v_u = model(x, t_vec, cond), model(x, t_vec, null)
    return v_u + w * (v_c - v_u)


@torch.no_grad()
def test_one_midpoint_step_matches_the_hand_computation(midpoint, one_thread):
    from ntm_bench_midpoint import MidpointGenerator, midpoint_nfe, sample_midpoint

    model, w = random_teacher(resolution=8), 2.0
    prompts, seeds = ["a red circle", "a photo of a circle"], [3, 11]
    noise = torch.stack([torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    cond, null = model.encode_text(prompts), model.encode_text(["", ""])
    # t: 1 -> 0, h = -1: half a step to t = 0.5, then the whole step with the slope found there
    x_mid = noise - 0.5 * guided(model, noise, 1.0, cond, null, w)
    by_hand = noise - guided(model, x_mid, 0.5, cond, null, w)
    counted = CountingTeacher(model)
    x = sample_midpoint(counted, noise, cond, null, time_grid(1), w)
    assert torch.allclose(x, by_hand, atol=1e-5) and not torch.allclose(x, noise, atol=1e-2)
    assert counted.calls == midpoint_nfe(1, w) * len(seeds) == 4 * len(seeds)
    # two steps are two one-step solves over [1, 0.5] and [0.5, 0]
    halves = sample_midpoint(model, sample_midpoint(model, noise, cond, null, time_grid(2)[:2], w), cond, null,
                             time_grid(2)[1:], w)
    assert torch.allclose(sample_midpoint(model, noise, cond, null, time_grid(2), w), halves, atol=1e-6)
    # the generator: uint8 (N, C, H, W) of the same solve, image i from (prompt i, seed i) alone
    generator = MidpointGenerator(model, "fm-midpoint", steps=1, guidance=w, weights="random")
    images = generator.sample(prompts, seeds)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 8, 8)
    expected = ((by_hand.clamp(-1, 1) + 1) * 128.0 - 0.5).round().clamp(0, 255)
    assert (images.float() - expected).abs().max() <= 1
    assert (generator.sample(prompts[1:], seeds[1:]).int() - images[1:].int()).abs().max() <= 1
    assert generator.spec.nfe == 4 and generator.spec.family == "flow-matching"
