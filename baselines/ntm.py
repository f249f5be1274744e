"""NTM as a Generator: `ntm` (transporter, exact flow steps), `ntm-no-transporter` (f_T = id) and
`ntm-fast` (the same NTM sampled through its self-distilled denoiser).

The first two are trained by one recipe on the same budget (`[train.ntm]` in the preset), from
scratch or initialised from the flow-matching teacher (`init = "teacher"`), and differ only in f_T:
without it each step is Gaussian in x, which is few-step Gaussian diffusion with a learned variance.
`ntm-fast` adds a denoiser distilled from `ntm`'s exact trajectory score (`[train.ntm_denoiser]`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from baselines.base import BuildContext, Capabilities, Generator, GeneratorSpec, LikelihoodResult, to_pixels
from baselines.flow_matching import teacher_backbone, train_teacher
from baselines.training import CountingTeacher, budget, per_sample_noise, training_batch
from ntm.backbone import count_parameters
from ntm.checkpoint import read_metadata, weights_hash
from ntm.denoiser import Denoiser, distillation_loss, fast_sample
from ntm.model import NTM, NTMConfig, alignment_weight
from ntm.predictor import predictor_config
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig, fit
from ntm.transporter import TransporterConfig

RECIPE = "ntm"
DENOISER_RECIPE = "ntm_denoiser"
INITS = ("scratch", "teacher")
DIFFUSERS_INIT = "diffusers:"
"""`init = "diffusers:PATH"`: the NTM is built around a local SD3-family pipeline instead (`baselines.ntm_diffusers`)."""


def check_inputs(name: str, options: dict) -> list[str]:
    """What stops `name` from loading, found without loading weights: only an `init = "diffusers:PATH"` NTM reads
    local files (its pipeline folder and optional caption folder); every other NTM trains from the world."""
    init = options.get("init")
    if isinstance(init, str) and init.startswith(DIFFUSERS_INIT):
        from baselines.ntm_diffusers import check_inputs as diffusers_inputs

        return diffusers_inputs(name, options)
    return []


def ntm_config(
    ctx: BuildContext, transporter: bool, steps: int, data_variance: float | None = None, step_counts: Sequence[int] = (),
    t_min_low: float = 0.0,
) -> NTMConfig:
    """The NTM for this context: the shared backbone as predictor, and the preset's transporter or none.

    The preset's `[backbone] transporter` table sets the transporter (width, blocks, layers, patch, mix, ...);
    its patch defaults to the predictor's.
    """
    backbone = teacher_backbone(ctx)
    f_t = None
    if transporter:
        options = {"patch": backbone.patch} | dict(ctx.backbone.get("transporter", {}))
        f_t = TransporterConfig(
            resolution=backbone.resolution, channels=backbone.in_channels, vocab_size=backbone.vocab_size, **options,
        )
    return NTMConfig(
        predictor=predictor_config(backbone), transporter=f_t, steps=steps, data_variance=data_variance,
        step_counts=tuple(step_counts), t_min_low=t_min_low,
    )


def at_steps(model: NTM, steps: int | None) -> NTM:
    """`model` set to sample and score at `steps` (None: as built); it must be one of the step counts it trained over."""
    if steps is None or steps == model.config.steps:
        return model
    trained = model.config.trained_steps
    if steps not in trained:
        raise ValueError(f"this NTM was trained over {list(trained)} steps, not {steps}: set sample_steps to one of those")
    model.config = dataclasses.replace(model.config, steps=steps)
    return model


class TrainingLog:
    """Per-step NLLs, the alignment term and its share of the gradient, logged every `every` optimiser steps.

    Held in `fit`'s state, so an interrupted run resumes with its log; saved in the checkpoint's metadata.
    """

    def __init__(self, every: int = 50) -> None:
        self.every = every
        self.rows: list[dict] = []

    def state_dict(self) -> dict:
        return {"every": self.every, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.every, self.rows = state["every"], list(state["rows"])


def _grad_norm(term: Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum(g.double().square().sum() for g in grads if g is not None)))


def train_ntm(
    ctx: BuildContext, transporter: bool, steps: int = 4, init: str = "scratch", align_steps: int = 0,
    data_variance: float | None = 1.0, align_weight: float = 2.5, step_counts: Sequence[int] = (),
    recipe_name: str = RECIPE, align_normalised: bool = True, t_min_low: float = 0.0,
) -> Path:
    """The checkpoint folder of this NTM, trained on first use (all K steps per trajectory, end to end).

    delta = 0 stands for the reverse scale of Gaussian data of variance `data_variance` (None: the
    posterior's C), from scratch and from the teacher alike: with C alone a teacher-initialised NTM starts
    with an unbounded last-step loss as t_min -> 0. From the teacher, an alignment loss pulls the predictor's
    mean to the teacher's posterior mean at `align_weight`, cosine-annealed to 0 over `align_steps` (-1: over
    the whole run, whatever its budget).
    `step_counts` (e.g. [4, 8, 16]) trains over several step counts, one drawn per batch; a batch of K steps
    uses batch_size x steps / K trajectories, so every batch costs the same. `t_min_low` floors the training
    end time t_0 ~ U[t_min_low, 0.05] (`NTM._draw`). The budget is the preset's `[train.<recipe_name>]` table.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; available: {', '.join(INITS)}")
    train = TrainConfig.from_dict(ctx.train_config(recipe_name))
    if align_steps < 0:
        align_steps = train.steps
    config = ntm_config(ctx, transporter, steps, data_variance, step_counts, t_min_low)
    world = ctx.world
    recipe = {"ntm": config.to_dict(), "train": train.__dict__, "init": init, "align_steps": align_steps, "world": getattr(world, "name", "?")}
    if init == "teacher":
        recipe["teacher"] = weights_hash(train_teacher(ctx))
        if align_steps:
            recipe |= {"align_weight": align_weight, "align_estimate": "one_step"}
            if not align_normalised:
                recipe["align_normalised"] = False

    def run(directory: Path) -> None:
        torch.manual_seed(train.seed)
        teacher = None
        if init == "teacher":
            frozen = FlowMatchingTeacher.from_pretrained(train_teacher(ctx), ctx.device).requires_grad_(False)
            model = NTM.from_teacher(frozen, config)
            teacher = CountingTeacher(frozen)
        else:
            model = NTM(config)
        model = model.to(ctx.device)
        gen = torch.Generator().manual_seed(train.seed)
        log = TrainingLog()
        params = [p for p in model.parameters() if p.requires_grad]

        def step_loss(step: int) -> Tensor:
            x0, captions = training_batch(world, step, train.batch_size, train.seed, train.cfg_dropout, ctx.device)
            k = model.draw_steps(gen)
            keep = max(1, train.batch_size * steps // k)
            x0, captions = x0[:keep], captions[:keep]
            tokens = model.encode_text(captions)
            nll, per_step = model.loss_terms(x0, tokens, gen, k)
            loss = nll.mean()
            weight = alignment_weight(step, align_steps, align_weight) if teacher is not None else 0.0
            align = model.alignment_loss(teacher, x0, tokens, gen, k, align_normalised, one_step=True).mean() if weight > 0 else None
            total = loss if align is None else loss + weight * align
            if step % log.every == 0:
                row = {"step": step, "steps": k, "nll_per_dim": loss.item(), "step_nll_per_dim": per_step.mean(0).tolist()}
                if align is not None:
                    nll_norm, align_norm = _grad_norm(loss, params), _grad_norm(weight * align, params)
                    row |= {"align": align.item(), "align_weight": weight, "align_grad_share": align_norm / (align_norm + nll_norm)}
                log.rows.append(row)
            return total.float()

        name = "ntm" if transporter else "ntm-no-transporter"
        state = {"noise": gen, "log": log} | ({} if teacher is None else {"teacher_passes": teacher.pass_count()})
        ema, stats = fit(model, step_loss, train, f"train {name} ({recipe_name})", ctx.progress, state=state)
        spent = 0 if teacher is None else teacher.calls
        ema.save_pretrained(
            directory, train=train.__dict__, stats=stats.__dict__, init=init, world=recipe["world"],
            training=budget(ctx, train, spent, grad_norm_median=stats.grad_norm_median, grad_norm_max=stats.grad_norm_max),
            log=log.rows,
        )

    return ctx.checkpoint(recipe_name, recipe, run)


class NTMGenerator(Generator):
    """K predictor passes in u-space, one inverse of f_T; likelihoods exact (trajectory) and bounded (data)."""

    capabilities = Capabilities(likelihood=True, guidance=True, trajectory=True)

    def __init__(
        self, model: NTM, name: str, guidance: float, bound_samples: int, weights: str, init: str,
        training: dict | None = None, eta: float = 1.0,
    ) -> None:
        if not 0 <= eta <= 1:
            raise ValueError(f"{name}: eta must lie in [0, 1] (1: the ancestral sampler), got {eta}")
        self.model, self.guidance, self.bound_samples, self.eta = model, guidance, bound_samples, eta
        k = model.config.steps
        family = "ntm" if model.transporter is not None else "gaussian"
        sampler = {"sampler": "ancestral"} if eta == 1 else {"sampler": "eta", "eta": eta}
        self.spec = GeneratorSpec(
            name=name, family=family, steps=k, nfe=k * (1 if guidance in (0, 1) else 2),
            parameters=count_parameters(model), weights_hash=weights,
            settings={
                "guidance": guidance, "t_min": model.config.t_min_eval, "init": init,
                "transporter_inverse": model.transporter is not None, "bound_samples": bound_samples,
            } | sampler,
            training=training or {},
        )

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, transporter: bool = True, steps: int = 4, guidance: float = 1.0,
        init: str = "scratch", align_steps: int = 0, bound_samples: int = 8, data_variance: float | None = 1.0,
        align_weight: float = 2.5, step_counts: Sequence[int] = (), recipe: str = RECIPE,
        sample_steps: int | None = None, eta: float = 1.0, align_normalised: bool = True, t_min_low: float = 0.0,
    ) -> NTMGenerator:
        """`steps` is the K the model is built for; `sample_steps` samples (and scores) the same weights at
        another K it was trained over (`step_counts`); `eta` < 1 samples with `ntm.model.eta_step`.

        `init = "diffusers:PATH"` builds the NTM around a local SD3-family pipeline in its VAE latent space
        instead (`baselines.ntm_diffusers`, the `ntm-diffusers` model), on the preset's `[train.<recipe>]` budget
        and the transporter table of `[backbone]` if any; options that only the shared backbone has must stay at
        their defaults there."""
        if init.startswith(DIFFUSERS_INIT):
            unsupported = {
                "step_counts": (tuple(step_counts), ()), "sample_steps": (sample_steps, None), "eta": (eta, 1.0),
                "align_normalised": (align_normalised, True),
            }
            given = sorted(k for k, (value, default) in unsupported.items() if value != default)
            if given:
                raise ValueError(
                    f"{name}: option(s) {given} are not available with init = {init!r}; drop them "
                    "(the ntm-diffusers model lists what an NTM around a diffusers pipeline takes)"
                )
            from baselines.ntm_diffusers import NTMDiffusersGenerator

            f_t = (dict(ctx.backbone.get("transporter", {})) or True) if transporter else False
            return NTMDiffusersGenerator.from_context(
                ctx, name, init=init, steps=steps, guidance=guidance, bound_samples=bound_samples, transporter=f_t,
                align_steps=align_steps, align_weight=align_weight, recipe=recipe, t_min_low=t_min_low,
            )
        directory = train_ntm(
            ctx, transporter, steps, init, align_steps, data_variance, align_weight, step_counts, recipe, align_normalised,
            t_min_low,
        )
        return cls(
            at_steps(NTM.from_pretrained(directory, ctx.device), sample_steps), name, guidance, bound_samples,
            weights_hash(directory), init, read_metadata(directory).get("training"), eta,
        )

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _inputs(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample noises (K+1, B, C, H, W) from the seeds, caption tokens and null tokens."""
        if steps not in (None, self.model.config.steps):
            raise ValueError(f"{self.spec.name} samples in its trained {self.model.config.steps} steps, not {steps}")
        c = self.model.config.predictor
        shape = (self.model.config.steps + 1, c.in_channels, c.resolution, c.resolution)
        noises = per_sample_noise(seeds, shape, self._device).transpose(0, 1)
        return noises, self.model.encode_text(list(prompts)), self.model.encode_text([""] * len(prompts))

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        return to_pixels(self.model.sample(*self._inputs(prompts, seeds, steps), self.guidance, eta=self.eta))

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        bound = self.model.data_bound(x.to(self._device), self.model.encode_text(list(prompts)), self.bound_samples, list(seeds))
        settings = {"samples": bound.samples, "t_min": bound.t_min, "of": "x_{t_0}, the sampler's output", "guidance": 1.0}
        return LikelihoodResult(-bound.iwae_nats, "iwae", "data", settings)

    @torch.no_grad()
    def trajectory_log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        """Exact -log p(x_{t_0..K} | c) of one forward trajectory from x_{t_0} = x, drawn per sample from its seed."""
        m, x = self.model, x.to(self._device)
        times = m.times(m.config.t_min_eval)
        noises = per_sample_noise(seeds, (m.config.steps, *x.shape[1:]), self._device).transpose(0, 1)
        traj, _ = m.chain_from(x, times, noises)
        log_p, _ = m.trajectory_log_prob(traj, times, m.encode_text(list(prompts)))
        return LikelihoodResult(-log_p, "exact", "trajectory", {"t_min": m.config.t_min_eval, "steps": m.config.steps, "guidance": 1.0})


def train_denoiser(ctx: BuildContext, ntm_dir: Path, guidance: float, depth: int = 2) -> Path:
    """The denoiser g(u_{t_0}, c) distilled from the NTM in `ntm_dir` on its own guided samples."""
    train = TrainConfig.from_dict(ctx.train_config(DENOISER_RECIPE))
    recipe = {"ntm": weights_hash(ntm_dir), "train": train.__dict__, "guidance": guidance, "depth": depth}

    def run(directory: Path) -> None:
        model = NTM.from_pretrained(ntm_dir, ctx.device).requires_grad_(False)
        torch.manual_seed(train.seed)
        denoiser = Denoiser.for_model(model, depth=depth).to(ctx.device)
        gen = torch.Generator().manual_seed(train.seed)

        def step_loss(step: int) -> Tensor:
            # only the prompts are used: the trajectories come from the model's own sampler
            _, captions = training_batch(ctx.world, step, train.batch_size, train.seed, 0.0, ctx.device)
            tokens = model.encode_text(captions)
            null = model.encode_text([""] * len(captions))
            return distillation_loss(denoiser, model, tokens, gen, null, guidance).mean().float()

        ema, stats = fit(denoiser, step_loss, train, "distill ntm denoiser", ctx.progress, state={"noise": gen})
        ema.save_pretrained(directory, train=train.__dict__, stats=stats.__dict__, ntm=recipe["ntm"])

    return ctx.checkpoint(DENOISER_RECIPE, recipe, run)


class NTMFastGenerator(NTMGenerator):
    """K predictor passes in u-space and one pass of the self-distilled denoiser: no inverse, no backward.

    Its samples are the denoiser's, not draws from the NTM's density, so it reports no likelihood.
    """

    capabilities = Capabilities(guidance=True)

    def __init__(
        self, model: NTM, denoiser: Denoiser, name: str, guidance: float, weights: str, init: str, training: dict | None = None
    ) -> None:
        super().__init__(model, name, guidance, 0, weights, init, training)
        self.denoiser = denoiser
        self.spec = GeneratorSpec(
            **(self.spec.to_dict() | {
                "family": "ntm", "nfe": self.spec.nfe + 1,
                "parameters": self.spec.parameters + count_parameters(denoiser),
                "settings": self.spec.settings | {"sampler": "denoiser", "transporter_inverse": False},
            })
        )

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, steps: int = 4, guidance: float = 1.0, init: str = "scratch",
        align_steps: int = 0, data_variance: float | None = 1.0, denoiser_depth: int = 2,
        align_weight: float = 2.5, step_counts: Sequence[int] = (), recipe: str = RECIPE, t_min_low: float = 0.0,
    ) -> NTMFastGenerator:
        ntm_dir = train_ntm(
            ctx, True, steps, init, align_steps, data_variance, align_weight, step_counts, recipe, t_min_low=t_min_low
        )
        den_dir = train_denoiser(ctx, ntm_dir, guidance, denoiser_depth)
        model, denoiser = NTM.from_pretrained(ntm_dir, ctx.device), Denoiser.from_pretrained(den_dir, ctx.device)
        training = read_metadata(ntm_dir).get("training")
        if training is not None:
            den = read_metadata(den_dir).get("train", {})
            training = training | {"denoiser_steps": den.get("steps"), "denoiser_batch_size": den.get("batch_size")}
        return cls(model, denoiser, name, guidance, f"{weights_hash(ntm_dir)}+{weights_hash(den_dir)}", init, training)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        noises, tokens, null = self._inputs(prompts, seeds, steps)
        return to_pixels(fast_sample(self.model, self.denoiser, noises, tokens, null, self.guidance))
