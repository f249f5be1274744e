"""An NTM fine-tuned from a diffusers SD3 pipeline in its VAE latent space (`ntm-diffusers`, `ntm --init diffusers:PATH`).

The pipeline is the tiny config-built SD3 of `tests/tiny_pipelines.py` (random weights, two CLIP encoders, T5, a
VAE with latents at half the image side), saved to a folder and loaded from it; the data a tiny caption folder.
Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.autograd.functional import jacobian
from typer.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from baselines import ntm_diffusers  # noqa: E402
from baselines.ntm_diffusers import check_inputs  # noqa: E402
from benchmarks.presets import load_preset  # noqa: E402
from benchmarks.runner import train  # noqa: E402
from cli import app  # noqa: E402
from ntm.checkpoint import weights_hash  # noqa: E402
from tests import tiny_pipelines  # noqa: E402
from tests.test_transporter import _inputs, _model  # noqa: E402

CAPTIONS = ["a red circle", "a blue square", "two green circles", "a big yellow square"]
TRANSPORTER = '{ patch = 2, width = 16, blocks = 2, layers = 1, heads = 2, spline_bins = 4, mix = true }'


class Stop(Exception):
    """Stands in for a kill, raised from inside a training step."""


def caption_folder(root: Path, split: str | None = None) -> Path:
    """Four 20 x 24 photos of flat colour with noise, captioned in letters the tiny tokenizers know."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(CAPTIONS):
        pixels = np.clip(rng.normal(60 * i + 40, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append({"file": f"{i}.png", "caption": caption} | ({"split": split} if split else {}))
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ntm-diffusers")
    return {
        "sd3": tiny_pipelines.save_sd3(root / "sd3"),
        "photos": caption_folder(root / "photos"),
        "train": caption_folder(root / "train", split="train"),
    }


def preset_text(inputs: dict[str, Path], steps: int = 4) -> str:
    return f"""
description = "ntm-diffusers test"
world = "folder"
resolution = 16
device = "cpu"
seeds = [0]
models = ["ntm-diffusers"]
suites = ["nll"]
backbone = {{}}

[world_options]
path = "{inputs['photos']}"

[train.ntm_diffusers]
steps = {steps}
batch_size = 2
warmup = 1
lr = 1e-4
checkpoint_every = 2

[model_options.ntm-diffusers]
init = "diffusers:{inputs['sd3']}"
data = "{inputs['train']}"
guidance = 2.0
bound_samples = 2
max_sequence_length = 8
transporter = {TRANSPORTER}

[model_options.diffusers-latent-flow]
init = "diffusers:{inputs['sd3']}"
max_sequence_length = 8
guidance = 2.0
likelihood = {{ steps = 2, solver = "euler", trace = "hutchinson", probes = 1 }}

[suite_options.nll]
images = 2
batch_size = 2
"""


def test_it_trains_resumes_to_the_bit_samples_and_scores_in_latent_space(tmp_path, inputs, monkeypatch):
    path = tmp_path / "p.toml"
    path.write_text(preset_text(inputs))
    runner = CliRunner()
    listed = runner.invoke(app, ["models"])
    assert "ntm-diffusers" in listed.output
    result = runner.invoke(
        app, ["train", "ntm-diffusers", "--preset", str(path), "--out", str(tmp_path / "whole"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "ntm-diffusers" in result.output and "weights" in result.output
    preset = load_preset(path)
    whole = train(preset, tmp_path / "whole", "ntm-diffusers", progress=False)  # cached: no second training
    # an interrupted run (after the checkpoint at step 2) resumes to the same weights, bit for bit
    real_batch, calls = ntm_diffusers.training_batch, {"n": 0}

    def stop_at_three(world, step, *args):
        if step == 3 and calls["n"] == 0:
            calls["n"] += 1
            raise Stop
        return real_batch(world, step, *args)

    monkeypatch.setattr(ntm_diffusers, "training_batch", stop_at_three)
    with pytest.raises(Stop):
        train(preset, tmp_path / "cut", "ntm-diffusers", progress=False)
    assert calls["n"] == 1 and any((tmp_path / "cut" / "checkpoints").glob("*.partial/fit-0.pt"))
    resumed = train(preset, tmp_path / "cut", "ntm-diffusers", progress=False)
    assert resumed.spec.weights_hash == whole.spec.weights_hash
    assert resumed.spec.training == whole.spec.training and whole.spec.training["teacher_nfe"] > 0
    folders = [p for p in (tmp_path / "whole" / "checkpoints").iterdir() if p.is_dir()]
    assert len(folders) == 1 and weights_hash(folders[0]) == whole.spec.weights_hash
    # the spec names the space and the pipeline; the transformer itself trained (full fine-tuning)
    s = whole.spec.settings
    assert s["nll_space"] == "latent" and s["latent_shape"] == [4, 8, 8] and s["pipeline"] == "StableDiffusion3Pipeline"
    assert s["init"].startswith("diffusers:") and s["fine_tuning"] == "full" and whole.spec.nfe == 8
    pristine = ntm_diffusers.load_parts(f"diffusers:{inputs['sd3']}", torch.device("cpu"), max_sequence_length=8)
    before = pristine.velocity.net.state_dict()
    after = whole.model.predictor.velocity.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # 4-step sampling through the VAE: one image per seed, whatever the batch
    images = whole.sample(CAPTIONS[:3], [5, 6, 7])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 16, 16)
    assert torch.equal(whole.sample(CAPTIONS[1:2], [6])[0], images[1])
    # the nll suite reports the latent density per latent dimension, under its own names
    from benchmarks.suites import get_suite
    from benchmarks.worlds import get_world

    world = get_world("folder", 16, path=str(inputs["photos"]))
    metrics = get_suite("nll", {"images": 2, "batch_size": 2}).run(whole, world, seed=0, progress=False).metrics
    assert metrics["nll_space"] == "latent" and metrics["nll_dim"] == 4 * 8 * 8 and "nll_bpd" not in metrics
    assert np.isfinite(metrics["nll_latent_bpd"]) and np.isfinite(metrics["nll_traj_latent_bpd"])
    assert metrics["nll_estimator"] == "iwae" and metrics["nll_settings"]["nll_space"] == "latent"
    # the pipeline it started from, in the same latent space: its ODE NLL is the comparison row
    base = train(preset, tmp_path / "whole", "diffusers-latent-flow", progress=False)
    assert base.sample(CAPTIONS[:2], [5, 6]).shape == (2, 3, 16, 16)
    ode = get_suite("nll", {"images": 2, "batch_size": 2}).run(base, world, seed=0, progress=False).metrics
    assert ode["nll_space"] == "latent" and ode["nll_dim"] == metrics["nll_dim"] and ode["nll_estimator"] == "ode"
    assert np.isfinite(ode["nll_latent_bpd"]) and "nll_traj_latent_bpd" not in ode


def test_the_latent_transporter_log_det_and_inverse_match_brute_force(inputs):
    parts = ntm_diffusers.load_parts(f"diffusers:{inputs['sd3']}", torch.device("cpu"), max_sequence_length=8)
    options = {"patch": 2, "width": 16, "blocks": 2, "layers": 1, "heads": 2, "spline_bins": 4, "mix": True}
    config = ntm_diffusers.latent_config(parts, 16, 4, options, None, 0.01).transporter
    assert (config.resolution, config.channels, config.vocab_size) == (8, 4, 0)
    config = dataclasses.replace(config, resolution=4)  # 4 x 4 x 4 = 64 values: a brute-force Jacobian is cheap
    model = _model(config)
    x, t, tokens = _inputs(2, config)
    assert tokens is None
    with torch.no_grad():
        u, logdet = model(x, t)
        assert (u - x).abs().max() > 0.1
        assert (model.inverse(u, t) - x).abs().max() < 1e-10
    for i in range(2):
        jac = jacobian(lambda xi, i=i: model(xi[None], t[i : i + 1])[0].reshape(-1), x[i], vectorize=True)
        sign, logabs = torch.linalg.slogdet(jac.reshape(64, 64))
        assert sign != 0 and abs(logabs - logdet[i]).item() < 1e-8


def test_ntm_with_a_diffusers_init_is_the_ntm_diffusers_model(tmp_path, inputs, monkeypatch):
    from baselines.ntm import NTMGenerator
    from baselines.ntm_diffusers import NTMDiffusersGenerator

    seen = {}
    monkeypatch.setattr(NTMDiffusersGenerator, "from_context", classmethod(lambda cls, ctx, name, **kw: seen.update(kw) or "built"))
    init = f"diffusers:{inputs['sd3']}"
    ctx = dataclasses.make_dataclass("Ctx", ["backbone"])({"transporter": {"width": 16}})
    assert NTMGenerator.from_context(ctx, "ntm", init=init, guidance=3.0, align_steps=-1) == "built"
    assert seen["init"] == init and seen["guidance"] == 3.0 and seen["transporter"] == {"width": 16}
    assert seen["align_steps"] == -1 and seen["recipe"] == "ntm"
    with pytest.raises(ValueError, match=r"\['eta', 'step_counts'\] are not available with init = 'diffusers:"):
        NTMGenerator.from_context(ctx, "ntm", init=init, eta=0.5, step_counts=[4, 8])


def test_bad_inputs_name_the_problem_and_the_fix(tmp_path, inputs):
    assert check_inputs("ntm-diffusers", {"init": f"diffusers:{inputs['sd3']}", "data": str(inputs["train"])}) == []
    (problem,) = check_inputs("ntm-diffusers", {})
    assert "init = None must name a local diffusers pipeline" in problem and "hf download" in problem
    (problem,) = check_inputs("ntm-diffusers", {"init": "teacher"})
    assert "init = 'teacher' must name" in problem
    (problem,) = check_inputs("ntm-diffusers", {"init": f"diffusers:{tmp_path / 'nowhere'}"})
    assert problem.startswith("ntm-diffusers: init: pipeline folder") and "does not exist" in problem
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (problem,) = check_inputs("ntm-diffusers", {"init": f"diffusers:{flux}"})
    assert "holds a FluxPipeline pipeline" in problem and "StableDiffusion3Pipeline" in problem
    empty = tmp_path / "empty"
    empty.mkdir()
    (problem,) = check_inputs("ntm-diffusers", {"init": f"diffusers:{inputs['sd3']}", "data": str(empty)})
    assert problem == (
        f"ntm-diffusers: caption folder data {empty} has no captions.jsonl. Put training images and a captions.jsonl "
        '(one {"file": ..., "caption": ...} per line) in one folder and set [model_options.ntm-diffusers] '
        'data = "/path/to/it" (or drop data to train on the world\'s train split)'
    )
    parts = ntm_diffusers.load_parts(f"diffusers:{inputs['sd3']}", torch.device("cpu"), max_sequence_length=8)
    with pytest.raises(ValueError, match="resolution 17 px is not a multiple of the VAE's downsampling factor 2"):
        ntm_diffusers.latent_config(parts, 17, 4, True, None, 0.01)
    with pytest.raises(ValueError, match=r"latents of 9 x 9 \(the world's 18 px .*transporter's 2 x 2 patches"):
        ntm_diffusers.latent_config(parts, 18, 4, True, None, 0.01)
    with pytest.raises(ValueError, match="reads the time only"):
        ntm_diffusers.latent_config(parts, 16, 4, {"vocab_size": 3}, None, 0.01)


def test_the_paper_preset_names_the_ntm_rows_missing_weights_and_caption_folder(tmp_path):
    from benchmarks.doctor import diagnose

    if Path("/data").exists():
        pytest.skip("this machine has a /data folder; the paper preset's placeholders may exist")
    problems = diagnose("paper", tmp_path / "results").problems
    assert sum(p.startswith("ntm-diffusers: init: pipeline folder /data/models/stable-diffusion-3.5-medium does not exist")
               for p in problems) == 1, problems
    assert sum(p.startswith("ntm-diffusers: caption folder data /data/coco-train2017 does not exist") for p in problems) == 1
    assert sum(p.startswith("diffusers-latent-flow: init: pipeline folder /data/models/") for p in problems) == 1


@pytest.mark.slow
def test_two_processes_fine_tune_it_under_torchrun(tmp_path, inputs):
    """torchrun on two gloo ranks: each rank trains its share, both end with the same weights (else the run fails)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "p.toml"
    path.write_text(preset_text(inputs))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cli", "train",
        "ntm-diffusers", "--preset", str(path), "--out", str(tmp_path / "two"), "--no-progress",
    ]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert "ntm-diffusers: 4 steps" in done.stderr and "weights" in done.stdout
    folders = [p for p in (tmp_path / "two" / "checkpoints").iterdir() if p.is_dir()]
    assert len(folders) == 1 and not folders[0].name.endswith(".partial")
