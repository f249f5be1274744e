"""`ntm-bench audit-likelihood` and `run_audit` end to end on tiny budgets: files, rows, verdicts, option errors."""

import dataclasses

import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks.audit.run import run_audit
from benchmarks.presets import load_preset
from benchmarks.presets.audit import AuditOptions, audit_options
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
    small = dataclasses.replace(preset, audit=SMALL)
    assert audit_options(small).iwae_samples == (1, 4) and audit_options(small).truth_images == 6
    with pytest.raises(ValueError, match=r"unknown audit option\(s\) \['images'\]"):
        AuditOptions.from_dict({"images": 3})
    with pytest.raises(ValueError, match="at least 2 images"):
        AuditOptions.from_dict({"truth_images": 1})


def test_run_audit_on_a_briefly_trained_ntm(one_thread, preset_file, tmp_path):
    preset = load_preset(preset_file)
    preset = dataclasses.replace(preset, audit=SMALL)
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


def test_known_world_budgets_cut_steps_and_warmup_and_name_bad_recipes():
    train = {"flow_matching": {"steps": 1500, "warmup": 100, "lr": 1e-3}, "ntm": {"steps": 800}}
    o = AuditOptions.from_dict({"train_steps": {"flow_matching": 200}})
    budgets = o.known_world_budgets(train)
    assert budgets["flow_matching"] == {"steps": 200, "warmup": 50, "lr": 1e-3}
    assert budgets["ntm"] == {"steps": 800} and train["flow_matching"]["steps"] == 1500  # the preset is untouched
    with pytest.raises(ValueError, match=r"train_steps names recipe\(s\) \['nmt'\].*valid: \['flow_matching', 'ntm'\]"):
        AuditOptions.from_dict({"train_steps": {"nmt": 10}}).known_world_budgets(train)
    with pytest.raises(ValueError, match="positive integer"):
        AuditOptions.from_dict({"train_steps": {"ntm": 0}})


def test_an_audit_table_is_checked_when_the_preset_loads(preset_file):
    text = preset_file.read_text()
    preset_file.write_text(text + '\n[audit]\ntruth_images = 4\ntrain_steps = { ntm = 2 }\n')
    assert load_preset(preset_file).audit == {"truth_images": 4, "train_steps": {"ntm": 2}}
    preset_file.write_text(text + '\n[audit]\ntrain_steps = { teacher = 2 }\n')
    with pytest.raises(ValueError, match=r"\[audit\]: audit option train_steps names recipe\(s\) \['teacher'\]"):
        load_preset(preset_file)
    preset_file.write_text(text + '\n[audit]\nimages = 4\n')
    with pytest.raises(ValueError, match=r"\[audit\]: unknown audit option\(s\) \['images'\]"):
        load_preset(preset_file)


def test_reproduce_runs_the_audit_once_when_the_preset_has_an_audit_table(preset_file, tmp_path):
    text = preset_file.read_text().replace(
        'models = ["ground-truth", "fm-teacher-4", "ntm", "ntm-no-transporter"]', 'models = ["ground-truth"]'
    )
    table = "\n[audit]\n" + "\n".join(f"{k} = {v}" for k, v in SMALL.items()) + "\n"
    preset_file.write_text(text + table)
    out = tmp_path / "out"
    first = runner.invoke(app, ["reproduce", "--preset", str(preset_file), "--out", str(out), "--no-progress"])
    assert first.exit_code == 0, first.output
    summary = out / "audit" / "summary.csv"
    frame = pd.read_csv(summary)
    assert set(frame["model"]) == {"ground-truth", "oracle (control)", "gaussian@12"}
    assert (out / "audit" / "key.txt").is_file()
    stamp = summary.stat().st_mtime_ns
    again = runner.invoke(app, ["reproduce", "--preset", str(preset_file), "--out", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "finished earlier" in again.output and summary.stat().st_mtime_ns == stamp
    preset_file.write_text(text)  # no [audit] table: no audit step
    plain = tmp_path / "plain"
    assert runner.invoke(app, ["reproduce", "--preset", str(preset_file), "--out", str(plain), "--no-progress"]).exit_code == 0
    assert not (plain / "audit").exists()
