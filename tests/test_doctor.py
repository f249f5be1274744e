"""`ntm-bench doctor`: every missing input of a preset in one list, each with its fix; "ready" when none is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from benchmarks.doctor import diagnose, output_problems
from benchmarks.fid import INCEPTION_FILE
from cli import app

runner = CliRunner()
CUDA = torch.cuda.is_available()


def photo_folder(root: Path, files: dict[str, str], write: tuple[str, ...] | None = None) -> Path:
    """A folder world: captions.jsonl listing `files` (name -> caption); the images named in `write` are written."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"file": name, "caption": caption} for name, caption in files.items()]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in files if write is None else write:
        Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(root / name)
    return root


def local_inputs(root: Path) -> dict[str, Path]:
    """Folders shaped like the real downloads (the doctor reads no weights, so the weight files are empty)."""
    pipeline, owl, clip, inception = root / "sdxl-turbo", root / "owlv2", root / "clip", root / "inception"
    for folder in (pipeline, owl, clip, inception):
        folder.mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (owl / "config.json").write_text(json.dumps({"model_type": "owlv2"}))
    (owl / "model.safetensors").write_bytes(b"")
    (clip / "open_clip_config.json").write_text("{}")
    (clip / "open_clip_model.safetensors").write_bytes(b"")
    (inception / INCEPTION_FILE).write_bytes(b"")
    photos = photo_folder(root / "photos", {"a.png": "a grey photo", "b.png": "another grey photo"})
    return {"pipeline": pipeline, "owl": owl, "clip": clip, "inception": inception, "photos": photos}


def real_preset(path: Path, inputs: dict[str, Path], models: str = '"sdxl-turbo"', device: str = "cpu") -> Path:
    path.write_text(f"""
description = "doctor test"
world = "folder"
resolution = 32
device = "{device}"
models = [{models}]
suites = ["geneval-real", "fid", "nll"]
backbone = {{}}
train = {{}}

[world_options]
path = "{inputs['photos']}"

[model_options.sdxl-turbo]
path = "{inputs['pipeline']}"

[suite_options.geneval-real]
detector_path = "{inputs['owl']}"
clip_path = "{inputs['clip']}"

[suite_options.fid]
features = "inception"
inception_path = "{inputs['inception']}"
images = 2
""")
    return path


