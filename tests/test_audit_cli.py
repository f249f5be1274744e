"""`ntm-bench audit-likelihood` and `run_audit` end to end on tiny budgets: files, rows, verdicts, option errors."""

import dataclasses

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.audit.options import AuditOptions, audit_options
from benchmarks.audit.run import run_audit
from benchmarks.presets import load_preset
from cli import app

runner = CliRunner()
SMALL = {
    "truth_images": 6, "entropy_samples": 64, "agreement_images": 3, "iwae_samples": [1, 4], "ood_images": 4,
    "conditional_images": 3, "mismatched": 2, "typicality_samples": 4,
}


def test_cli_writes_the_summary_with_the_oracle_control(preset_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["audit-likelihood", "--preset", str(preset_file), "--out", str(out),
                                 "--models", "ground-truth", "--no-progress"])
    assert result.exit_code == 0, result.output
    text = (out / "audit" / "summary.md").read_text()
    assert "## truth gap" in text and "oracle (control)" in text and "n/a: reports no likelihood" in text
    frame = pd.read_csv(out / "audit" / "summary.csv")
    oracle = frame[frame["model"] == "oracle (control)"]
    assert list(oracle["verdict"]) == ["exact", "exact"] and oracle["value"].abs().max() < 1e-8
    assert not (out / "checkpoints").exists()  # a model without a likelihood is never built


def test_cli_rejects_unknown_models_before_any_work(preset_file, tmp_path):
    result = runner.invoke(app, ["audit-likelihood", "--preset", str(preset_file), "--out", str(tmp_path / "o"),
                                 "--models", "nope"])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
    assert not (tmp_path / "o").exists()


def test_options_come_from_the_preset_and_unknown_ones_fail(preset_file):
    preset = load_preset(preset_file)
    assert audit_options(preset) == AuditOptions()
    small = dataclasses.replace(preset, suite_options=preset.suite_options | {"audit": SMALL})
    assert audit_options(small).iwae_samples == (1, 4) and audit_options(small).truth_images == 6
    with pytest.raises(ValueError, match=r"unknown audit option\(s\) \['images'\]"):
        AuditOptions.from_dict({"images": 3})
    with pytest.raises(ValueError, match="at least 2 images"):
        AuditOptions.from_dict({"truth_images": 1})


def test_run_audit_on_a_briefly_trained_ntm(one_thread, preset_file, tmp_path):
    preset = load_preset(preset_file)
    preset = dataclasses.replace(preset, suite_options=preset.suite_options | {"audit": SMALL})
    frame = run_audit(preset, tmp_path, models=["ntm"], progress=False)
    parts = set(frame[frame["model"] == "ntm"]["part"])
    assert parts == {"truth gap", "agreement", "ood", "conditional", "typicality"}
    gaps = frame[(frame["model"] == "ntm") & (frame["part"] == "truth gap")]
    # an untrained-ish model is far from the truth, from above: a bound, not a bug
    assert list(gaps["verdict"]) == ["upper bound", "upper bound"] and (gaps["value"] > 0).all()
    assert (tmp_path / "audit" / "ood_roc_ntm.png").stat().st_size > 1000
    assert (tmp_path / "audit" / "typicality_ntm.png").stat().st_size > 1000
    checkpoints = sorted(p.name.split("-")[0] for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["ntm", "ntm"]  # one per world


def test_one_likelihood_is_scored_once():
    from baselines.flow_matching import FlowMatchingGenerator, LikelihoodOptions
    from benchmarks.audit.run import _shared, likelihood_identity
    from conftest import random_teacher

    teacher = random_teacher()

    def generator(solver, steps, likelihood):
        return FlowMatchingGenerator(teacher, f"fm-{solver}-{steps}", solver, steps, 2.0, 1.0, likelihood, "w")

    heun16, euler4 = generator("heun", 16, LikelihoodOptions()), generator("euler", 4, LikelihoodOptions())
    assert likelihood_identity(heun16) == likelihood_identity(euler4)  # sampling differs, the likelihood does not
    assert likelihood_identity(generator("euler", 4, LikelihoodOptions(steps=4))) != likelihood_identity(euler4)
    (row,) = _shared([{"model": "fm-heun-16", "detail": "x"}], "fm-euler-4", "fm-heun-16")
    assert row["model"] == "fm-euler-4" and "computed once for fm-heun-16" in row["detail"]
