"""The command line: help, listings, clear errors for bad names, the world checks."""

import json

from typer.testing import CliRunner

from benchmarks.suites import available_suites
from benchmarks.worlds import available_worlds
from cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("reproduce", "eval", "table", "worlds", "models", "suites", "presets"):
        assert command in result.output


def test_listings():
    assert "fm-teacher-4" in runner.invoke(app, ["models"]).output
    assert "ground-truth" in runner.invoke(app, ["models"]).output
    assert "geneval" in runner.invoke(app, ["suites"]).output
    assert "tiny" in runner.invoke(app, ["presets"]).output


def test_unknown_names_exit_2_with_the_valid_names(tmp_path):
    cases = [
        (["eval", "--models", "nope", "--out", str(tmp_path / "a")], "unknown model 'nope'; available:"),
        (["eval", "--models", "fm-teacher-4", "--suites", "fid2", "--out", str(tmp_path / "b")], f"unknown suite 'fid2'; available: {', '.join(available_suites())}"),
        (["reproduce", "--preset", "huge", "--out", str(tmp_path / "c")], "unknown preset 'huge'; available:"),
        (["worlds", "check", "planets"], f"unknown world 'planets'; available: {', '.join(available_worlds())}"),
        (["table", str(tmp_path / "empty")], "no records under"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_worlds_check_and_show(tmp_path):
    result = runner.invoke(app, ["worlds", "check", "shapes", "--res", "16", "--n", "40", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["per_category"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert min(report["per_category"].values()) >= 0.995 and "noise" in report
    result = runner.invoke(app, ["worlds", "show", "shapes", "--out", str(tmp_path / "g.png"), "--n", "8"])
    assert result.exit_code == 0 and (tmp_path / "g.png").stat().st_size > 1000


def test_train_command_trains_once_and_rejects_unknown_options(preset_file, tmp_path):
    out = tmp_path / "out"
    args = ["train", "ntm", "--preset", str(preset_file), "--out", str(out), "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].startswith("ntm-")
    assert runner.invoke(app, args).output == first.output  # cached: same weights, nothing retrained
    bad = runner.invoke(app, ["train", "fm-teacher", "--preset", str(preset_file), "--out", str(out), "--init", "teacher"])
    assert bad.exit_code == 2 and "has no option(s) ['init']" in bad.output
    bad = runner.invoke(app, args + ["--init", "bogus"])
    assert bad.exit_code == 2 and "unknown init 'bogus'; available: scratch, teacher" in bad.output


def test_distill_denoiser_command_caches_ntm_and_denoiser(preset_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["distill-denoiser", "--preset", str(preset_file), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name.split("-")[0] for p in (out / "checkpoints").iterdir())
    assert names == ["ntm", "ntm_denoiser"]


def test_missing_pretrained_weights_name_the_download_and_the_preset_key(preset_file, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--models", "sdxl-turbo", "--suites", "geneval", "--preset", str(preset_file), "--out", str(out)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "stabilityai/sdxl-turbo" in text and '[model_options.sdxl-turbo] path = "/local/folder"' in text
    assert not (out / "records").exists()
