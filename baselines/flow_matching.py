"""The flow-matching teacher as a Generator: Euler or Heun sampling with CFG, ODE likelihood."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from baselines.base import BuildContext, Capabilities, Generator, GeneratorSpec, LikelihoodResult, to_pixels
from baselines.training import budget, per_sample_noise, training_batch
from ntm.backbone import BackboneConfig, backbone_config, count_parameters
from ntm.checkpoint import read_metadata, weights_hash
from ntm.flow_matching import nfe, ode_log_likelihood, sample_euler, sample_heun
from ntm.schedule import time_grid
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig, fit

RECIPE = "flow_matching"
SAMPLERS = {"euler": sample_euler, "heun": sample_heun}
SHAPE_KEYS = ("width", "depth", "heads", "text_depth")
"""[backbone] keys that override the named size's shape (the scaling study's width and depth arms)."""


def teacher_backbone(ctx: BuildContext) -> BackboneConfig:
    """The shared backbone as a velocity network for this context's world and preset size (with any of
    `SHAPE_KEYS` set in the preset's [backbone] table overriding the size's own)."""
    world = ctx.world
    shape = {k: ctx.backbone[k] for k in SHAPE_KEYS if k in ctx.backbone}
    return backbone_config(
        ctx.backbone["size"],
        patch=ctx.backbone["patch"],
        resolution=world.resolution,
        in_channels=world.channels,
        out_channels=world.channels,
        vocabulary=tuple(world.vocabulary()),
        **shape,
    )


def train_teacher(ctx: BuildContext) -> Path:
    """The teacher's checkpoint folder for this context, trained on first use and cached after."""
    world = ctx.world
    train = TrainConfig.from_dict(ctx.train_config(RECIPE))
    backbone = teacher_backbone(ctx)
    recipe = {"backbone": backbone.to_dict(), "train": train.__dict__, "world": getattr(world, "name", "?")}

    def run(directory: Path) -> None:
        torch.manual_seed(train.seed)  # the initial weights are part of the recipe
        model = FlowMatchingTeacher(backbone).to(ctx.device)
        gen = torch.Generator().manual_seed(train.seed)

        def step_loss(step: int) -> Tensor:
            x0, captions = training_batch(world, step, train.batch_size, train.seed, train.cfg_dropout, ctx.device)
            return model.loss(x0, model.encode_text(captions), gen).mean()

        ema, stats = fit(model, step_loss, train, f"train {RECIPE}", ctx.progress, state={"noise": gen})
        ema.save_pretrained(
            directory, train=train.__dict__, stats=stats.__dict__, world=recipe["world"], training=budget(ctx, train, 0)
        )

    return ctx.checkpoint(RECIPE, recipe, run)


@dataclass(frozen=True)
class LikelihoodOptions:
    """The ODE likelihood's settings: solver steps, trace estimator and probes (see ode_log_likelihood)."""

    steps: int = 8
    solver: str = "rk4"
    trace: str = "auto"
    probes: int = 1


class FlowMatchingGenerator(Generator):
    """Rectified-flow teacher sampled with `solver` at `steps` steps and CFG weight `guidance`."""

    capabilities = Capabilities(likelihood=True, guidance=True)

    def __init__(
        self, model: FlowMatchingTeacher, name: str, solver: str, steps: int, guidance: float,
        shift: float, likelihood: LikelihoodOptions, weights: str, training: dict | None = None,
    ) -> None:
        if solver not in SAMPLERS:
            raise ValueError(f"unknown solver {solver!r}; available: {', '.join(SAMPLERS)}")
        self.model, self.solver, self.steps, self.guidance, self.shift = model, solver, steps, guidance, shift
        self.likelihood = likelihood
        self.spec = GeneratorSpec(
            name=name, family="flow-matching", steps=steps, nfe=nfe(solver, steps, guidance),
            parameters=count_parameters(model), weights_hash=weights,
            settings={"solver": solver, "guidance": guidance, "shift": shift, "likelihood": likelihood.__dict__},
            training=training or {},
        )

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, solver: str = "euler", steps: int = 4, guidance: float = 1.0,
        shift: float = 1.0, likelihood: dict | None = None,
    ) -> FlowMatchingGenerator:
        directory = train_teacher(ctx)
        model = FlowMatchingTeacher.from_pretrained(directory, ctx.device)
        return cls(
            model, name, solver, steps, guidance, shift, LikelihoodOptions(**(likelihood or {})),
            weights_hash(directory), read_metadata(directory).get("training"),
        )

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        c = self.model.net.config
        noise = per_sample_noise(seeds, (c.in_channels, c.resolution, c.resolution), self._device)
        cond = self.model.encode_text(list(prompts))
        null = self.model.encode_text([""] * len(prompts))
        times = time_grid(steps or self.steps, self.shift)
        x = SAMPLERS[self.solver](self.model, noise, cond, null, times, self.guidance)
        return to_pixels(x)

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        o = self.likelihood
        result = ode_log_likelihood(
            self.model, x.to(self._device), self.model.encode_text(list(prompts)),
            steps=o.steps, solver=o.solver, trace=o.trace, probes=o.probes, seeds=seeds,
        )
        settings = result.settings | {"guidance": 1.0}
        return LikelihoodResult(-result.logp_nats, "ode", "data", settings, result.stderr_nats)
