"""Published few-step text-to-image models as Generators: adapters over diffusers pipelines on local folders.

Each recipe runs one model family the way its model card prescribes (pipeline, scheduler, step count,
guidance scale, extra call arguments):

- `lcm`: Latent Consistency Models (Luo et al. 2023, arXiv:2310.04378), LCM-Dreamshaper-v7; guidance
  enters the U-Net as an embedding (their w-conditioned consistency function), so one pass a step.
- `lcm-lora`: LCM-LoRA (Luo et al. 2023, arXiv:2311.05556) fused into SDXL base; guidance 1 disables CFG.
- `tcd`: Trajectory Consistency Distillation (Zheng et al. 2024, arXiv:2402.19159) LoRA fused into SDXL base;
  `eta` is the paper's gamma, the stochasticity of its strategic stochastic sampling.
- `sdxl-turbo`: Adversarial Diffusion Distillation (Sauer et al. 2023, arXiv:2311.17042), 512 px.
- `sdxl-lightning`: progressive adversarial distillation (Lin et al. 2024, arXiv:2402.13929); SDXL base with the
  4-step distilled U-Net (or its LoRA), Euler on "trailing" timesteps.
- `sd35-turbo`: SD3.5 Large Turbo, latent adversarial diffusion distillation (Sauer et al. 2024,
  arXiv:2403.12015), its own rectified-flow Euler scheduler.
- `flux-schnell`: FLUX.1 [schnell] (Black Forest Labs 2024), timestep-distilled rectified flow.

Nothing is downloaded: every folder is read with `local_files_only=True`, and a missing one is reported
(by `check_inputs`, without loading anything) with the repository to download and the preset line to add.
diffusers is imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from baselines.base import BuildContext, Capabilities, Generator, GeneratorSpec, stable_hash

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
"""The file name diffusers' LoRA repositories use; a `lora_path` folder is searched for it first."""


@dataclass(frozen=True)
class Recipe:
    """How one published model is run: what its card prescribes, and where its weights come from.

    `repos` are the Hugging Face repositories to download, the pipeline folder first; `adapter` says what
    `lora_path` must hold when the recipe needs one. `cfg_doubles_batch` is whether a guidance scale above 1
    makes the pipeline run its denoiser on a doubled (conditional + unconditional) batch.
    """

    pipeline: str
    scheduler: str
    steps: int
    guidance: float
    repos: tuple[str, ...]
    scheduler_kwargs: Mapping[str, Any] = field(default_factory=dict)
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    adapter: str = ""
    cfg_doubles_batch: bool = True
    size: int | None = None
    cuda_dtype: str = "float16"


RECIPES: dict[str, Recipe] = {
    "lcm": Recipe(
        "LatentConsistencyModelPipeline", "LCMScheduler", 4, 8.0, ("SimianLuo/LCM_Dreamshaper_v7",),
        call_kwargs={"original_inference_steps": 50},
        load_kwargs={"safety_checker": None, "requires_safety_checker": False}, cfg_doubles_batch=False,
    ),
    "lcm-lora": Recipe(
        "StableDiffusionXLPipeline", "LCMScheduler", 4, 1.0, (SDXL_BASE, "latent-consistency/lcm-lora-sdxl"),
        adapter=f"the LoRA folder (or its {LORA_WEIGHTS}) of latent-consistency/lcm-lora-sdxl",
    ),
    "tcd": Recipe(
        "StableDiffusionXLPipeline", "TCDScheduler", 4, 0.0, (SDXL_BASE, "h1t/TCD-SDXL-LoRA"),
        call_kwargs={"eta": 0.3}, adapter=f"the LoRA folder (or its {LORA_WEIGHTS}) of h1t/TCD-SDXL-LoRA",
    ),
    "sdxl-turbo": Recipe(
        "StableDiffusionXLPipeline", "EulerAncestralDiscreteScheduler", 4, 0.0, ("stabilityai/sdxl-turbo",),
        scheduler_kwargs={"timestep_spacing": "trailing"}, size=512,
    ),
    "sdxl-lightning": Recipe(
        "StableDiffusionXLPipeline", "EulerDiscreteScheduler", 4, 0.0, (SDXL_BASE, "ByteDance/SDXL-Lightning"),
        scheduler_kwargs={"timestep_spacing": "trailing"},
        adapter="sdxl_lightning_4step_unet.safetensors (the full U-Net) or sdxl_lightning_4step_lora.safetensors "
        "from ByteDance/SDXL-Lightning, matching the step count",
    ),
    "sd35-turbo": Recipe(
        "StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler", 4, 0.0,
        ("stabilityai/stable-diffusion-3.5-large-turbo",), cuda_dtype="bfloat16",
    ),
    "flux-schnell": Recipe(
        "FluxPipeline", "FlowMatchEulerDiscreteScheduler", 4, 0.0, ("black-forest-labs/FLUX.1-schnell",),
        call_kwargs={"max_sequence_length": 256}, cfg_doubles_batch=False, cuda_dtype="bfloat16",
    ),
}


