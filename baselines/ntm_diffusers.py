"""NTM fine-tuned from a pretrained diffusers flow transformer, in that pipeline's VAE latent space.

The model `ntm-diffusers` (or `ntm` with `init = "diffusers:PATH"`) reads a local diffusers pipeline folder of
the SD3 family (`StableDiffusion3Pipeline`: SD3 / SD3.5 with an `SD3Transformer2DModel`, its two CLIP encoders, T5
and VAE) and builds an NTM in the VAE's latent space:

- data: an image x in [-1, 1] is encoded to z = (mean of the VAE posterior - shift_factor) * scaling_factor, the
  latent SD3 itself was trained on; samples are decoded back through the VAE;
- predictor: the pretrained transformer as the velocity of `ntm.predictor.VelocityPredictor` (SD3 reads sigma = t
  as timestep 1000 t and predicts eps - x0: this project's rectified-flow convention), fully fine-tuned, with the
  zero-initialised delta head, so at step 0 every reverse step is the transformer's own posterior step;
- transporter: f_T over latent patches (time-conditioned only; `TransporterConfig(vocab_size=0)`);
- alignment target: a frozen copy of the pretrained transformer (`NTM.alignment_loss`, annealed);
- text: the pipeline's `encode_prompt` (no grad, frozen encoders), packed into one float tensor per prompt
  (joint tokens flattened, then the pooled vector), which the NTM passes around like token ids.

Training runs through `ntm.train.fit` (resumable to the bit, rank-averaged gradients under torchrun) on the
preset's world (train split) or on its own caption folder (`data`), with bf16 autocast and gradient checkpointing
on CUDA only. Likelihoods are densities of the latent z (`nll_space = "latent"`, per latent dimension), not of
pixels: the nll suite reports them as `nll_latent_bpd`, never in the pixel `nll_bpd` column.

Nothing is downloaded: the folder is read with `local_files_only=True`; `check_inputs` reports a missing one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from baselines.base import BuildContext, Capabilities, Generator, GeneratorSpec, LikelihoodResult, to_pixels
from baselines.caption_folder import CAPTIONS_FILE, CaptionFolder, folder_problems
from baselines.ntm import TrainingLog
from baselines.pretrained import DTYPES, Source, folder_fingerprint, resolve_source, weights_variant
from baselines.training import CountingTeacher, per_sample_noise, training_batch
from ntm import distributed
from ntm.backbone import count_parameters
from ntm.checkpoint import load_pretrained, read_metadata, weights_hash
from ntm.model import NTM, NTMConfig, alignment_weight
from ntm.train import TrainConfig, fit
from ntm.transporter import TransporterConfig

PREFIX = "diffusers:"
RECIPE = "ntm_diffusers"
SUPPORTED = ("StableDiffusion3Pipeline",)
EXAMPLE_REPO = "stabilityai/stable-diffusion-3.5-medium"
TRANSPORTER_DEFAULTS: dict[str, Any] = {"patch": 2, "width": 128, "blocks": 2, "layers": 2, "heads": 4, "spline_bins": 8}
"""The latent transporter unless the model's `transporter` table says otherwise (resolution, channels from the VAE)."""


def init_spec(init: Any) -> str:
    """The folder (or cached repository) an `init = "diffusers:<spec>"` option names; ValueError otherwise."""
    if not isinstance(init, str) or not init.startswith(PREFIX) or not init.removeprefix(PREFIX).strip():
        raise ValueError(
            f"init = {init!r} must name a local diffusers pipeline of the SD3 family, e.g. "
            f'init = "diffusers:/models/stable-diffusion-3.5-medium" (a folder with model_index.json)'
        )
    return init.removeprefix(PREFIX).strip()


def pipeline_class(folder: Path) -> str:
    """The pipeline class a folder's model_index.json names ('' when it names none)."""
    try:
        return str(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, json.JSONDecodeError):
        return ""


