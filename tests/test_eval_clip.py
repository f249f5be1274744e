"""The shapes eval-CLIP: tokenizer, feature API, deterministic build, shipped asset and its held-out retrieval."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.features as features
from benchmarks.features import (
    WEIGHTS_FILE,
    EvalClip,
    WordTokenizer,
    build_eval_clip,
    exactly_describes,
    load_eval_clip,
    retrieval_accuracy,
)
from benchmarks.worlds import get_world
from benchmarks.worlds.shapes import parse_caption

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    return get_world("shapes", 16)


@pytest.fixture(scope="module")
def clip() -> EvalClip:
    return load_eval_clip("shapes", 16)


def test_word_tokenizer_ids_padding_and_errors():
    tok = WordTokenizer(["a", "circle", "red"], context_length=6)
    # <sot>=1, then words from id 3 in vocabulary order, <eot>=2, zero padding
    assert tok(["a red circle", "A  circle"]).tolist() == [[1, 3, 5, 4, 2, 0], [1, 3, 4, 2, 0, 0]]
    assert tok.vocab_size == 6
    with pytest.raises(ValueError, match="blue"):
        tok(["a blue circle"])
    with pytest.raises(ValueError, match="longer"):
        tok(["a a a a a"])


def test_features_are_normalised_and_match_between_array_and_tensor(clip, world):
    batch = world.batch(range(5), split="test")
    f_np = clip.image_features(batch.images)
    f_t = clip.image_features(torch.from_numpy(batch.images))
    text = clip.text_features(batch.captions)
    assert f_np.shape == text.shape == (5, features.EMBED_DIM)
    assert f_np.dtype == text.dtype == torch.float32
    torch.testing.assert_close(f_np, f_t)
    torch.testing.assert_close(f_np.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(text.norm(dim=1), torch.ones(5))
    # features do not depend on the other members of a batch
    torch.testing.assert_close(clip.image_features(batch.images[2:3]), f_np[2:3], atol=1e-5, rtol=0)
    assert clip.resolution == 16
    with pytest.raises(ValueError, match="16x16"):
        clip.image_features(np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        clip.image_features(np.zeros((1, 3, 16, 16), np.float32))


def test_shipped_asset_is_its_own_model_with_a_passing_report(clip):
    folder = features.asset_dir("shapes", 16)
    assert clip.weights_hash == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    report = clip.report
    assert report["weights_sha256"] == clip.weights_hash
    assert report["accuracy"] >= 0.95
    assert report["images"] == report["batch"] == 256
    assert {"steps", "seed", "train_seconds", "text_match_accuracy", "text_match_oracle"} <= set(report)
    # its own word-level text tower: the world's vocabulary plus three special tokens, not a generator's
    vocabulary = get_world("shapes").vocabulary()
    assert clip.model.token_embedding.num_embeddings == len(vocabulary) + 3
    assert clip.tokenize.vocabulary == vocabulary


def test_retrieval_on_a_fresh_test_batch(clip, world):
    """Held-out scenes the report did not use (test indices 256..511)."""
    result = retrieval_accuracy(clip, world, world.batch(range(256, 512), split="test"))
    assert result["accuracy"] >= 0.95
    assert result["images"] == 256


def test_exact_description_by_hand(world):
    red_circle = world.render_caption("a photo of a red circle", seed=3)
    detections = world.detect(red_circle)
    assert exactly_describes(detections, parse_caption("a photo of a circle"))
    assert exactly_describes(detections, parse_caption("a photo of a red circle"))
    assert not exactly_describes(detections, parse_caption("a photo of a blue circle"))
    assert not exactly_describes(detections, parse_caption("a photo of a square"))
    pair = world.detect(world.render_caption("a photo of a circle left of a square", seed=3))
    assert exactly_describes(pair, parse_caption("a photo of a square right of a circle"))
    assert exactly_describes(pair, parse_caption("a photo of a square and a circle"))
    assert not exactly_describes(pair, parse_caption("a photo of a circle"))  # the square is left out


def test_build_is_deterministic_in_its_seed(tmp_path: Path):
    def build(name: str, seed: int) -> bytes:
        build_eval_clip("shapes", 16, tmp_path / name, steps=2, seed=seed, batch_size=16, relation_steps=2)
        return (tmp_path / name / WEIGHTS_FILE).read_bytes()

    first, again, other = build("a", 0), build("b", 0), build("c", 1)
    assert first == again
    assert first != other
    loaded = EvalClip.from_folder(tmp_path / "a")
    assert loaded.report["weights_sha256"] == hashlib.sha256(first).hexdigest()
    assert loaded.report["steps"] == 2 and 0 <= loaded.report["accuracy"] <= 1


def test_missing_asset_names_the_build_command(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(features, "ASSETS", tmp_path)
    with pytest.raises(FileNotFoundError, match="ntm-bench assets build --world shapes --res 32"):
        load_eval_clip("shapes", 32)
