"""The teacher as a Generator: checkpoints, batch-size invariance, likelihood reporting."""

import json

import pytest
import torch

from baselines.base import to_model_space, to_pixels
from baselines.flow_matching import FlowMatchingGenerator, LikelihoodOptions
from ntm.checkpoint import load_pretrained, weights_hash
from ntm.teacher import FlowMatchingTeacher
from tests.conftest import random_teacher


def generator(model, solver="heun", steps=3, guidance=2.0) -> FlowMatchingGenerator:
    return FlowMatchingGenerator(model, "t", solver, steps, guidance, 1.0, LikelihoodOptions(steps=2, trace="hutchinson", probes=2), "w")


def test_save_load_roundtrip(tmp_path):
    model = random_teacher()
    model.save_pretrained(tmp_path / "ckpt", note="x")
    loaded = FlowMatchingTeacher.from_pretrained(tmp_path / "ckpt")
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    tokens = model.encode_text(["a red circle", ""])
    assert torch.equal(model(x, t, tokens), loaded(x, t, tokens))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["kind"] == "flow_matching_teacher" and config["metadata"] == {"note": "x"}
    assert len(weights_hash(tmp_path / "ckpt")) == 64


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing model.safetensors, config.json"):
        load_pretrained(tmp_path)
    model = random_teacher()
    model.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(ValueError, match="not a 'flow_matching_teacher'"):
        FlowMatchingTeacher.from_pretrained(tmp_path / "c")


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_samples_do_not_depend_on_batch_size(solver):
    gen = generator(random_teacher(), solver=solver)
    prompts = ["a red circle", "a photo of a circle", "red", "a circle", "of red", "photo"]
    seeds = [11, 5, 7, 2, 99, 3]
    whole = gen.sample(prompts, seeds)
    parts = torch.cat([gen.sample(prompts[i : i + 2], seeds[i : i + 2]) for i in range(0, 6, 2)])
    single = gen.sample(prompts[3:4], seeds[3:4])
    assert whole.dtype == torch.uint8 and whole.shape == (6, 3, 8, 8)
    assert torch.equal(whole, parts)
    assert torch.equal(whole[3:4], single)
    assert not torch.equal(whole[0], whole[1])


def test_likelihood_is_reported_with_estimator_and_is_batch_invariant():
    gen = generator(random_teacher())
    x = to_model_space(torch.randint(0, 256, (4, 3, 8, 8)), torch.rand(4, 3, 8, 8, dtype=torch.float64))
    prompts, seeds = ["a red circle"] * 4, [1, 2, 3, 4]
    res = gen.log_likelihood(x, prompts, seeds)
    assert res.estimator == "ode" and res.target == "data"
    assert res.settings["trace"] == "hutchinson" and res.settings["probes"] == 2 and res.settings["guidance"] == 1.0
    assert res.nll_nats.dtype == torch.float64 and res.stderr is not None
    half = gen.log_likelihood(x[2:], prompts[2:], seeds[2:])
    torch.testing.assert_close(res.nll_nats[2:], half.nll_nats, rtol=1e-6, atol=1e-4)


def test_pixel_space_roundtrip():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_pixels(to_model_space(pixels)), pixels)
    x = to_model_space(pixels, torch.rand(1, 1, 16, 16, dtype=torch.float64))
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_pixels(x), pixels)  # any dequantised value rounds back to its pixel


def test_training_is_a_function_of_its_recipe(tmp_path):
    from pathlib import Path

    from baselines.base import BuildContext
    from baselines.flow_matching import train_teacher
    from benchmarks.worlds import get_world

    hashes = []
    for run in ("a", "b"):
        torch.manual_seed(len(run) * 1234 + ord(run))  # a different global RNG state each time
        ctx = BuildContext(get_world("shapes", 16), torch.device("cpu"), Path(tmp_path / run), {"size": "tiny", "patch": 4}, {"flow_matching": {"steps": 2, "batch_size": 4}}, progress=False)
        hashes.append(weights_hash(train_teacher(ctx)))
    assert hashes[0] == hashes[1]