def check_inputs(name: str, options: Mapping[str, Any]) -> list[str]:
    """What stops `name` from loading with `options`, without loading weights: the pipeline `init` names (present,
    of a supported class) and the caption folder `data` when given. Each problem names its fix."""
    table = f"[model_options.{name}]"
    get = (
        f"Download an SD3-family pipeline (`hf download {EXAMPLE_REPO} --local-dir /local/folder`) and set "
        f'{table} init = "diffusers:/local/folder"'
    )
    problems = []
    try:
        source = resolve_source(init_spec(options.get("init")))
    except ValueError as err:
        problems.append(f"{name}: {err}. {get}")
    except FileNotFoundError as err:
        problems.append(f"{name}: init: {err}. {get}")
    else:
        found = pipeline_class(source.folder)
        if found not in SUPPORTED:
            problems.append(
                f"{name}: init: {source.folder} holds a {found or 'unnamed'} pipeline; an NTM is built around "
                f"{', '.join(SUPPORTED)} folders (SD3, SD3.5). {get}"
            )
    data = options.get("data")
    if data is not None:
        fix = (
            f"Put training images and a {CAPTIONS_FILE} (one {{\"file\": ..., \"caption\": ...}} per line) in one "
            f'folder and set {table} data = "/path/to/it" (or drop data to train on the world\'s train split)'
        )
        problems += folder_problems(data, f"{name}: caption folder data", fix)
    return problems


class PromptEncoder:
    """Prompts -> one float32 tensor (B, L * D + P) per batch: SD3's joint text tokens (L x D), flattened, then its
    pooled vector (P). Frozen and shared: a deep copy of a model holding it (the training EMA, the frozen
    alignment copy) holds the same encoder, not a second set of text encoders."""

    def __init__(self, pipe: Any, device: torch.device, max_sequence_length: int) -> None:
        self.pipe, self.device, self.max_sequence_length = pipe, device, max_sequence_length

    def __deepcopy__(self, memo: dict) -> PromptEncoder:
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Tensor:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
        )
        return torch.cat([embeds.flatten(1), pooled], dim=1).float()