def get_recipe(recipe: str) -> Recipe:
    if recipe not in RECIPES:
        raise ValueError(f"unknown pretrained recipe {recipe!r}; available: {', '.join(RECIPES)}")
    return RECIPES[recipe]


def adapter_file(lora_path: str | Path) -> Path:
    """The .safetensors file `lora_path` names: the file itself, or the LoRA file in a folder."""
    path = Path(lora_path)
    if path.is_file():
        return path
    candidates = [path / LORA_WEIGHTS] if (path / LORA_WEIGHTS).is_file() else sorted(path.glob("*.safetensors"))
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"{path} holds {len(candidates)} .safetensors files; point lora_path at the one to use"
        )
    return candidates[0]


def is_lora(file: Path) -> bool:
    """Whether a .safetensors file holds LoRA factors (rather than a whole U-Net); reads the header only."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return any("lora" in key for key in f.keys())


def check_inputs(name: str, options: Mapping[str, Any]) -> list[str]:
    """What stops model `name` from loading with `options` (its preset options), found without loading weights.

    The recipe is `options["recipe"]`, or `name` itself. Each problem names what to download and the preset
    line that points the harness at it; an empty list means the folders are in place.
    """
    recipe_name = options.get("recipe") or name
    if recipe_name not in RECIPES:
        return [f"{name}: unknown pretrained recipe {recipe_name!r}; available: {', '.join(RECIPES)}"]
    recipe = RECIPES[recipe_name]
    table = f"[model_options.{name}]"
    get_base = (
        f"Download {recipe.repos[0]} (`hf download {recipe.repos[0]} --local-dir /local/folder`) "
        f"and set {table} path = \"/local/folder\""
    )
    problems = []
    path = options.get("path")
    if path is None:
        problems.append(f"{name}: no local weights (path is not set). {get_base}")
    elif not Path(path).is_dir():
        problems.append(f"{name}: path {path} does not exist. {get_base}")
    elif not (Path(path) / "model_index.json").is_file():
        problems.append(f"{name}: {path} has no model_index.json, so it is no diffusers pipeline folder. {get_base}")
    if not recipe.adapter:
        return problems
    lora_path = options.get("lora_path")
    get_adapter = f"Download {recipe.adapter} and set {table} lora_path = \"/local/lora\""
    if lora_path is None:
        return problems + [f"{name}: lora_path is not set. {get_adapter}"]
    if not Path(lora_path).exists():
        return problems + [f"{name}: lora_path {lora_path} does not exist. {get_adapter}"]
    try:
        file = adapter_file(lora_path)
    except FileNotFoundError as err:
        return problems + [f"{name}: {err}. {get_adapter}"]
    if is_lora(file) and importlib.util.find_spec("peft") is None:
        problems.append(f"{name}: loading the LoRA {file} needs the peft package (pip install peft)")
    return problems


def folder_fingerprint(*paths: str | Path | None) -> str:
    """A cheap identity of local weights: the hash of every file's relative name and size (contents unread)."""
    listing = []
    for root in (Path(p) for p in paths if p is not None):
        if root.is_file():
            listing.append([[root.name, root.stat().st_size]])
        else:
            files = sorted(f for f in root.rglob("*") if f.is_file())
            listing.append([[str(f.relative_to(root)), f.stat().st_size] for f in files])
    return stable_hash(listing)


def weights_variant(path: Path) -> str | None:
    """"fp16" when a folder holds only half-precision variant files (`*.fp16.safetensors`, or shards), else None."""
    weights = [f.name for f in path.glob("*/*.safetensors")]
    if weights and all(".fp16." in f or ".fp16-" in f for f in weights):
        return "fp16"
    return None


