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

Beside these presets, any diffusers text-to-image pipeline runs as the model `diffusers:<folder>` (or
`diffusers:<owner>/<repo>[@<revision>]`, found in the local Hugging Face cache): `DiffusersGenerator`, loaded
by `AutoPipelineForText2Image` with the folder's own scheduler unless `scheduler` names another, at `steps`
(default 4) and `guidance` (default 0.0). The presets are recipes of the same code path: a recipe only supplies
the pipeline class, scheduler, defaults, call arguments and where the weights come from.

Nothing is downloaded: every folder is read with `local_files_only=True`, and a missing one is reported
(by `check_inputs`, without loading anything) with the repository to download and the preset line to add.
diffusers is imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import re
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
    makes the pipeline run its denoiser on a doubled (conditional + unconditional) batch; None: ask the loaded
    pipeline (`doubles_batch`). An empty `scheduler` keeps the scheduler the pipeline folder configures.
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
    cfg_doubles_batch: bool | None = True
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


GENERIC = "diffusers"
"""The recipe of `diffusers:<spec>` models: whatever pipeline the folder holds, with the harness's defaults."""
PREFIX = f"{GENERIC}:"
GENERIC_RECIPE = Recipe(
    "AutoPipelineForText2Image", "", 4, 0.0, (), cfg_doubles_batch=None, cuda_dtype="bfloat16",
)
GENERIC_OPTIONS = ("path", "dtype", "steps", "guidance", "height", "width", "scheduler")
"""The options of a `diffusers:<spec>` model (`DiffusersGenerator.from_context`)."""


def get_recipe(recipe: str) -> Recipe:
    if recipe == GENERIC:
        return GENERIC_RECIPE
    if recipe not in RECIPES:
        raise ValueError(f"unknown pretrained recipe {recipe!r}; available: {', '.join([*RECIPES, GENERIC])}")
    return RECIPES[recipe]


@dataclass(frozen=True)
class Source:
    """Where a generic pipeline is read from: `folder` to load, `identity` for the spec (the absolute folder,
    or `owner/repo@commit` for a Hugging Face cache snapshot, the same on every machine), `repo` if any."""

    folder: Path
    identity: str
    repo: str | None = None


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
FOLDER_FORM = "diffusers:/path/to/pipeline-folder (a folder with model_index.json) or diffusers:owner/repo"


def hub_cache() -> Path:
    """The Hugging Face hub cache this process would use, from the environment at call time (huggingface_hub's
    precedence: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub)."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def is_repo_id(spec: str) -> bool:
    """Whether `spec` reads as `owner/repo[@revision]` rather than a path (a folder that exists is a path)."""
    return (
        not spec.startswith((".", "~", "/")) and REPO_ID.fullmatch(spec) is not None
        and not Path(spec).expanduser().exists()
    )


def hub_snapshot(repo: str, revision: str | None = None) -> Path:
    """The snapshot folder of `repo` in the local Hugging Face cache, without any network access.

    `revision` (default "main") is a ref the cache recorded (refs/<revision>) or a snapshot's commit hash; with
    no refs/main, a single snapshot is taken. FileNotFoundError, with how to download it, when absent.
    """
    cache = hub_cache()
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshots = root / "snapshots"
    found = sorted(p.name for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    get = (
        f"Nothing is downloaded at run time: fetch it into the cache with `hf download {repo}`, or with "
        f"`hf download {repo} --local-dir /local/folder` and name the model diffusers:/local/folder"
    )
    if not found:
        raise FileNotFoundError(f"{repo} is not in the local Hugging Face cache ({cache}). {get}")
    ref = root / "refs" / (revision or "main")
    if ref.is_file():
        commit = ref.read_text().strip()
    elif revision is not None:
        commit = revision
    elif len(found) == 1:
        commit = found[0]
    else:
        raise FileNotFoundError(
            f"{repo} has {len(found)} snapshots in {snapshots} and no refs/main; name one as "
            f"diffusers:{repo}@<commit> (one of {', '.join(found)}) or pass its folder"
        )
    if commit not in found:
        raise FileNotFoundError(
            f"{repo} has no snapshot {commit!r} in {snapshots} (present: {', '.join(found)}). {get}"
        )
    return snapshots / commit


def resolve_source(spec: str) -> Source:
    """The pipeline folder `spec` names: a local folder, or `owner/repo[@revision]` from the Hugging Face cache.

    Reads no weights; FileNotFoundError (naming the fix) when the folder is missing or holds no pipeline.
    """
    if is_repo_id(spec):
        repo, _, revision = spec.partition("@")
        try:
            folder = hub_snapshot(repo, revision or None)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (read as a repository id: there is no folder {spec} here)") from None
        source = Source(folder, f"{repo}@{folder.name}", repo)
        where = f"the cached snapshot {folder} of {repo}"
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"pipeline folder {spec} does not exist; name an existing folder or a cached repository: "
                f"{FOLDER_FORM}"
            )
        source = Source(folder, str(folder.resolve()))
        where = str(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{where} has no model_index.json, so it is no diffusers pipeline folder")
    return source


def record_name(name: str) -> str:
    """`name` as one portable file-name component (records live in a folder per model name): a name with other
    characters than letters, digits, '.', '_', '-' (like `diffusers:/models/x`) becomes a slug plus a hash of it."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", name):
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if len(slug) > 64:
        slug = f"{slug[:16]}--{slug[-46:]}"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


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

    The recipe is `options["recipe"]`, or `name` itself; a `diffusers:<spec>` name (or recipe "diffusers") is
    checked with `resolve_source`. Each problem names what to download and the preset line that points the
    harness at it; an empty list means the folders are in place.
    """
    if name.startswith(PREFIX) or options.get("recipe") == GENERIC:
        return generic_problems(name, options)
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


def generic_problems(name: str, options: Mapping[str, Any]) -> list[str]:
    """`check_inputs` for a generic pipeline: the folder (or cached repository) `diffusers:<spec>` names."""
    named = name.removeprefix(PREFIX) if name.startswith(PREFIX) else None
    path = options.get("path")
    if named is not None and path is not None and str(path) != named:
        return [f"{name}: path = {path!r} contradicts the folder the name gives ({named}); drop path"]
    spec = named if named is not None else path
    if not spec:
        return [f"{name}: no pipeline folder; name the model {FOLDER_FORM}, or set path"]
    try:
        resolve_source(str(spec))
    except FileNotFoundError as err:
        return [f"{name}: {err}"]
    return []


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


def scheduler_class(name: str) -> type:
    """diffusers' scheduler class `name` (e.g. "EulerDiscreteScheduler"); ValueError naming some if there is none."""
    import diffusers

    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))
        raise ValueError(f"diffusers has no scheduler {name!r}; e.g. {', '.join(known[:12])}, ...")
    return cls


