"""The clipscore suite: torchmetrics' CLIPScore convention, ground truth above noise, both CLIP sources."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torchmetrics.functional.multimodal import clip_score as torchmetrics_clip_score

import benchmarks.features as features
from baselines.base import Generator, GeneratorSpec
from benchmarks.reference import GroundTruth
from benchmarks.suites.base import NotApplicable
from benchmarks.suites.clipscore import ClipScoreSuite, clip_scores
from benchmarks.worlds import get_world

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"prompts_per_category": 2, "images_per_prompt": 2}


class Noise(Generator):
    """Uniform random pixels, whatever the prompt."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.spec = GeneratorSpec(name="noise", family="reference", steps=0, nfe=0, parameters=0, weights_hash="noise")

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> torch.Tensor:
        return torch.stack([
            torch.randint(0, 256, (3, self.resolution, self.resolution), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(s))
            for s in seeds
        ])


def _lookup_clip(image_features: torch.Tensor, text_features: torch.Tensor):
    """A torchmetrics (model, processor) pair whose "images" are row indices into fixed embeddings."""

    def processor(images=None, text=None, **_):
        if images is not None:
            return {"pixel_values": torch.stack(images)}
        return {"input_ids": torch.tensor([[int(t)] for t in text]), "attention_mask": torch.ones(len(text), 1)}

    model = SimpleNamespace(
        config=SimpleNamespace(),
        get_image_features=lambda pixels: image_features[pixels[:, 0, 0, 0].long()],
        get_text_features=lambda ids, mask: text_features[ids[:, 0]],
    )
    model.to = lambda device: model
    return lambda: (model, processor)


@pytest.mark.parametrize("shift", [0.0, 1.5, -3.0])
def test_clip_scores_equal_torchmetrics(shift: float):
    """Un-normalised embeddings with mixed-sign cosines: torchmetrics clamps the mean, not each pair."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(7, 5, generator=g) * 3
    text = torch.randn(7, 5, generator=g) + shift * image
    index_images = torch.arange(7, dtype=torch.float32)[:, None, None, None].expand(7, 3, 2, 2)
    reference = torchmetrics_clip_score(
        index_images, [str(i) for i in range(7)], model_name_or_path=_lookup_clip(image, text)
    )
    score, per_pair = clip_scores(image, text)
    cosines = torch.nn.functional.cosine_similarity(image, text, dim=1).double().numpy()
    np.testing.assert_allclose(per_pair, 100 * cosines, rtol=1e-5)
    assert score == pytest.approx(float(reference), rel=1e-5, abs=1e-4)
    assert score == pytest.approx(max(100 * cosines.mean(), 0.0), rel=1e-5, abs=1e-4)
    if shift == 0.0:
        assert (cosines < 0).any() and (cosines > 0).any()  # a per-pair clamp would differ here


def test_ground_truth_renders_score_above_noise():
    world = get_world("shapes", 16)
    suite = ClipScoreSuite(SMALL)
    truth = suite.run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False)
    noise = suite.run(Noise(16), world, seed=0, progress=False)
    assert len(truth.rows) == 6 * 2 * 2
    assert truth.metrics["clipscore"] > noise.metrics["clipscore"] + 5 * truth.metrics["clipscore_sem"]
    shipped = features.load_eval_clip("shapes", 16)
    assert truth.metrics["clipscore_feature_hash"] == shipped.weights_hash
    assert truth.metrics["clipscore_feature_accuracy"] == shipped.report["accuracy"] >= 0.95  # into the protocol
    assert truth.metrics["clipscore"] == pytest.approx(max(np.mean([r["clipscore"] for r in truth.rows]), 0.0))


def test_missing_eval_clip_is_not_applicable_and_names_the_command(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(features, "ASSETS", tmp_path)
    world = get_world("shapes", 32)
    with pytest.raises(NotApplicable, match="ntm-bench assets build --world shapes --res 32"):
        ClipScoreSuite(SMALL).run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False)


def test_missing_clip_path_is_a_clear_error(tmp_path: Path):
    world = get_world("shapes", 16)
    suite = ClipScoreSuite({**SMALL, "clip_path": str(tmp_path / "ViT-L-14")})
    with pytest.raises(FileNotFoundError, match="clip_path.*ViT-L/14"):
        suite.run(GroundTruth(world, "ground-truth"), world, seed=0, progress=False)


def test_clip_path_runs_a_local_open_clip_folder(tmp_path: Path):
    """A tiny random open_clip model with the standard BPE tokenizer stands in for ViT-L/14; images are resized."""
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny")
    folder = tmp_path / "clip"
    folder.mkdir()
    save_file(model.state_dict(), folder / features.WEIGHTS_FILE)
    (folder / features.CONFIG_FILE).write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    world = get_world("shapes", 16)
    result = ClipScoreSuite({**SMALL, "clip_path": str(folder)}).run(
        GroundTruth(world, "ground-truth"), world, seed=0, progress=False
    )
    image = features.EvalClip.from_folder(folder)
    assert image.resolution == 32 and result.metrics["clipscore_feature_hash"] == image.weights_hash
    assert result.metrics["clipscore_feature_accuracy"] is None  # no retrieval report for a user's CLIP
    rows = result.rows
    prompts = [r["prompt"] for r in rows]
    renders = np.stack([world.render_caption(p, r["seed"]) for p, r in zip(prompts, rows)])
    expected = 100 * (image.image_features(renders) * image.text_features(prompts)).sum(1)
    np.testing.assert_allclose([r["clipscore"] for r in rows], expected.numpy(), rtol=1e-4, atol=1e-3)
