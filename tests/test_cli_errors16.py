"""The command line: --version, bracketed text shown as written, where train and eval wrote, and the
errors for option values that name nothing or no device (docs/errors.md)."""

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

import benchmarks.reference  # noqa: F401  (registers the reference rows)
from baselines.registry import available_models, get_entry
from benchmarks.runner import resolve_device
from benchmarks.suites import available_suites
from cli import app
from ntm.checkpoint import weights_hash

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
DEVICE_FORMS = "use one of: cpu, cuda, cuda:N (N a GPU index, e.g. cuda:1), mps, auto"


def flat(text: str) -> str:
    """`text` on one line: rich wraps long lines at the terminal width."""
    return " ".join(text.split())


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"ntm-bench {version('ntm-bench')}\n"


def test_bracketed_text_is_shown_as_written():
    help_text = runner.invoke(app, ["reproduce", "--help"]).output
    assert "[audit]" in help_text and "has an [audit] table" in flat(help_text)
    listing = flat(runner.invoke(app, ["models"]).output)
    bracketed = {name: get_entry(name).description for name in available_models() if "[" in get_entry(name).description}
    for name, description in bracketed.items():  # e.g. flux-schnell: "FLUX.1 [schnell] from a local folder"
        token = description[description.index("[") : description.index("]") + 1]
        assert token in listing, (name, token)


@pytest.mark.parametrize(
    ("args", "kind", "valid"),
    [
        (["eval", "--models", "", "--suites", "geneval"], "model", available_models()),
        (["eval", "--models", ",,", "--suites", "geneval"], "model", available_models()),
        (["eval", "--models", "ground-truth", "--suites", ""], "suite", available_suites()),
        (["eval", "--models", "ground-truth", "--suites", " , "], "suite", available_suites()),
        (["audit-likelihood", "--models", ""], "model", available_models()),
        (["diagnose", "--models", ","], "model", available_models()),
    ],
)
def test_an_option_naming_nothing_is_an_error_listing_the_valid_names(args, kind, valid, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [*args, "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert text.startswith("error: ") and f"names no {kind}; give comma-separated names, available: {', '.join(valid)}" in text
    assert not out.exists()  # nothing written, nothing trained


def test_empty_models_in_a_real_process_exits_fast_without_a_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="400")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "--models", "", "--suites", "geneval", "--preset", "tiny", "--out", str(tmp_path / "o")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.startswith("error: --models '' names no model") and "fm-teacher-4" in done.stderr and "ground-truth" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device", ["tpu9", "cuda:x", "cuda:", "CPU", ""])
def test_a_bad_device_is_one_line_naming_the_valid_forms(device, tmp_path):
    with pytest.raises(ValueError) as err:
        resolve_device(device)
    assert str(err.value) == f"device {device!r} is not a device; {DEVICE_FORMS}"
    if device:
        out = tmp_path / "out"
        result = runner.invoke(app, ["eval", "--models", "ground-truth", "--suites", "geneval", "--device", device, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert flat(result.output) == f"error: device {device!r} is not a device; {DEVICE_FORMS}"
        assert not out.exists()


def test_the_valid_device_forms_parse():
    assert str(resolve_device("cpu")) == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_train_prints_the_checkpoint_folder_and_eval_where_it_wrote(preset_file, tmp_path, one_thread):
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "fm-teacher-4", "--preset", str(preset_file), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    (folder,) = [p for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert flat(result.output).endswith(f" in {folder}")
    assert f"weights {weights_hash(folder)[:12]} in {folder}" in flat(result.output)

    result = runner.invoke(app, ["train", "ground-truth", "--preset", str(preset_file), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0 and "(not trained here)" in result.output

    result = runner.invoke(
        app, ["eval", "--models", "ground-truth", "--suites", "geneval", "--preset", str(preset_file), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: records/, summary.csv, summary.md, summary.tex, protocol.json, plots/ and samples/" in flat(result.output)
    assert (out / "summary.md").is_file() and (out / "records").is_dir()