def load_pipeline(
    recipe: Recipe, path: Path, lora_path: str | Path | None, dtype: torch.dtype, scheduler: str | None = None
) -> tuple[Any, str]:
    """The recipe's pipeline from `path` with its scheduler set and `lora_path` applied; returns (pipe, adapter kind).

    `scheduler` (a diffusers class name) replaces the recipe's, built from the folder's scheduler config without
    the recipe's scheduler arguments; with neither, the folder's own scheduler stays. A LoRA is fused into the
    weights (as the cards do) and its adapter layers dropped; a whole U-Net file (SDXL-Lightning's) replaces the
    U-Net's weights.
    """
    import diffusers

    chosen = scheduler_class(scheduler) if scheduler else None  # a bad name fails before any weights are read
    pipe = getattr(diffusers, recipe.pipeline).from_pretrained(
        path, dtype=dtype, local_files_only=True, variant=weights_variant(path), **recipe.load_kwargs
    )
    if chosen is not None:
        pipe.scheduler = chosen.from_config(pipe.scheduler.config)
    elif recipe.scheduler:
        chosen = scheduler_class(recipe.scheduler)
        pipe.scheduler = chosen.from_config(pipe.scheduler.config, **recipe.scheduler_kwargs)
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
    latent = getattr(pipe, "default_sample_size", None)
    for part in ("unet", "transformer"):
        if latent is None and getattr(pipe, part, None) is not None:
            latent = getattr(getattr(pipe, part), "config", {}).get("sample_size")
    factor = getattr(pipe, "vae_scale_factor", None)
    if not isinstance(latent, int) or not isinstance(factor, int):
        raise ValueError(f"cannot tell the native image size of {type(pipe).__name__}; set height and width")
    return latent * factor


def doubles_batch(pipe: Any, guidance: float) -> bool:
    """Whether `pipe` at this guidance scale runs its denoiser on a conditional + unconditional batch.

    diffusers' pipelines decide it in a `do_classifier_free_guidance` property (evaluated here at `guidance`;
    LCM's is always False) or, without one, inline in `__call__` under that name; a pipeline whose call never
    mentions it (FLUX: guidance is an embedding) runs one pass a step.
    """
    prop = getattr(type(pipe), "do_classifier_free_guidance", None)
    if isinstance(prop, property):
        pipe._guidance_scale = guidance  # what the property reads; __call__ sets it again
        try:
            return bool(prop.fget(pipe))
        except AttributeError:
            return guidance > 1
    try:
        source = inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):
        return guidance > 1
    return guidance > 1 and "do_classifier_free_guidance" in source