class LatentCodec:
    """The pipeline's VAE between pixels in [-1, 1] and the latent z SD3 models: z = (mean - shift) * scale."""

    def __init__(self, vae: Any, device: torch.device) -> None:
        self.vae, self.device, self.dtype = vae, device, vae.dtype
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)
        self.channels = int(vae.config.latent_channels)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def __deepcopy__(self, memo: dict) -> LatentCodec:
        return self

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean's latent (deterministic, so a data point has one latent), float32."""
        mean = self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mean
        return (mean.float() - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Pixels in [-1, 1] (float32) for latents z."""
        return self.vae.decode((z / self.scale + self.shift).to(self.device, self.dtype)).sample.float().clamp(-1, 1)


class SD3Velocity(nn.Module):
    """v(x, t, packed text) for an `SD3Transformer2DModel`: timestep 1000 t, output eps - x0 (this project's
    convention); the packed text (`PromptEncoder`) is split back into joint tokens and the pooled vector.
    Inputs are cast to the network's dtype (a bf16 frozen copy) and the output back to x's."""

    def __init__(self, transformer: nn.Module, text: PromptEncoder) -> None:
        super().__init__()
        self.net = transformer
        self.text = text  # a plain object: not a submodule, not in the state dict
        self.joint = int(transformer.config.joint_attention_dim)
        self.pooled = int(transformer.config.pooled_projection_dim)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.text(prompts)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        joint = tokens[:, : -self.pooled].unflatten(1, (-1, self.joint))
        pooled = tokens[:, -self.pooled :]
        t = t.reshape(-1).expand(x.shape[0])
        out = self.net(
            x.to(dtype), encoder_hidden_states=joint.to(dtype), pooled_projections=pooled.to(dtype),
            timestep=(1000 * t).to(dtype), return_dict=False,
        )[0]
        return out.to(x.dtype)


@dataclass
class Parts:
    """A loaded pipeline, split into what the NTM trains (the transformer, inside `velocity`) and what stays frozen."""

    velocity: SD3Velocity
    codec: LatentCodec
    source: Source
    pipeline: str
    shift: float
    dtype: torch.dtype


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The frozen parts' dtype: "auto" is bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; available: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_parts(init: str, device: torch.device, dtype: str = "auto", max_sequence_length: int = 256) -> Parts:
    """The SD3 pipeline `init` names, from local files only: text encoders and VAE frozen in `dtype`, the
    transformer in float32 (the weights that train; bf16 autocast does the arithmetic on CUDA)."""
    import diffusers

    source = resolve_source(init_spec(init))
    if pipeline_class(source.folder) not in SUPPORTED:
        raise ValueError(f"{source.folder} holds no {' or '.join(SUPPORTED)}: an NTM is built around SD3-family pipelines")
    frozen = resolve_dtype(dtype, device)
    cls = pipeline_class(source.folder)
    pipe = getattr(diffusers, cls).from_pretrained(
        source.folder, dtype=frozen, local_files_only=True, variant=weights_variant(source.folder)
    )
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer.to(device=device, dtype=torch.float32)  # the pipeline keeps a reference: its
    # encode_prompt reads the transformer's config when the T5 encoder is absent
    pipe = pipe.to(device)
    for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        if part is not None:
            part.requires_grad_(False).eval()
    velocity = SD3Velocity(transformer, PromptEncoder(pipe, device, max_sequence_length))
    shift = float(getattr(pipe.scheduler.config, "shift", 1.0) or 1.0)
    return Parts(velocity, LatentCodec(pipe.vae, device), source, cls, shift, frozen)


def latent_config(
    parts: Parts, resolution: int, steps: int, transporter: bool | Mapping[str, Any], shift: float | None,
    t_min_low: float,
) -> NTMConfig:
    """The NTM config in the VAE's latent space of images at `resolution` px."""
    factor = parts.codec.factor
    if resolution % factor:
        raise ValueError(
            f"the world's resolution {resolution} px is not a multiple of the VAE's downsampling factor {factor}; "
            f"set the preset's resolution to a multiple of {factor}"
        )
    side = resolution // factor
    net = parts.velocity.net.config
    if side % net.patch_size or side // net.patch_size > net.pos_embed_max_size:
        raise ValueError(
            f"latents of {side} x {side} do not fit the transformer (patch {net.patch_size}, at most "
            f"{net.pos_embed_max_size * net.patch_size} latent px a side); change the preset's resolution"
        )
    f_t = None
    if transporter is not False:
        options = dict(TRANSPORTER_DEFAULTS) | (dict(transporter) if isinstance(transporter, Mapping) else {})
        if options.get("vocab_size", 0):
            raise ValueError("the latent transporter reads the time only: drop vocab_size from its options")
        patch = options.get("patch")
        if isinstance(patch, int) and patch > 0 and side % patch:
            raise ValueError(
                f"latents of {side} x {side} (the world's {resolution} px over the VAE's factor {factor}) do not split "
                f"into the transporter's {patch} x {patch} patches; set transporter.patch to a divisor of {side} or "
                "change the preset's resolution"
            )
        f_t = TransporterConfig(resolution=side, channels=parts.codec.channels, **options)
    return NTMConfig(
        predictor=None, transporter=f_t, steps=steps, shift=parts.shift if shift is None else shift, t_min_low=t_min_low
    )


def build_model(parts: Parts, config: NTMConfig) -> NTM:
    return NTM.from_velocity(parts.velocity, config, parts.codec.channels)


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; nothing elsewhere (CPU training stays float32, so CPU runs are exactly repeatable)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def train_ntm_diffusers(
    ctx: BuildContext, parts: Parts, config: NTMConfig, data: str | None = None, align_steps: int = -1,
    align_weight: float = 2.5, recipe_name: str = RECIPE, gradient_checkpointing: bool | None = None,
) -> Path:
    """The checkpoint folder of this NTM, fine-tuned on first use (cached by the recipe's hash, resumable).

    Batches are `training_batch` draws from the world's train split, or from every image of the caption folder
    `data`, encoded by the VAE; the loss is the end-to-end trajectory NLL per latent dimension plus the
    alignment to the frozen pretrained transformer at `align_weight`, cosine-annealed over `align_steps`
    (-1: the whole run). The budget is the preset's `[train.<recipe_name>]` table.
    """
    train = TrainConfig.from_dict(ctx.train_config(recipe_name))
    if align_steps < 0:
        align_steps = train.steps
    resolution = int(ctx.world.resolution)
    world = CaptionFolder(data, resolution, "caption folder data") if data is not None else ctx.world
    recipe = {
        "kind": "ntm-diffusers", "ntm": config.to_dict(), "train": train.__dict__, "init": parts.source.identity,
        "weights": folder_fingerprint(parts.source.folder), "resolution": resolution, "align_steps": align_steps,
        "align_weight": align_weight, "max_sequence_length": parts.velocity.text.max_sequence_length,
        "data": str(Path(data).expanduser().resolve()) if data is not None
        else f"world {getattr(ctx.world, 'name', '?')} {getattr(ctx.world, 'path', '')}".strip(),
    }
    device = ctx.device
    checkpointed = device.type == "cuda" if gradient_checkpointing is None else gradient_checkpointing

    def run(directory: Path) -> None:
        torch.manual_seed(train.seed)
        frozen = _frozen_copy(parts)
        teacher = CountingTeacher(frozen)
        model = build_model(parts, config)
        if checkpointed:
            parts.velocity.net.enable_gradient_checkpointing()
        gen = torch.Generator().manual_seed(train.seed)
        log = TrainingLog()
        clock = {"t": time.perf_counter(), "step": None}
        main = distributed.is_main()

        def step_loss(step: int) -> Tensor:
            if clock["step"] is None:
                clock["step"] = step
            x, captions = training_batch(world, step, train.batch_size, train.seed, train.cfg_dropout, device)
            with _autocast(device):
                z = parts.codec.encode(x)
                tokens = model.encode_text(captions)
                nll, per_step = model.loss_terms(z, tokens, gen)
                loss = nll.mean()
                weight = alignment_weight(step, align_steps, align_weight)
                align = model.alignment_loss(teacher, z, tokens, gen, one_step=True).mean() if weight > 0 else None
            total = loss if align is None else loss + weight * align
            if step % log.every == 0:
                row = {"step": step, "nll_per_dim": loss.item(), "step_nll_per_dim": per_step.mean(0).tolist()}
                if align is not None:
                    row |= {"align": align.item(), "align_weight": weight}
                log.rows.append(row)
                if main and step > clock["step"]:
                    done = (step - clock["step"]) * train.batch_size
                    rate = done / max(time.perf_counter() - clock["t"], 1e-9)
                    memory = _memory_gb(device)
                    shown = "" if memory is None else f", peak memory {memory:.1f} GiB"
                    print(f"ntm-diffusers step {step}/{train.steps}: {rate:.2f} images/s{shown}", file=sys.stderr, flush=True)
            return total.float()

        state = {"noise": gen, "log": log, "teacher_passes": teacher.pass_count()}
        ema, stats = fit(model, step_loss, train, f"train ntm-diffusers ({recipe_name})", ctx.progress, state=state)
        memory = _memory_gb(device)
        if main:
            shown = "" if memory is None else f", peak memory {memory:.1f} GiB"
            print(
                f"ntm-diffusers: {stats.steps} steps, {stats.samples_per_s:.2f} images/s over {stats.wall_s:.0f} s{shown}",
                file=sys.stderr, flush=True,
            )
        if checkpointed:
            parts.velocity.net.disable_gradient_checkpointing()
        ema.save_pretrained(
            directory, train=train.__dict__, stats=stats.__dict__, init=PREFIX + parts.source.identity,
            pipeline=parts.pipeline, data=recipe["data"], peak_memory_gib=memory,
            training=_budget(parts, train, teacher.calls, stats),
            log=log.rows,
        )

    return ctx.checkpoint(recipe_name, recipe, run)


def _budget(parts: Parts, train: TrainConfig, teacher_nfe: int, stats: Any) -> dict[str, Any]:
    """The training budget the spec records, in `baselines.training.budget`'s keys (backbone: the pipeline)."""
    return {
        "backbone": f"{parts.pipeline} ({parts.source.identity})", "optimizer_steps": train.steps,
        "batch_size": train.batch_size, "teacher_nfe": int(teacher_nfe),
        "grad_norm_median": stats.grad_norm_median, "grad_norm_max": stats.grad_norm_max,
    }


def _frozen_copy(parts: Parts) -> SD3Velocity:
    """The alignment target: a frozen copy of the pretrained transformer, in the frozen parts' dtype."""
    import copy

    frozen = copy.deepcopy(parts.velocity)
    return frozen.to(parts.dtype).requires_grad_(False).eval()


class NTMDiffusersGenerator(Generator):
    """K predictor passes in latent u-space, one inverse of f_T, one VAE decode; likelihoods of the latent."""

    capabilities = Capabilities(likelihood=True, guidance=True, trajectory=True)

    def __init__(
        self, model: NTM, codec: LatentCodec, name: str, guidance: float, bound_samples: int, weights: str,
        settings: Mapping[str, Any], training: Mapping[str, Any] | None = None,
    ) -> None:
        self.model, self.codec, self.guidance, self.bound_samples = model, codec, guidance, bound_samples
        k = model.config.steps
        self.spec = GeneratorSpec(
            name=name, family="ntm" if model.transporter is not None else "gaussian", steps=k,
            nfe=k * (1 if guidance in (0, 1) else 2), parameters=count_parameters(model), weights_hash=weights,
            settings={
                "guidance": guidance, "t_min": model.config.t_min_eval, "sampler": "ancestral",
                "transporter_inverse": model.transporter is not None, "bound_samples": bound_samples,
                "nll_space": "latent",
            } | dict(settings),
            training=dict(training or {}),
        )

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, init: str | None = None, data: str | None = None, steps: int = 4,
        guidance: float = 1.0, bound_samples: int = 8, transporter: bool | dict = True, align_steps: int = -1,
        align_weight: float = 2.5, recipe: str = RECIPE, t_min_low: float = 0.01, shift: float | None = None,
        max_sequence_length: int = 256, dtype: str = "auto", gradient_checkpointing: bool | None = None,
    ) -> NTMDiffusersGenerator:
        """`init = "diffusers:PATH"` names the SD3-family pipeline folder; `data` an optional caption folder to
        train on (default: the world's train split); `transporter` True, False (f_T = id) or a table of
        `TransporterConfig` options; `shift` the time grid's shift (default: the pipeline scheduler's)."""
        problems = check_inputs(name, {"init": init, "data": data})
        if problems:
            raise FileNotFoundError("\n".join(problems))
        parts = load_parts(str(init), ctx.device, dtype, max_sequence_length)
        config = latent_config(parts, int(ctx.world.resolution), steps, transporter, shift, t_min_low)
        directory = train_ntm_diffusers(ctx, parts, config, data, align_steps, align_weight, recipe, gradient_checkpointing)
        model = build_model(parts, config)
        state, _ = load_pretrained(directory, kind=NTM.KIND)
        model.load_state_dict(state)
        model.eval().requires_grad_(False)
        side = config.transporter.resolution if config.transporter else int(ctx.world.resolution) // parts.codec.factor
        settings = {
            "init": PREFIX + parts.source.identity, "pipeline": parts.pipeline, "latent_shape": [parts.codec.channels, side, side],
            "vae_scaling_factor": parts.codec.scale, "vae_shift_factor": parts.codec.shift, "shift": config.shift,
            "fine_tuning": "full", "dtype": str(parts.dtype).removeprefix("torch."),
        }
        return cls(model, parts.codec, name, guidance, bound_samples, weights_hash(directory), settings,
                   read_metadata(directory).get("training"))

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_dim(self) -> int:
        c, h, w = self.spec.settings["latent_shape"]
        return c * h * w

    def _noises(self, seeds: Sequence[int]) -> Tensor:
        shape = (self.model.config.steps + 1, *self.spec.settings["latent_shape"])
        return per_sample_noise(seeds, shape, self._device).transpose(0, 1)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        if steps not in (None, self.model.config.steps):
            raise ValueError(f"{self.spec.name} samples in its trained {self.model.config.steps} steps, not {steps}")
        tokens = self.model.encode_text(list(prompts))
        null = self.model.encode_text([""] * len(prompts))
        z = self.model.sample(self._noises(seeds), tokens, null, self.guidance)
        return to_pixels(self.codec.decode(z)).cpu()

    def _settings(self, **extra: Any) -> dict[str, Any]:
        return {"nll_space": "latent", "latent_dim": self.latent_dim, "guidance": 1.0, **extra}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        """IWAE bound on -log p(z) of the VAE latent z of x (nats over the latent's dimensions, not pixels')."""
        z = self.codec.encode(x.to(self._device))
        bound = self.model.data_bound(z, self.model.encode_text(list(prompts)), self.bound_samples, list(seeds))
        settings = self._settings(samples=bound.samples, t_min=bound.t_min, of="z_{t_0}, the VAE latent (posterior mean) of x")
        return LikelihoodResult(-bound.iwae_nats, "iwae", "data", settings)

    @torch.no_grad()
    def trajectory_log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        """Exact -log p of one forward latent trajectory from z_{t_0} = the latent of x, drawn per sample from its seed."""
        m, z = self.model, self.codec.encode(x.to(self._device))
        times = m.times(m.config.t_min_eval)
        noises = per_sample_noise(seeds, (m.config.steps, *z.shape[1:]), self._device).transpose(0, 1)
        traj, _ = m.chain_from(z, times, noises)
        log_p, _ = m.trajectory_log_prob(traj, times, m.encode_text(list(prompts)))
        return LikelihoodResult(-log_p, "exact", "trajectory", self._settings(t_min=m.config.t_min_eval, steps=m.config.steps))



