"""Pretrained few-step baselines: tiny random pipelines of each layout, saved to disk and loaded back through
the adapter, run with the recipe's scheduler and step count; per-seed sampling; honest nfe; missing-weight errors."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from baselines.base import BuildContext
from baselines.pretrained import RECIPES, PretrainedGenerator, check_inputs
from tests import tiny_pipelines

PROMPTS = ["a red circle", "a photo of a square", "two circles", "a red circle"]
SEEDS = [3, 1, 4, 3]
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="LoRA loading needs peft")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One saved pipeline per layout, plus a LoRA and a replacement U-Net for the SDXL one."""
    root = tmp_path_factory.mktemp("pipelines")
    made = {
        "sd15": tiny_pipelines.save_lcm(root / "sd15"),
        "sdxl": tiny_pipelines.save_sdxl(root / "sdxl"),
        "sd3": tiny_pipelines.save_sd3(root / "sd3"),
        "flux": tiny_pipelines.save_flux(root / "flux"),
    }
    made["lora"] = tiny_pipelines.save_lora(root / "lora" / "pytorch_lora_weights.safetensors", made["sdxl"] / "unet")
    distilled = tiny_pipelines.unet(9, 64, addition_embed_type="text_time", addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=6 * 8 + 32)
    made["unet"] = root / "sdxl_lightning_4step_unet.safetensors"
    save_file(distilled.state_dict(), made["unet"])
    return made


def build(name: str, path: Path, **options) -> PretrainedGenerator:
    ctx = BuildContext(None, torch.device("cpu"), Path("unused"), {}, {})
    return PretrainedGenerator.from_context(ctx, name, path=str(path), **options)


def spy(gen: PretrainedGenerator) -> tuple[list[dict], list[int]]:
    """Record every scheduler step's keyword arguments and the batch rows of every denoiser call."""
    steps, rows = [], []
    step = gen.pipe.scheduler.step

    @functools.wraps(step)  # keeps step's signature: pipelines inspect it to decide which kwargs to pass
    def counted(*args, **kwargs):
        steps.append(kwargs)
        return step(*args, **kwargs)

    gen.pipe.scheduler.step = counted
    denoiser = gen.pipe.unet if hasattr(gen.pipe, "unet") else gen.pipe.transformer
    denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    return steps, rows


CASES = [  # recipe, folder, guidance override, scheduler class, per-image denoiser passes at 4 steps
    ("lcm", "sd15", None, "LCMScheduler", 4),  # guidance 8 enters as an embedding: one pass a step
    ("sdxl-turbo", "sdxl", None, "EulerAncestralDiscreteScheduler", 4),
    ("sdxl-turbo", "sdxl", 2.0, "EulerAncestralDiscreteScheduler", 8),  # CFG doubles the batch
    ("sdxl-lightning", "sdxl", None, "EulerDiscreteScheduler", 4),
    ("sd35-turbo", "sd3", None, "FlowMatchEulerDiscreteScheduler", 4),
    ("sd35-turbo", "sd3", 2.0, "FlowMatchEulerDiscreteScheduler", 8),
    ("flux-schnell", "flux", 2.0, "FlowMatchEulerDiscreteScheduler", 4),  # schnell has no CFG branch
]


@pytest.mark.parametrize("recipe, folder, guidance, scheduler, passes", CASES)
def test_recipe_scheduler_steps_and_nfe_are_the_ones_run(
    one_thread, folders, recipe, folder, guidance, scheduler, passes
):
    lora = {"lora_path": str(folders["unet"])} if RECIPES[recipe].adapter else {}
    gen = build(recipe, folders[folder], guidance=guidance, height=16, width=16, **lora)
    steps, rows = spy(gen)
    images = gen.sample(PROMPTS[:2], SEEDS[:2])
    assert type(gen.pipe.scheduler).__name__ == scheduler == gen.spec.settings["scheduler"]
    for key, value in RECIPES[recipe].scheduler_kwargs.items():
        assert gen.pipe.scheduler.config[key] == value
    assert len(steps) == 4 == gen.spec.steps
    assert sum(rows) == 2 * passes and gen.spec.nfe == passes
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 16, 16)
    steps.clear()
    gen.sample(PROMPTS[:1], SEEDS[:1], steps=2)
    assert len(steps) == 2


@pytest.mark.parametrize("recipe, folder", [("lcm", "sd15"), ("sdxl-turbo", "sdxl"), ("sd35-turbo", "sd3"),
                                            ("flux-schnell", "flux")])
def test_samples_are_per_seed_and_batch_invariant(one_thread, folders, recipe, folder):
    gen = build(recipe, folders[folder], height=16, width=16)
    whole = gen.sample(PROMPTS, SEEDS)
    parts = torch.cat([gen.sample(PROMPTS[:1], SEEDS[:1]), gen.sample(PROMPTS[1:], SEEDS[1:])])
    torch.testing.assert_close(whole.int(), parts.int(), atol=1, rtol=0)  # float32 rounding at pixel edges only
    assert (whole != parts).float().mean() < 1e-2
    assert torch.equal(whole[0], whole[3])
    other = gen.sample(PROMPTS[:1], [5])
    assert (other.int() - whole[:1].int()).abs().float().mean() > 1  # the seed, not the batch, drives the noise


