"""NTM as a Generator: `ntm` (transporter, exact flow steps) and `ntm-no-transporter` (f_T = id).

Both are trained by one recipe on the same budget (`[train.ntm]` in the preset), from scratch or
initialised from the flow-matching teacher (`init = "teacher"`), and differ only in f_T: without
it each step is Gaussian in x, which is few-step Gaussian diffusion with a learned variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from baselines.base import BuildContext, Capabilities, Generator, GeneratorSpec, LikelihoodResult, to_pixels
from baselines.flow_matching import teacher_backbone, train_teacher
from baselines.training import per_sample_noise, training_batch
from ntm.backbone import count_parameters
from ntm.checkpoint import weights_hash
from ntm.model import NTM, NTMConfig, alignment_weight
from ntm.predictor import predictor_config
from ntm.schedule import transition
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig, fit
from ntm.transporter import TransporterConfig

RECIPE = "ntm"
INITS = ("scratch", "teacher")


def ntm_config(ctx: BuildContext, transporter: bool, steps: int) -> NTMConfig:
    """The NTM for this context: the shared backbone as predictor, and the preset's transporter or none."""
    backbone = teacher_backbone(ctx)
    f_t = None
    if transporter:
        options = dict(ctx.backbone.get("transporter", {}))
        f_t = TransporterConfig(
            resolution=backbone.resolution, channels=backbone.in_channels, patch=backbone.patch,
            vocab_size=backbone.vocab_size, **options,
        )
    return NTMConfig(predictor=predictor_config(backbone), transporter=f_t, steps=steps)


def train_ntm(ctx: BuildContext, transporter: bool, steps: int = 4, init: str = "scratch", align_steps: int = 0) -> Path:
    """The checkpoint folder of this NTM, trained on first use (all K steps per trajectory, end to end)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; available: {', '.join(INITS)}")
    train = TrainConfig.from_dict(ctx.train_config(RECIPE))
    config = ntm_config(ctx, transporter, steps)
    world = ctx.world
    recipe = {"ntm": config.to_dict(), "train": train.__dict__, "init": init, "align_steps": align_steps, "world": getattr(world, "name", "?")}
    if init == "teacher":
        recipe["teacher"] = weights_hash(train_teacher(ctx))

    def run(directory: Path) -> None:
        torch.manual_seed(train.seed)
        teacher = None
        if init == "teacher":
            teacher = FlowMatchingTeacher.from_pretrained(train_teacher(ctx), ctx.device).requires_grad_(False)
            model = NTM.from_teacher(teacher, config)
        else:
            model = NTM(config)
        model = model.to(ctx.device)
        gen = torch.Generator().manual_seed(train.seed)

        def step_loss(step: int) -> Tensor:
            x0, captions = training_batch(world, step, train.batch_size, train.seed, train.cfg_dropout, ctx.device)
            tokens = model.encode_text(captions)
            loss = model.loss(x0, tokens, gen).mean()
            weight = alignment_weight(step, align_steps) if teacher is not None else 0.0
            if weight > 0:
                loss = loss + weight * model.alignment_loss(teacher, x0, tokens, gen).mean()
            return loss.float()

        name = "ntm" if transporter else "ntm-no-transporter"
        ema, stats = fit(model, step_loss, train, f"train {name}", ctx.progress)
        ema.save_pretrained(directory, train=train.__dict__, stats=stats.__dict__, init=init, world=recipe["world"])

    return ctx.checkpoint(RECIPE, recipe, run)


class NTMGenerator(Generator):
    """K predictor passes in u-space, one inverse of f_T; likelihoods exact (trajectory) and bounded (data)."""

    capabilities = Capabilities(likelihood=True, guidance=True, trajectory=True)

    def __init__(self, model: NTM, name: str, guidance: float, bound_samples: int, weights: str, init: str) -> None:
        self.model, self.guidance, self.bound_samples = model, guidance, bound_samples
        k = model.config.steps
        family = "ntm" if model.transporter is not None else "gaussian"
        self.spec = GeneratorSpec(
            name=name, family=family, steps=k, nfe=k * (1 if guidance in (0, 1) else 2),
            parameters=count_parameters(model), weights_hash=weights,
            settings={
                "guidance": guidance, "t_min": model.config.t_min_eval, "init": init,
                "transporter_inverse": model.transporter is not None, "bound_samples": bound_samples,
            },
        )

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, transporter: bool = True, steps: int = 4, guidance: float = 1.0,
        init: str = "scratch", align_steps: int = 0, bound_samples: int = 8,
    ) -> NTMGenerator:
        directory = train_ntm(ctx, transporter, steps, init, align_steps)
        return cls(NTM.from_pretrained(directory, ctx.device), name, guidance, bound_samples, weights_hash(directory), init)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        if steps not in (None, self.model.config.steps):
            raise ValueError(f"{self.spec.name} samples in its trained {self.model.config.steps} steps, not {steps}")
        c = self.model.config.predictor
        shape = (self.model.config.steps + 1, c.in_channels, c.resolution, c.resolution)
        noises = per_sample_noise(seeds, shape, self._device).transpose(0, 1)
        tokens = self.model.encode_text(list(prompts))
        null = self.model.encode_text([""] * len(prompts))
        return to_pixels(self.model.sample(noises, tokens, null, self.guidance))

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        bound = self.model.data_bound(x.to(self._device), self.model.encode_text(list(prompts)), self.bound_samples, list(seeds))
        settings = {"samples": bound.samples, "t_min": bound.t_min, "of": "x_{t_0}, the sampler's output", "guidance": 1.0}
        return LikelihoodResult(-bound.iwae_nats, "iwae", "data", settings)

    @torch.no_grad()
    def trajectory_log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        """Exact -log p(x_{t_0..K} | c) of one forward trajectory from x_{t_0} = x, drawn per sample from its seed."""
        m, x = self.model, x.to(self._device)
        times = m.times(m.config.t_min_eval)
        noises = per_sample_noise(seeds, (m.config.steps + 1, *x.shape[1:]), self._device).transpose(0, 1)
        # forward_trajectory starts from x0 at t = 0; start it from x_{t_0} itself instead
        traj = [x]
        for i in range(m.config.steps - 1, -1, -1):
            a, sig = transition(float(times[i + 1]), float(times[i]))
            traj.append(a * traj[-1] + sig * noises[i])
        log_p, _ = m.trajectory_log_prob(torch.stack(traj[::-1]), times, m.encode_text(list(prompts)))
        return LikelihoodResult(-log_p, "exact", "trajectory", {"t_min": m.config.t_min_eval, "steps": m.config.steps, "guidance": 1.0})
