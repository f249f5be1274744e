"""The small (one GPU) and paper (real weights and photos) presets, and the folder world the paper preset reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from baselines.flow_matching import teacher_backbone
from baselines.registry import get_entry
from benchmarks.presets import PRESET_DIR, load_preset
from benchmarks.runner import build_context, evaluate
from benchmarks.worlds import get_world
from benchmarks.worlds.folder import FolderWorld
from ntm.backbone import count_parameters
from ntm.teacher import FlowMatchingTeacher

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
TEACHER_STUDENTS = ("ntm", "consistency", "distilled", "adversarial")


def adapters(models: tuple[str, ...]) -> set[str]:
    import benchmarks.reference  # noqa: F401  (registers ground-truth)

    return {get_entry(m).target for m in models}


def test_small_has_every_family_and_suite_of_tiny_at_one_budget():
    tiny, small = load_preset("tiny"), load_preset("small")
    assert adapters(small.models) == adapters(tiny.models)
    # tiny leaves out the f_T = identity ablation row to stay within 15 minutes on 2 CPU cores
    assert set(small.models) == set(tiny.models) | {"ntm-no-transporter"}
    # fid and clipscore read an eval-CLIP of the preset's resolution; only the 16 px one ships
    assert set(small.suites) == set(tiny.suites) - {"fid", "clipscore"} and set(small.train) == set(tiny.train)
    assert small.audit is not None and tiny.audit is not None
    assert (small.world, small.resolution, small.device, small.backbone["size"]) == ("shapes", 32, "cuda", "small")
    budgets = {(small.train[r]["steps"], small.train[r]["batch_size"]) for r in TEACHER_STUDENTS}
    assert len(budgets) == 1, budgets  # every method that learns from the teacher gets the NTMs' budget
    # the teacher's batch and the NTM's predictor samples per step (4 states per trajectory) are equal
    assert small.train["flow_matching"]["batch_size"] == 4 * small.train["ntm"]["batch_size"]


def test_small_backbone_has_tens_of_millions_of_parameters(tmp_path):
    ctx = build_context(load_preset("small"), tmp_path, device="cpu", progress=False)
    parameters = count_parameters(FlowMatchingTeacher(teacher_backbone(ctx)))
    assert 10e6 < parameters < 50e6, parameters


def test_small_preset_builds_and_scores_on_cpu_with_one_step_budgets(tmp_path, one_thread):
    text = (PRESET_DIR / "small.toml").read_text()
    text = re.sub(r"(?m)^steps = \d+", "steps = 1", text)
    text = re.sub(r"(?m)^batch_size = \d+", "batch_size = 2", text)
    text = re.sub(r"(?m)^(prompts_per_category|images_per_prompt) = \d+", r"\1 = 1", text)
    text = text.replace('device = "cuda"', 'device = "cpu"')
    path = tmp_path / "small-cpu.toml"
    path.write_text(text)
    preset = load_preset(path)
    assert preset.train["flow_matching"] == load_preset("small").train["flow_matching"] | {"steps": 1, "batch_size": 2}
    [summary] = evaluate(preset, tmp_path / "out", models=["fm-teacher-4"], suites=["geneval"], progress=False)
    assert summary["resolution"] == 32
    assert summary["spec"]["training"] | {"teacher_nfe": 0} == {
        "backbone": "small", "optimizer_steps": 1, "batch_size": 2, "teacher_nfe": 0
    }
    assert 0.0 <= summary["metrics"]["geneval_overall"] <= 1.0


def test_paper_preset_reads_published_models_and_photos_from_local_paths():
    paper = load_preset("paper")
    assert paper.world == "folder" and paper.world_options["path"].startswith("/data/")
    pretrained = [m for m in paper.models if m not in ("ntm-diffusers", "diffusers-latent-flow")]
    assert {get_entry(m).target for m in pretrained} == {"baselines.pretrained:PretrainedGenerator"}
    assert {"sdxl-turbo", "sdxl-lightning", "lcm", "flux-schnell", "sd35-turbo"} <= set(pretrained)
    assert all(paper.model_options[m]["path"].startswith("/data/") for m in pretrained)
    assert {"geneval-real", "fid", "nll"} <= set(paper.suites)
    assert paper.suite_options["fid"]["features"] == "inception"
    # the one trained row: an NTM fine-tuned from a local SD3.5 folder on a local caption folder, on its own budget
    ntm = paper.model_options["ntm-diffusers"]
    assert "ntm-diffusers" in paper.models and ntm["init"].startswith("diffusers:/data/") and ntm["data"].startswith("/data/")
    assert paper.model_options["diffusers-latent-flow"]["init"] == ntm["init"]  # its NLL's comparison row
    assert paper.backbone == {} and set(paper.train) == {"ntm_diffusers"}


def photos(root: Path, rows: list[dict], images: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, pixels in images.items():
        Image.fromarray(pixels).save(root / name)
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def banded(width: int, height: int, bands: list[tuple[int, tuple[int, int, int]]], axis: int) -> np.ndarray:
    """An RGB image of colour bands along `axis` (1: columns, 0: rows), each (length, colour)."""
    image = np.zeros((height, width, 3), np.uint8)
    start = 0
    for length, colour in bands:
        index = [slice(None)] * 2
        index[axis] = slice(start, start + length)
        image[tuple(index)] = colour
        start += length
    return image


def test_folder_world_resizes_the_short_side_and_crops_the_centre(tmp_path):
    # 40 x 20 -> 20 x 10 -> columns 5..15: the red and blue side bands (original columns 0-9 and 30-39) are cut off
    wide = banded(40, 20, [(10, RED), (20, GREEN), (10, BLUE)], axis=1)
    tall = banded(20, 40, [(10, RED), (20, GREEN), (10, BLUE)], axis=0)
    root = photos(tmp_path / "p", [{"file": "wide.png", "caption": "wide"}, {"file": "tall.png", "caption": "tall"}],
                  {"wide.png": wide, "tall.png": tall})
    world = get_world("folder", 10, path=str(root))
    batch = world.batch([0, 1], split="test")
    assert batch.images.shape == (2, 3, 10, 10) and batch.images.dtype == np.uint8
    for image, centre in ((batch.images[0], np.s_[:, :, 2:8]), (batch.images[1], np.s_[:, 2:8, :])):
        # the centre 6 columns (rows) come from original columns (rows) 14-26: pure green, up to rounding
        assert np.abs(image[centre].astype(int) - np.array(GREEN)[:, None, None]).max() <= 1
        assert image[1].min() > image[0].max()  # even the edges are mostly green: cropped, not squashed


def test_folder_world_splits_wrap_and_render_by_caption(tmp_path):
    pixels = {f"{i}.png": np.full((12, 12, 3), 20 * i, np.uint8) for i in range(4)}
    rows = [
        {"file": "0.png", "caption": "a  dog", "split": "train"},
        {"file": "1.png", "caption": "a cat"},
        {"file": "2.png", "caption": "a cat", "split": "test"},
        {"file": "3.png", "caption": "a bird"},
    ]
    world = FolderWorld(photos(tmp_path / "p", rows, pixels), resolution=12)
    assert (world.split_size("train"), world.split_size("test")) == (1, 3)
    test = world.batch([0, 1, 2, 3], split="test")
    assert test.captions == ["a cat", "a cat", "a bird", "a cat"]  # index 3 wraps to 0
    assert [int(im[0, 0, 0]) for im in test.images] == [20, 40, 60, 20]
    assert world.batch([5], split="train").captions == ["a dog"]  # whitespace normalised
    assert world.vocabulary() == ["a", "bird", "cat", "dog"]
    rendered = {int(world.render_caption("a cat", seed)[0, 0, 0]) for seed in range(20)}
    assert rendered == {20, 40}  # only test images captioned "a cat"
    with pytest.raises(ValueError, match="has the caption"):
        world.render_caption("a dog", 0)  # a train image: not a held-out render
    with pytest.raises(NotImplementedError, match="geneval-real"):
        world.detect(test.images[0])
    with pytest.raises(ValueError, match=r"no option\(s\) \['colour'\]; valid: path, captions"):
        get_world("folder", 12, path=str(tmp_path / "p"), colour="red")