def test_lcm_takes_the_pipelines_native_size_and_the_cards_arguments(one_thread, folders):
    gen = build("lcm", folders["sd15"])
    steps, _ = spy(gen)
    assert gen.sample(PROMPTS[:1], SEEDS[:1]).shape == (1, 3, 16, 16)  # U-Net sample size 8 x VAE factor 2
    settings = gen.spec.settings
    assert (settings["height"], settings["width"], settings["guidance"]) == (16, 16, 8.0)
    assert settings["repo"] == ["SimianLuo/LCM_Dreamshaper_v7"] and settings["adapter"] == "none"
    assert gen.spec.family == "pretrained" and gen.spec.parameters > 0
    assert "generator" in steps[0]  # LCM re-noises between steps: from the per-seed generators


def test_fp16_variant_folders_load_the_same_weights(one_thread, folders, tmp_path):
    from diffusers import LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline.from_pretrained(folders["sd15"], local_files_only=True)
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert not list((tmp_path / "fp16").glob("unet/diffusion_pytorch_model.safetensors"))
    a = build("lcm", folders["sd15"]).sample(PROMPTS[:2], SEEDS[:2])
    b = build("lcm", tmp_path / "fp16").sample(PROMPTS[:2], SEEDS[:2])
    assert torch.equal(a, b)


def test_lightning_unet_file_replaces_the_unet(one_thread, folders):
    gen = build("sdxl-lightning", folders["sdxl"], lora_path=str(folders["unet"]), height=16, width=16)
    expected = load_file(folders["unet"])
    state = gen.pipe.unet.state_dict()
    assert gen.spec.settings["adapter"] == "unet" and state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


@needs_peft
@pytest.mark.parametrize("recipe, scheduler", [("tcd", "TCDScheduler"), ("lcm-lora", "LCMScheduler")])
def test_lora_recipes_fuse_the_lora_and_pass_the_cards_arguments(one_thread, folders, recipe, scheduler):
    from diffusers import UNet2DConditionModel

    gen = build(recipe, folders["sdxl"], lora_path=str(folders["lora"].parent), height=16, width=16)
    steps, rows = spy(gen)
    gen.sample(PROMPTS[:2], SEEDS[:2])
    assert type(gen.pipe.scheduler).__name__ == scheduler and len(steps) == 4 and sum(rows) == 2 * 4
    if recipe == "tcd":
        assert all(kwargs["eta"] == 0.3 for kwargs in steps)
    # fused: W = W0 + B A (no alpha stored, so the LoRA scale is 1), and no adapter layers left behind
    base = UNet2DConditionModel.from_pretrained(folders["sdxl"] / "unet", local_files_only=True).state_dict()
    lora = load_file(folders["lora"])
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    fused = base[f"{name}.weight"] + lora[f"unet.{name}.lora_B.weight"] @ lora[f"unet.{name}.lora_A.weight"]
    torch.testing.assert_close(gen.pipe.unet.state_dict()[f"{name}.weight"], fused)
    assert not any("lora" in key for key in gen.pipe.unet.state_dict())
    assert gen.spec.settings["adapter"] == "lora"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_missing_weights_name_the_repo_and_the_preset_option(recipe, tmp_path):
    spec = RECIPES[recipe]
    problems = check_inputs(recipe, {})
    assert len(problems) == (2 if spec.adapter else 1)
    assert spec.repos[0] in problems[0] and f'[model_options.{recipe}] path = "/local/folder"' in problems[0]
    if spec.adapter:
        assert spec.repos[1] in problems[1] and f"[model_options.{recipe}] lora_path" in problems[1]
    (tmp_path / "empty").mkdir()
    for path, says in [(tmp_path / "absent", "does not exist"), (tmp_path / "empty", "no model_index.json")]:
        with pytest.raises(FileNotFoundError, match=says) as err:
            build(recipe, path)
        assert spec.repos[0] in str(err.value) and f"[model_options.{recipe}]" in str(err.value)


def test_checks_use_the_registered_name_and_pass_on_good_folders(folders):
    problems = check_inputs("my-lcm", {"recipe": "lcm", "path": None})
    assert len(problems) == 1 and "[model_options.my-lcm]" in problems[0] and "SimianLuo" in problems[0]
    assert check_inputs("lcm", {"path": str(folders["sd15"])}) == []
    assert check_inputs("sdxl-lightning", {"path": str(folders["sdxl"]), "lora_path": str(folders["unet"])}) == []
    lora = check_inputs("tcd", {"path": str(folders["sdxl"]), "lora_path": str(folders["lora"].parent)})
    assert lora == ([] if importlib.util.find_spec("peft") else [lora[0]])
    assert all("pip install peft" in problem for problem in lora)
    assert "unknown pretrained recipe" in check_inputs("lcm-xl", {})[0]
    with pytest.raises(ValueError, match="unknown pretrained recipe"):
        build("lcm-xl", folders["sd15"])


def test_weights_hash_follows_file_names_and_sizes_not_the_location(one_thread, folders, tmp_path):
    first = build("lcm", folders["sd15"]).spec.weights_hash
    shutil.copytree(folders["sd15"], tmp_path / "elsewhere")
    assert build("lcm", tmp_path / "elsewhere").spec.weights_hash == first
    with open(tmp_path / "elsewhere" / "scheduler" / "scheduler_config.json", "a") as f:
        f.write("\n")
    assert build("lcm", tmp_path / "elsewhere").spec.weights_hash != first


def test_importing_the_adapter_does_not_import_diffusers():
    code = "import sys, baselines.pretrained; print('diffusers' in sys.modules, 'transformers' in sys.modules)"
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["False", "False"]