def to_uint8(images: Any) -> Tensor:
    """A pipeline's output as uint8 (N, 3, H, W): a float tensor (N, C, H, W) or array (N, H, W, C) in [0, 1],
    or a list of PIL images."""
    if isinstance(images, (list, tuple)) and images and not isinstance(images[0], (Tensor, float, int)):
        import numpy as np

        return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
    if not isinstance(images, Tensor):
        images = torch.as_tensor(images).permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        return images.cpu()
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ValueError(f"{key} = {value!r} must be a positive integer")
    return int(value)


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} = {value!r} must be a number")
    return float(value)


class PretrainedGenerator(Generator):
    """A published few-step model, sampled through its diffusers pipeline with one torch.Generator per seed."""

    capabilities = Capabilities(guidance=True)

    def __init__(
        self, pipe: Any, name: str, recipe: str, steps: int, guidance: float, height: int, width: int,
        weights: str, settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.pipe, self.recipe = pipe, get_recipe(recipe)
        self.steps, self.guidance, self.height, self.width = steps, guidance, height, width
        rule = self.recipe.cfg_doubles_batch
        self.doubled = doubles_batch(pipe, guidance) if rule is None else rule and guidance > 1
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
        return steps * (2 if self.doubled else 1)

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, recipe: str | None = None, path: str | None = None,
        lora_path: str | None = None, steps: int | None = None, guidance: float | None = None,
        height: int | None = None, width: int | None = None, dtype: str = "auto", scheduler: str | None = None,
    ) -> PretrainedGenerator:
        return cls.from_recipe(
            ctx, name, recipe or name, path, lora_path, steps, guidance, height, width, dtype, scheduler
        )

    @classmethod
    def from_recipe(
        cls, ctx: BuildContext, name: str, recipe: str, path: str | None, lora_path: str | None = None,
        steps: int | None = None, guidance: float | None = None, height: int | None = None, width: int | None = None,
        dtype: str = "auto", scheduler: str | None = None,
    ) -> PretrainedGenerator:
        """The one code path of every pretrained model: `recipe` supplies the pipeline class, scheduler and the
        defaults of `steps`, `guidance` and the image size; the options override them."""
        card = get_recipe(recipe)
        problems = check_inputs(name, {"recipe": recipe, "path": path, "lora_path": lora_path})
        if problems:
            raise FileNotFoundError("\n".join(problems))
        steps = card.steps if steps is None else _as_int("steps", steps)
        guidance = card.guidance if guidance is None else _as_float("guidance", guidance)
        height, width = (None if v is None else _as_int(k, v) for k, v in (("height", height), ("width", width)))
        torch_dtype = resolve_dtype(dtype, ctx.device, card)
        settings: dict[str, Any] = {}
        if recipe == GENERIC:
            source = resolve_source(str(path))
            folder, repos = source.folder, [source.repo] if source.repo else []
            settings = {"repo": repos, "source": source.identity}
        else:
            folder = Path(path)
        pipe, adapter = load_pipeline(card, folder, lora_path, torch_dtype, scheduler)
        pipe = pipe.to(ctx.device)
        side = None if (height or card.size) and (width or card.size) else native_size(pipe)
        if scheduler:
            settings["scheduler_kwargs"] = {}
        return cls(
            pipe, record_name(name), recipe, steps, guidance, height or card.size or side,
            width or card.size or side, folder_fingerprint(folder, lora_path),
            {"dtype": str(torch_dtype).removeprefix("torch."), "adapter": adapter, **settings},
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
        return to_uint8(images)


class DiffusersGenerator(PretrainedGenerator):
    """Any diffusers text-to-image pipeline, as the model `diffusers:<folder>` or `diffusers:<owner>/<repo>`.

    The registry builds it for such a name with `path` set to what follows the prefix; its spec names the
    folder (absolute) or the cached repository and commit, and is written under `record_name(name)`.
    """

    @classmethod
    def from_context(  # type: ignore[override]  (other options: a generic pipeline takes no recipe or LoRA)
        cls, ctx: BuildContext, name: str, path: str | None = None, dtype: str = "auto", steps: int | None = None,
        guidance: float | None = None, height: int | None = None, width: int | None = None,
        scheduler: str | None = None,
    ) -> PretrainedGenerator:
        named = name.removeprefix(PREFIX) if name.startswith(PREFIX) else None
        if named is not None and path is not None and str(path) != named:
            raise ValueError(f"model {name!r} names its pipeline; path = {path!r} contradicts it (drop path)")
        return cls.from_recipe(
            ctx, name, GENERIC, path or named, None, steps, guidance, height, width, dtype, scheduler
        )
