"""The bad-input catalogue (docs/errors.md): every case fails with a message naming the problem and the fix,
and writes nothing."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from baselines.base import BuildContext, Generator, GeneratorSpec
from baselines.registry import register
from benchmarks.geneval_rules import load_geneval_metadata
from benchmarks.presets import load_preset
from benchmarks.records import RecordStore
from benchmarks.runner import evaluate, resolve_device
from cli import app
from ntm.checkpoint import load_pretrained, save_pretrained
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig, checkpointing, fit
from tests.conftest import random_teacher

runner = CliRunner()


def squash(text: str) -> str:
    """`text` without whitespace: rich wraps long error lines (paths included) at the terminal width."""
    return "".join(text.split())


def cli_error(args: list[str | Path]) -> str:
    """The error of a CLI call that must exit 2, without whitespace (compare with `squash(expected) in ...`)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return squash(result.output)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --- presets -------------------------------------------------------------------------------------------


def edited(preset_file: Path, old: str, new: str) -> Path:
    text = preset_file.read_text()
    assert old in text
    preset_file.write_text(text.replace(old, new))
    return preset_file


def test_preset_path_that_does_not_exist(tmp_path):
    message = cli_error(["reproduce", "--preset", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out")])
    assert squash(f"preset file {tmp_path / 'nope.toml'} does not exist; bundled presets: ") in message
    assert "tiny" in message
    assert files_under(tmp_path) == []


def test_preset_that_is_not_toml(preset_file, tmp_path):
    edited(preset_file, "world = \"shapes\"", "world = shapes")
    message = cli_error(["reproduce", "--preset", str(preset_file), "--out", str(tmp_path / "out")])
    assert squash(f"preset {preset_file} is not valid TOML") in message and squash("line 3") in message
    assert not (tmp_path / "out").exists()


def test_preset_missing_a_required_key(preset_file):
    edited(preset_file, 'world = "shapes"\n', "")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['world'\]"):
        load_preset(preset_file)


DESCRIPTION = 'description = "test preset: a few training steps, a handful of prompts"'


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("resolution = 16", 'resolution = "16"', "resolution = '16' must be a positive integer, e.g. resolution = 16"),
        ('seeds = [0]', "seeds = [-1]", r"seeds = \[-1\] must be a non-empty list of integers >= 0"),
        ('suites = ["geneval", "nll"]', 'suites = "geneval"', r"suites = 'geneval' must be a non-empty list of names"),
        (DESCRIPTION, "description = 3", "description = 3 must be a string"),
    ],
    ids=["resolution-string", "negative-seed", "suites-not-a-list", "description-number"],
)
def test_preset_value_of_the_wrong_type(preset_file, old, new, message):
    edited(preset_file, old, new)
    with pytest.raises(ValueError, match=f"preset {preset_file}: {message}"):
        load_preset(preset_file)


def test_training_option_of_the_wrong_type_or_range(preset_file, tmp_path):
    edited(preset_file, "[train.flow_matching]\nsteps = 3", '[train.flow_matching]\nsteps = "ten"')
    message = cli_error(["train", "fm-teacher", "--preset", str(preset_file), "--out", str(tmp_path / "out")])
    expected = "[train.flow_matching]: training option steps = 'ten' must be an integer, e.g. steps = 1000"
    assert squash(expected) in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"lr = 0 must be > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match=r"cfg_dropout = 1.5 must be in \[0, 1\]"):
        TrainConfig(cfg_dropout=1.5)
    with pytest.raises(ValueError, match=r"batch_size = True must be an integer"):
        TrainConfig(batch_size=True)


