"""`ntm-bench bench`: interleaved timing, paired median speed-ups, and the written report."""

from __future__ import annotations

import json
import math

import pytest
from conftest import TINY_PRESET
from typer.testing import CliRunner

from benchmarks.bench import COMPARISONS, interleaved_times, run_bench, speedup
from benchmarks.presets import load_preset
from cli import app

BENCH_PRESET = TINY_PRESET + """
[train.consistency]
steps = 2
batch_size = 4
"""


def test_rounds_interleave_every_call_and_rotate_the_first():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = interleaved_times(calls, repeats=2, warmup=1)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(t) for name, t in times.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(s >= 0 for t in times.values() for s in t)
    with pytest.raises(ValueError, match="repeats >= 1"):
        interleaved_times(calls, repeats=0, warmup=0)


def test_speedup_is_the_median_of_paired_ratios():
    assert speedup([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0  # median of (2, 1, 0.5)
    # paired ratios (3, 0.5, 3): median 3, where the ratio of the medians would be 3 / 2
    assert speedup([1.0, 2.0, 3.0], [3.0, 1.0, 9.0]) == 3.0
    with pytest.raises(ValueError, match="paired"):
        speedup([1.0], [1.0, 2.0])


def test_bench_builds_the_models_times_them_and_writes_both_files(tmp_path, one_thread):
    path = tmp_path / "bench.toml"
    path.write_text(BENCH_PRESET)
    out = tmp_path / "out"
    report = run_bench(load_preset(path), out, "cpu", batch_size=2, repeats=2, warmup=0, progress=False)
    assert [r["name"] for r in report["ratios"]] == [c.name for c in COMPARISONS]
    assert report["models"]["teacher"]["name"] == "fm-teacher-4"  # the teacher row the preset lists
    for r in report["ratios"]:
        assert math.isfinite(r["speedup"]) and r["speedup"] > 0
        assert r["speedup"] == speedup(report["times_s"][r["fast"]], report["times_s"][r["baseline"]])
    written = json.loads((out / "bench.json").read_text())
    assert written["ratios"] == report["ratios"] and len(written["times_s"]["ntm sample"]) == 2
    markdown = (out / "bench.md").read_text()
    assert all(f"| {c.name} |" in markdown for c in COMPARISONS)
    trained = {p.name.rsplit("-", 1)[0] for p in (out / "checkpoints").iterdir() if p.is_dir()}
    assert trained == {"flow_matching", "ntm", "ntm_denoiser", "consistency"}  # through the registry, cached

    result = CliRunner().invoke(app, [
        "bench", "--preset", str(path), "--out", str(out), "--batch-size", "2", "--repeats", "1", "--warmup", "0",
        "--device", "cpu", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "ntm-fast vs consistency" in " ".join(result.output.split())
    assert len(json.loads((out / "bench.json").read_text())["times_s"]["ntm sample"]) == 1  # replaced atomically