class DiffusersLatentFlowGenerator(Generator):
    """The pretrained SD3-family flow model itself, in the same VAE latent space as `ntm-diffusers`: the comparison
    row of its likelihood. Samples by Euler steps of the probability-flow ODE with classifier-free guidance (this
    project's time grid and sampler, then one VAE decode); its NLL is the ODE log-likelihood of the latent z
    (`ntm.flow_matching.ode_log_likelihood`), per latent dimension like the NTM's (`nll_space = "latent"`)."""

    capabilities = Capabilities(likelihood=True, guidance=True)

    def __init__(
        self, parts: Parts, name: str, resolution: int, steps: int, guidance: float, shift: float,
        likelihood: Mapping[str, Any],
    ) -> None:
        from baselines.flow_matching import LikelihoodOptions
        from ntm.flow_matching import nfe

        self.parts, self.steps, self.guidance, self.shift = parts, steps, guidance, shift
        self.likelihood = LikelihoodOptions(**dict(likelihood))
        self.velocity = parts.velocity.eval().requires_grad_(False)
        latent_config(parts, resolution, 1, False, shift, 0.0)  # the same checks of the resolution as the NTM's
        self.latent_shape = [parts.codec.channels, resolution // parts.codec.factor, resolution // parts.codec.factor]
        self.spec = GeneratorSpec(
            name=name, family="flow-matching", steps=steps, nfe=nfe("euler", steps, guidance),
            parameters=count_parameters(self.velocity), weights_hash=folder_fingerprint(parts.source.folder),
            settings={
                "init": PREFIX + parts.source.identity, "pipeline": parts.pipeline, "solver": "euler", "guidance": guidance,
                "shift": shift, "likelihood": self.likelihood.__dict__, "nll_space": "latent",
                "latent_shape": self.latent_shape, "dtype": "float32",
            },
        )

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, init: str | None = None, steps: int = 4, guidance: float = 1.0,
        shift: float | None = None, likelihood: dict | None = None, max_sequence_length: int = 256, dtype: str = "auto",
    ) -> DiffusersLatentFlowGenerator:
        """`init = "diffusers:PATH"` as for `ntm-diffusers`; `likelihood` the ODE's {steps, solver, trace, probes}."""
        problems = check_inputs(name, {"init": init})
        if problems:
            raise FileNotFoundError("\n".join(problems))
        parts = load_parts(str(init), ctx.device, dtype, max_sequence_length)
        return cls(parts, name, int(ctx.world.resolution), steps, guidance, parts.shift if shift is None else shift,
                   likelihood or {})

    @property
    def _device(self) -> torch.device:
        return next(self.velocity.parameters()).device

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        from ntm.flow_matching import sample_euler
        from ntm.schedule import time_grid

        noise = per_sample_noise(seeds, tuple(self.latent_shape), self._device)
        cond = self.velocity.encode_text(list(prompts))
        null = self.velocity.encode_text([""] * len(prompts))
        z = sample_euler(self.velocity, noise, cond, null, time_grid(steps or self.steps, self.shift), self.guidance)
        return to_pixels(self.parts.codec.decode(z)).cpu()

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        """ODE estimate of -log p(z) of the VAE latent z of x (nats over the latent's dimensions)."""
        from ntm.flow_matching import ode_log_likelihood

        o = self.likelihood
        z = self.parts.codec.encode(x.to(self._device))
        result = ode_log_likelihood(
            self.velocity, z, self.velocity.encode_text(list(prompts)), steps=o.steps, solver=o.solver, trace=o.trace,
            probes=o.probes, seeds=seeds,
        )
        settings = result.settings | {"guidance": 1.0, "nll_space": "latent", "latent_dim": z[0].numel()}
        return LikelihoodResult(-result.logp_nats, "ode", "data", settings, result.stderr_nats)