def test_preset_naming_an_unknown_model_world_or_model_option(preset_file):
    edited(preset_file, '"ntm-no-transporter"]', '"ntm-no-transporter", "ntm-xl"]')
    with pytest.raises(ValueError, match=f"preset {preset_file}: unknown model 'ntm-xl'; available: .*fix models"):
        load_preset(preset_file)
    edited(preset_file, ', "ntm-xl"]', "]")
    edited(preset_file, 'world = "shapes"', 'world = "planets"')
    with pytest.raises(ValueError, match="unknown world 'planets'; available: digits, .*shapes"):
        load_preset(preset_file)
    edited(preset_file, 'world = "planets"', 'world = "shapes"')
    edited(preset_file, "bound_samples = 2\n\n[model_options.ntm-fast]", "bound_sampels = 2\n[model_options.ntm-fast]")
    with pytest.raises(ValueError, match=r"\[model_options.ntm\]: unknown option\(s\) \['bound_sampels'\]; valid: "):
        load_preset(preset_file)


# --- prompt / metadata files ---------------------------------------------------------------------------


def test_geneval_metadata_with_bad_rows_names_the_line(tmp_path):
    good = '{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}'
    path = tmp_path / "meta.jsonl"
    path.write_text(good + "\n\n" + '{"tag": "single_object", "prompt": "a photo of a circle"\n')
    with pytest.raises(ValueError, match=f"{path}:3: bad GenEval metadata row"):
        load_geneval_metadata(path)
    path.write_text(good + "\n" + good.replace('"single_object"', '"colour"') + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: bad GenEval metadata row: tag 'colour' is not one of"):
        load_geneval_metadata(path)


# --- generators returning the wrong images -------------------------------------------------------------


class BadImages(Generator):
    """Returns images of a given shape and dtype, whatever the world wants."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        self.shape, self.dtype = tuple(shape), getattr(torch, dtype)
        self.spec = GeneratorSpec(name, "test", 1, 1, 0, "none")

    @classmethod
    def from_context(cls, ctx: BuildContext, name: str, shape: list[int], dtype: str) -> BadImages:
        return cls(name, shape, dtype)

    def sample(self, prompts, seeds, steps=None) -> Tensor:
        return torch.zeros((len(prompts), *self.shape), dtype=self.dtype)


register("test-bad-images", BadImages, "test double: images of a chosen shape")


@pytest.mark.parametrize(
    ("shape", "dtype", "got"),
    [
        ([3, 32, 32], "uint8", r"torch.uint8 \(12, 3, 32, 32\)"),
        ([1, 16, 16], "uint8", r"torch.uint8 \(12, 1, 16, 16\)"),
        ([16, 16, 3], "uint8", r"torch.uint8 \(12, 16, 16, 3\)"),
        ([3, 16, 16], "float32", r"torch.float32 \(12, 3, 16, 16\)"),
    ],
    ids=["size", "channels", "channels-last", "float"],
)
def test_generator_returning_wrong_images(preset_file, tmp_path, shape, dtype, got):
    preset = load_preset(preset_file)
    preset = dataclasses.replace(preset, model_options={"test-bad-images": {"shape": shape, "dtype": dtype}})
    out = tmp_path / "out"
    expected = rf"test-bad-images.sample returned {got} for 12 prompts; the protocol is a uint8 tensor "
    expected += r"\(N, C, H, W\) = \(12, 3, 16, 16\). Fix the adapter's sample\(\)"
    with pytest.raises(ValueError, match=expected):
        evaluate(preset, out, models=["test-bad-images"], suites=["geneval"], progress=False)
    assert files_under(out / "records") == []


# --- checkpoints and weights ---------------------------------------------------------------------------


@pytest.fixture
def saved_teacher(tmp_path, one_thread) -> Path:
    return random_teacher().save_pretrained(tmp_path / "teacher")


def test_checkpoint_of_another_kind(saved_teacher):
    config = json.loads((saved_teacher / "config.json").read_text())
    expected = f"{saved_teacher} holds a '{config['kind']}' model, not a 'ntm'; pass a 'ntm' folder"
    with pytest.raises(ValueError, match=expected):
        load_pretrained(saved_teacher, kind="ntm")


def test_checkpoint_whose_weights_belong_to_another_config(saved_teacher):
    config = json.loads((saved_teacher / "config.json").read_text())
    config["backbone"]["width"] *= 2
    (saved_teacher / "config.json").write_text(json.dumps(config))
    expected = f"the weights in {saved_teacher} do not fit the .* model its config.json describes "
    expected += r"\(Error.*size mismatch.*delete it to retrain it, or pass a matching folder"
    with pytest.raises(ValueError, match=expected):
        FlowMatchingTeacher.from_pretrained(saved_teacher)


def test_truncated_weights_and_damaged_config(saved_teacher):
    weights = saved_teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors is truncated or not a safetensors file .*delete the"):
        FlowMatchingTeacher.from_pretrained(saved_teacher)
    (saved_teacher / "config.json").write_text('{"kind": "flow_matching_teacher", ')
    with pytest.raises(ValueError, match="config.json is not valid JSON .* the folder is damaged"):
        load_pretrained(saved_teacher)


def test_missing_weights_folder_or_files(tmp_path):
    expected = f"{tmp_path} is not a saved model: missing model.safetensors, config.json. Pass a folder written by"
    with pytest.raises(FileNotFoundError, match=expected):
        load_pretrained(tmp_path)


def test_missing_local_weights_path_of_a_pretrained_model(preset_file, tmp_path):
    out = tmp_path / "out"
    path = tmp_path / "no-such-folder"
    text = preset_file.read_text() + f'\n[model_options.lcm]\npath = "{path}"\n'
    preset_file.write_text(text)
    message = cli_error(["eval", "--models", "lcm", "--suites", "geneval", "--preset", str(preset_file), "--out", out])
    assert squash(f"lcm: path {path} does not exist. Download SimianLuo/LCM_Dreamshaper_v7") in message
    assert squash('[model_options.lcm] path = "/local/folder"') in message and files_under(out) == []


def mlp_fit(config: TrainConfig, width: int = 8) -> None:
    torch.manual_seed(0)
    model = nn.Linear(width, width)
    fit(model, lambda step: model(torch.ones(2, width)).square().mean(), config, progress=False)


def test_training_checkpoint_of_another_budget_model_or_truncated(tmp_path, one_thread):
    partial = tmp_path / "partial"
    with checkpointing(partial):
        mlp_fit(TrainConfig(steps=5, checkpoint_every=2))
    path = partial / "fit-0.pt"
    with checkpointing(partial), pytest.raises(ValueError, match=f"training checkpoint {path} was written for another "
                                              f"training budget .*; delete {path} to train this model from step 0"):
        mlp_fit(TrainConfig(steps=5, lr=0.5, checkpoint_every=2))
    with checkpointing(partial), pytest.raises(ValueError, match=f"{path} does not fit this model .*size mismatch"):
        mlp_fit(TrainConfig(steps=5, checkpoint_every=2), width=4)
    path.write_bytes(path.read_bytes()[:100])
    with checkpointing(partial), pytest.raises(ValueError, match=f"training checkpoint {path} is unreadable"):
        mlp_fit(TrainConfig(steps=5, checkpoint_every=2))


class Diverging(Generator):
    """Trains (through the checkpoint cache) a linear map whose loss turns NaN at step 3."""

    def __init__(self, name: str) -> None:
        self.spec = GeneratorSpec(name, "test", 1, 1, 0, "none")

    @classmethod
    def from_context(cls, ctx: BuildContext, name: str) -> Diverging:
        config = TrainConfig(steps=6, checkpoint_every=2)

        def run(directory: Path) -> None:
            model = nn.Linear(2, 2)
            loss = lambda step: model(torch.ones(1, 2)).sum() * (float("nan") if step == 3 else 1.0)  # noqa: E731
            ema, _ = fit(model, loss, config, "train diverging", progress=False)
            save_pretrained(directory, ema.state_dict(), {})

        ctx.checkpoint("diverging", {"train": config.__dict__}, run)
        return cls(name)

    def sample(self, prompts, seeds, steps=None) -> Tensor:
        raise AssertionError("never reached")


register("test-diverging", Diverging, "test double: a training run whose loss turns NaN")


def test_non_finite_loss_stops_training_with_the_step_and_the_kept_checkpoint(preset_file, tmp_path, one_thread):
    out = tmp_path / "out"
    message = cli_error(["eval", "--models", "test-diverging", "--suites", "nll", "-p", preset_file, "--out", out])
    expected = "train diverging: the loss is nan at step 3; training stopped and the last good training checkpoint"
    assert squash(expected) in message and squash("checkpoint (step 2) is kept in") in message
    assert squash("Lower lr, raise warmup or lower grad_clip") in message
    [partial] = (out / "checkpoints").glob("diverging-*.partial")
    assert files_under(out) == ["checkpoints", f"checkpoints/{partial.name}", f"checkpoints/{partial.name}/fit-0.pt"]


# --- results folders -----------------------------------------------------------------------------------


def test_results_folder_with_records_of_another_suite_version(preset_file, tmp_path):
    out = tmp_path / "out"
    store = RecordStore(out / "records")
    spec = GeneratorSpec("ground-truth", "reference", 0, 0, 0, "renderer")
    key = store.key(spec, "geneval", "0", 0)
    store.write(key, [], {"record": key.stem, "suite": "geneval", "suite_version": "0"}, {})
    before = files_under(out)
    message = cli_error(["eval", "--models", "ground-truth", "--preset", str(preset_file), "--out", str(out)])
    expected = f"{out / 'records'} holds 'geneval' records of another suite version (v0: 1 record(s), e.g. {key.stem})"
    assert squash(expected) in message
    assert squash("this code's 'geneval' is v1; versions are not comparable. Use a new --out folder") in message
    assert files_under(out) == before


def test_results_folder_with_a_damaged_record(preset_file, tmp_path):
    out = tmp_path / "out"
    bad = out / "records" / "ntm" / "geneval.v1.seed0.abc.summary.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"record": ')
    message = cli_error(["eval", "--models", "ground-truth", "--preset", str(preset_file), "--out", str(out)])
    assert squash(f"record {bad} is not valid JSON") in message
    assert squash("delete it and re-run to recompute that piece") in message
    assert files_under(out / "records") == ["ntm", "ntm/geneval.v1.seed0.abc.summary.json"]


def test_results_folder_that_cannot_be_written(preset_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "out"
    message = cli_error(["eval", "--models", "ground-truth", "--preset", str(preset_file), "--out", str(out)])
    assert squash(f"results folder {out} is not writable (") in message
    assert squash("pass --out with a folder you can write to") in message
    message = cli_error(["train", "ntm", "--preset", str(preset_file), "--out", str(out)])
    assert squash(f"results folder {out} is not writable") in message
    assert files_under(tmp_path) == ["a-file", "test.toml"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda():
    with pytest.raises(ValueError, match="device 'cuda' was asked for but CUDA is not available here; use --device"):
        resolve_device("cuda")


def test_catalogue_lists_every_test_here():
    """docs/errors.md names a test for each of its (>= 20) cases; each named test exists; each test here is named."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    rows = [line for line in doc.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 20
    cells = [row.split("|")[-2] for row in rows]
    named = {pair for cell in cells for pair in re.findall(r"(test_\w+\.py)::(test_\w+)", cell)}
    assert all(re.findall(r"::test_\w+", cell) for cell in cells)
    tests = Path(__file__).parent
    missing = [f"{file}::{test}" for file, test in named if f"def {test}(" not in (tests / file).read_text()]
    assert missing == []
    here = {name for name in globals() if name.startswith("test_")} - {"test_catalogue_lists_every_test_here"}
    assert here <= {test for file, test in named if file == Path(__file__).name}