def resolve_dtype(dtype: str, device: torch.device, recipe: Recipe) -> torch.dtype:
    """"auto": the card's half precision on CUDA, float32 elsewhere (CPUs lack fast half kernels)."""
    if dtype == "auto":
        dtype = recipe.cuda_dtype if device.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; available: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_pipeline(recipe: Recipe, path: Path, lora_path: str | Path | None, dtype: torch.dtype) -> tuple[Any, str]:
    """The recipe's pipeline from `path` with its scheduler set and `lora_path` applied; returns (pipe, adapter kind).

    A LoRA is fused into the weights (as the cards do) and its adapter layers dropped; a whole U-Net file
    (SDXL-Lightning's) replaces the U-Net's weights.
    """
    import diffusers

    pipe = getattr(diffusers, recipe.pipeline).from_pretrained(
        path, dtype=dtype, local_files_only=True, variant=weights_variant(path), **recipe.load_kwargs
    )
    scheduler = getattr(diffusers, recipe.scheduler)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **recipe.scheduler_kwargs)
    kind = "none"
    if lora_path is not None:
        file = adapter_file(lora_path)
        if is_lora(file):  # diffusers' LoRA loader needs peft (check_inputs reports it missing)
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, local_files_only=True)
            pipe.fuse_lora()
            pipe.unload_lora_weights()
            kind = "lora"
        else:
            from safetensors.torch import load_file

            pipe.unet.load_state_dict(load_file(file))
            kind = "unet"
    pipe.set_progress_bar_config(disable=True)
    return pipe, kind


def native_size(pipe: Any) -> int:
    """The image side the pipeline generates when given no height/width (its denoiser's sample size)."""
    latent = getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size
    return latent * pipe.vae_scale_factor


class PretrainedGenerator(Generator):
    """A published few-step model, sampled through its diffusers pipeline with one torch.Generator per seed."""

    capabilities = Capabilities(guidance=True)

    def __init__(
        self, pipe: Any, name: str, recipe: str, steps: int, guidance: float, height: int, width: int,
        weights: str, settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.pipe, self.recipe = pipe, get_recipe(recipe)
        self.steps, self.guidance, self.height, self.width = steps, guidance, height, width
        parameters = sum(
            sum(p.numel() for p in m.parameters()) for m in pipe.components.values() if isinstance(m, torch.nn.Module)
        )
        self.spec = GeneratorSpec(
            name=name, family="pretrained", steps=steps, nfe=self.nfe(steps), parameters=parameters,
            weights_hash=weights,
            settings={
                "recipe": recipe, "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
                "scheduler_kwargs": dict(self.recipe.scheduler_kwargs), "steps": steps, "guidance": guidance,
                "call_kwargs": dict(self.recipe.call_kwargs), "repo": list(self.recipe.repos),
                "height": height, "width": width, **(settings or {}),
            },
        )

    def nfe(self, steps: int) -> int:
        """Denoiser passes per image: one a step, two when classifier-free guidance doubles the batch."""
        return steps * (2 if self.recipe.cfg_doubles_batch and self.guidance > 1 else 1)

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, recipe: str | None = None, path: str | None = None,
        lora_path: str | None = None, steps: int | None = None, guidance: float | None = None,
        height: int | None = None, width: int | None = None, dtype: str = "auto",
    ) -> PretrainedGenerator:
        recipe = recipe or name
        card = get_recipe(recipe)
        problems = check_inputs(name, {"recipe": recipe, "path": path, "lora_path": lora_path})
        if problems:
            raise FileNotFoundError("\n".join(problems))
        torch_dtype = resolve_dtype(dtype, ctx.device, card)
        pipe, adapter = load_pipeline(card, Path(path), lora_path, torch_dtype)
        pipe = pipe.to(ctx.device)
        side = native_size(pipe)
        return cls(
            pipe, name, recipe, steps or card.steps, card.guidance if guidance is None else guidance,
            height or card.size or side, width or card.size or side, folder_fingerprint(path, lora_path),
            {"dtype": str(torch_dtype).removeprefix("torch."), "adapter": adapter},
        )

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        images = self.pipe(
            prompt=list(prompts), num_inference_steps=steps or self.steps, guidance_scale=self.guidance,
            height=self.height, width=self.width, generator=generators, output_type="pt",
            **self.recipe.call_kwargs,
        ).images
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
