"""Command-line overrides of a preset (--set, --limit, --seeds, --batch-size, --model-args) and `ntm-bench compare`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from baselines.base import GeneratorSpec
from benchmarks.presets import load_preset
from benchmarks.presets.overrides import apply_overrides, parse_value
from benchmarks.records import RecordStore
from cli import app

runner = CliRunner()


def test_overrides_set_dotted_keys_and_are_checked_like_a_file():
    p = load_preset("tiny")
    q = apply_overrides(p, ["seeds=[1]", "train.ntm.steps=100", "model_options.ntm.guidance=3.5"], limit=2,
                        batch_size=8)
    assert q.seeds == (1,) and q.train["ntm"]["steps"] == 100 and q.model_options["ntm"]["guidance"] == 3.5
    assert q.suite_options["geneval"]["prompts_per_category"] == 2 and q.suite_options["clipscore"]["prompts_per_category"] == 2
    assert q.suite_options["fid"]["batch_size"] == 8 and q.suite_options["speed"]["batch_size"] == 16  # speed measures its batch
    assert q.overrides == ("set seeds=[1]", "set train.ntm.steps=100", "set model_options.ntm.guidance=3.5", "limit 2",
                           "batch_size 8")
    assert p.train["ntm"]["steps"] == 800 and p.overrides == ()  # the loaded preset is untouched
    assert parse_value("[0, 1]") == [0, 1] and parse_value("shapes") == "shapes" and parse_value("true") is True
    for bad, match in (("train.ntm.stepz=1", "stepz"), ("nosuch=1", "no preset key"), ("seeds", "key=value"),
                       ("seeds=[-1]", "seeds"), ("model_options.ntm.nope=1", "nope")):
        with pytest.raises(ValueError, match=match):
            apply_overrides(p, [bad])
    with pytest.raises(ValueError, match="--limit"):
        apply_overrides(p, limit=0)


def test_eval_with_limit_and_set_records_the_overrides(tmp_path):
    out = tmp_path / "D2"
    result = runner.invoke(app, ["eval", "--models", "ground-truth", "--suites", "geneval", "--preset", "tiny",
                                 "--limit", "2", "--set", "seeds=[1]", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    (summary,) = [json.loads(p.read_text()) for p in (out / "records").glob("*/*.summary.json")]
    assert summary["seed"] == 1 and summary["metrics"]["geneval_images"] == 2 * 6 * 4
    assert summary["protocol"]["overrides"] == ["set seeds=[1]", "limit 2"]
    assert "command-line overrides of the preset" in (out / "summary.md").read_text()
    assert "geneval_overall_lo" in (out / "summary.csv").read_text().splitlines()[0]
    bad = runner.invoke(app, ["eval", "--models", "ground-truth", "--preset", "tiny", "--seeds", "a,b", "--out", str(out)])
    assert bad.exit_code == 2 and "--seeds" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["eval", "--models", "ground-truth", "--preset", "tiny", "--model-args", "steps", "--out", str(out)])
    assert bad.exit_code == 2 and "=" in bad.output


def _write(store: RecordStore, model: str, flags: list[bool], seed: int = 0) -> None:
    spec = GeneratorSpec(model, "ntm", 4, 8, 1000, "w")
    key = store.key(spec, "geneval", "1", seed)
    rows = [{"item": i, "tag": ["colors", "counting"][i % 2], "prompt_index": i // 4, "prompt": f"p{i // 4}",
             "seed": 100 + i, "correct": f} for i, f in enumerate(flags)]
    summary = {"record": key.stem, "model": model, "family": "ntm", "spec": spec.to_dict(), "spec_hash": key.spec_hash,
               "suite": "geneval", "suite_version": "1", "seed": seed, "metrics": {"geneval_overall": 0.5},
               "protocol": {}}
    store.write(key, rows, summary, {})


def test_compare_prints_the_paired_difference_and_pools_folders(tmp_path):
    for name, a_flags in (("one", [True] * 32), ("two", [True] * 16 + [False] * 16)):
        store = RecordStore(tmp_path / name / "records")
        _write(store, "a", a_flags)
        _write(store, "b", [i % 4 == 0 for i in range(32)])
    result = runner.invoke(app, ["compare", str(tmp_path / "one"), "a", "b"])
    assert result.exit_code == 0, result.output
    assert "geneval_overall" in result.output and "+0.750" in result.output  # A always right, B on a quarter
    pooled = runner.invoke(app, ["compare", str(tmp_path / "one"), "a", "b", "--pool", str(tmp_path / "two")])
    assert "2 pair(s)" in pooled.output and "+0.500" in pooled.output  # (0.75 + 0.25) / 2
    missing = runner.invoke(app, ["compare", str(tmp_path / "one"), "a", "zzz"])
    assert missing.exit_code == 2 and "zzz" in missing.output and "a, b" in missing.output
    assert runner.invoke(app, ["compare", "--help"]).exit_code == 0