def test_every_input_in_place_is_ready(tmp_path):
    preset = real_preset(tmp_path / "real.toml", local_inputs(tmp_path / "inputs"))
    diagnosis = diagnose(preset, tmp_path / "out")
    assert diagnosis.problems == [] and diagnosis.ready
    result = runner.invoke(app, ["doctor", "--preset", str(preset), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output
    assert not (tmp_path / "out").exists()  # nothing is created


def test_several_missing_inputs_are_listed_together(tmp_path):
    inputs = local_inputs(tmp_path / "inputs")
    inputs |= {
        "photos": photo_folder(tmp_path / "half", {"a.png": "one", "b.png": "two"}, write=("a.png",)),
        "pipeline": tmp_path / "nowhere" / "sdxl-turbo",
        "owl": inputs["clip"],  # an open_clip folder where the OWLv2 detector should be
        "inception": tmp_path / "no-inception",
    }
    preset = real_preset(tmp_path / "broken.toml", inputs, models='"sdxl-turbo", "nope"', device="cuda")
    (tmp_path / "file").write_text("not a folder")
    diagnosis = diagnose(preset, tmp_path / "file" / "out")
    expected = [
        "world 'folder': 1 of 2 images listed",
        "unknown model 'nope'",
        "sdxl-turbo: path",
        "geneval-real: detector_path",
        "fid: clean-fid's InceptionV3 weights were not found",
        "results folder",
    ] + ([] if CUDA else ["preset device: 'cuda' is asked for but CUDA is not available"])
    for start in expected:
        assert sum(p.startswith(start) for p in diagnosis.problems) == 1, (start, diagnosis.problems)
    assert len(diagnosis.problems) == len(expected), diagnosis.problems
    result = runner.invoke(app, ["doctor", "--preset", str(preset), "--out", str(tmp_path / "file" / "out")])
    assert result.exit_code == 2
    listed = " ".join(result.output.split())
    assert f"{len(expected)} problem(s)" in listed
    assert all(" ".join(p.split()) in listed for p in diagnosis.problems)


def test_preset_keys_budgets_and_options_are_checked_key_by_key(tmp_path, preset_file):
    text = preset_file.read_text()
    text = text.replace('world = "shapes"', 'world = "shapes"\ncolour = "blue"')
    text = text.replace("[train.ntm]\nsteps = 3", "[train.ntm]\nsteps = 3\nlearning_rate = 1")
    text = text.replace("[suite_options.nll]\nimages = 4", "[suite_options.nll]\nimages = 4\nbins = 3")
    text = text.replace("[model_options.ntm]\nguidance = 2.0", "[model_options.ntm]\nguidance = 2.0\ntemperature = 1")
    text = text.replace('size = "tiny"\npatch = 4', 'size = "huge"\npatch = 5')
    preset = tmp_path / "keys.toml"
    preset.write_text(text)
    problems = diagnose(preset, tmp_path / "out").problems
    expected = [
        "preset: unknown key 'colour'", "[train.ntm]: unknown training option(s) ['learning_rate']",
        "suite nll: unknown option(s) ['bins']", "[model_options.ntm]: unknown option(s) ['temperature']",
        "[backbone] size = 'huge'", "[backbone] patch = 5",
    ]
    for start in expected:
        assert sum(p.startswith(start) for p in problems) == 1, (start, problems)
    assert len(problems) == len(expected), problems


def test_the_tiny_preset_is_ready_but_for_a_missing_eval_clip_asset(tmp_path):
    diagnosis = diagnose("tiny", tmp_path / "results")
    assert all(p.startswith("fid: no eval-CLIP for world 'shapes' at 16 px") for p in diagnosis.problems), diagnosis
    assert len(diagnosis.problems) <= 1


def test_the_paper_preset_names_every_placeholder(tmp_path):
    if Path("/data").exists():
        pytest.skip("this machine has a /data folder; the paper preset's placeholders may exist")
    problems = diagnose("paper", tmp_path / "results").problems
    for start in ("world 'folder': path /data/", "fid: clean-fid's InceptionV3", "geneval-real: detector_path /data/",
                  "geneval-real: clip_path /data/"):
        assert any(p.startswith(start) for p in problems), (start, problems)
    for model in ("lcm", "lcm-lora", "tcd", "sdxl-turbo", "sdxl-lightning", "sd35-turbo", "flux-schnell"):
        assert any(p.startswith(f"{model}: path /data/") for p in problems), (model, problems)


def test_folder_world_reports_bad_lines_and_a_missing_split(tmp_path):
    root = photo_folder(tmp_path / "photos", {"a.png": "a photo"})
    with (root / "captions.jsonl").open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"file": "a.png", "caption": "x", "split": "val"}) + "\n")
    from benchmarks.worlds.folder import check_inputs

    problems = check_inputs({"path": str(root)})
    assert len(problems) == 2 and ":2 is not JSON" in problems[0] and "split 'val'" in problems[1]
    only_train = photo_folder(tmp_path / "train-only", {"a.png": "a photo"})
    (only_train / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "c", "split": "train"}) + "\n")
    assert check_inputs({"path": str(only_train)}) == [
        f"world 'folder': {only_train / 'captions.jsonl'} has no test images (rows without \"split\" are test)"
    ]


def test_output_folder_checks_create_nothing(tmp_path):
    assert output_problems(tmp_path / "a" / "b") == []
    (tmp_path / "f").write_text("")
    out, file = tmp_path / "f" / "out", tmp_path / "f"
    assert output_problems(out) == [
        f"results folder {out}: {file} is a file, not a folder; pass --out with another folder"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
