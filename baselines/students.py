"""What the few-step students (consistency, distilled, adversarial) share.

Every student is the teacher's own network (the shared backbone as a velocity field
v(x_t, t, c), x0_hat = x_t - t v), initialised from the teacher's weights and trained by one
method file against the frozen teacher. They differ in the loss and in how they are sampled:
- "euler": deterministic Euler steps of the student's field (progressive distillation, reflow);
- "multistep": predict x0 at each time, then re-noise it to the next time with fresh noise
  (multistep consistency sampling, Song et al., 2023, Alg. 1; also ADD's sampler).
Students are guidance-distilled (their targets use the teacher's CFG) and sampled without
guidance, so their NFE equals their step count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from baselines.base import BuildContext, Capabilities, Generator, GeneratorSpec, to_pixels
from baselines.flow_matching import train_teacher
from baselines.training import CountingTeacher, budget, per_sample_noise, training_batch
from ntm.backbone import count_parameters
from ntm.checkpoint import read_metadata, weights_hash
from ntm.flow_matching import sample_euler
from ntm.schedule import time_grid
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig, fit

Sampler = Literal["euler", "multistep"]
SAMPLERS = ("euler", "multistep")


def x0_prediction(net: FlowMatchingTeacher, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
    """x0_hat = x_t - t v(x_t, t, c) for per-sample times t (B,): exact at t = 0 whatever v is."""
    return x - t.to(x.dtype).view(-1, *[1] * (x.ndim - 1)) * net(x, t.to(x.dtype), tokens)


@torch.no_grad()
def sample_multistep(net: FlowMatchingTeacher, noises: Tensor, tokens: Tensor, times: Tensor) -> Tensor:
    """Multistep x0-prediction sampling over `times` (1 -> 0) from noises (K, B, ...).

    x = noises[0] at times[0]; at each time predict x0_hat and, unless the next time is 0,
    re-noise it: x = (1 - s) x0_hat + s noises[i + 1]. Returns the last x0_hat.
    """
    grid = times.tolist()
    if len(grid) - 1 != noises.shape[0]:
        raise ValueError(f"{len(grid) - 1} steps need {len(grid) - 1} noise tensors, got {noises.shape[0]}")
    x = noises[0]
    b = x.shape[0]
    for i, t in enumerate(grid[:-1]):
        x0 = x0_prediction(net, x, torch.full((b,), t, device=x.device), tokens)
        s = grid[i + 1]
        x = (1 - s) * x0 + s * noises[i + 1] if (s > 0 and i + 1 < noises.shape[0]) else x0
    return x


def train_student(
    ctx: BuildContext,
    recipe: str,
    options: dict,
    make_loss: Callable[[FlowMatchingTeacher, CountingTeacher, TrainConfig, torch.Generator], Callable[[int], Tensor]],
    description: str,
) -> Path:
    """The checkpoint folder of the student trained by `recipe` (budget `[train.<recipe>]`), cached.

    `make_loss(student, teacher, train, generator)` returns `step_loss(step)` for `ntm.train.fit`;
    `student` starts as a copy of the teacher, `teacher` is frozen and counts its forward passes.
    `options` (the method's own knobs) join the cache key and the saved metadata. A `step_loss` with
    its own state (a target network, a discriminator) exposes `state_dict`/`load_state_dict`.
    """
    train = TrainConfig.from_dict(ctx.train_config(recipe))
    teacher_dir = train_teacher(ctx)
    key = {"method": recipe, "train": train.__dict__, "teacher": weights_hash(teacher_dir), "options": options}

    def run(directory: Path) -> None:
        frozen = FlowMatchingTeacher.from_pretrained(teacher_dir, ctx.device).requires_grad_(False)
        teacher = CountingTeacher(frozen)
        student = FlowMatchingTeacher.from_pretrained(teacher_dir, ctx.device).train().requires_grad_(True)
        torch.manual_seed(train.seed)
        gen = torch.Generator().manual_seed(train.seed)
        step_loss = make_loss(student, teacher, train, gen)
        # everything a resumed run needs to continue to the bit: the noise generator, the teacher's
        # pass count (and a progressive stage teacher's weights), the loss's own state if it has one
        state = {"noise": gen, "teacher": teacher} | ({"loss": step_loss} if hasattr(step_loss, "state_dict") else {})
        ema, stats = fit(student, step_loss, train, description, ctx.progress, state=state)
        ema.save_pretrained(
            directory, train=train.__dict__, stats=stats.__dict__, method=recipe, options=options,
            training=budget(ctx, train, teacher.calls),
        )

    return ctx.checkpoint(recipe, key, run)


def student_batch(ctx: BuildContext, train: TrainConfig, step: int) -> tuple[Tensor, list[str]]:
    """Training batch `step` (images in [-1, 1], captions with CFG dropout) for a student."""
    return training_batch(ctx.world, step, train.batch_size, train.seed, train.cfg_dropout, ctx.device)


class StudentGenerator(Generator):
    """A few-step student behind the Generator interface: no guidance at sampling, NFE = steps."""

    capabilities = Capabilities()

    def __init__(
        self, model: FlowMatchingTeacher, name: str, family: str, sampler: Sampler, steps: int,
        weights: str, settings: dict | None = None, training: dict | None = None, shift: float = 1.0,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.model, self.sampler, self.steps, self.shift = model, sampler, steps, shift
        self.spec = GeneratorSpec(
            name=name, family=family, steps=steps, nfe=steps, parameters=count_parameters(model),
            weights_hash=weights, settings={"sampler": sampler, "guidance": 1.0, "shift": shift} | (settings or {}),
            training=training or {},
        )

    @classmethod
    def from_checkpoint(
        cls, directory: Path, device: torch.device, name: str, family: str, sampler: Sampler, steps: int, shift: float = 1.0
    ) -> StudentGenerator:
        meta = read_metadata(directory)
        model = FlowMatchingTeacher.from_pretrained(directory, device)
        return cls(
            model, name, family, sampler, steps, weights_hash(directory),
            {"method": meta.get("method"), **meta.get("options", {})}, meta.get("training"), shift,
        )

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        k = steps or self.steps
        c = self.model.net.config
        noises = per_sample_noise(seeds, (k, c.in_channels, c.resolution, c.resolution), self._device).transpose(0, 1)
        tokens = self.model.encode_text(list(prompts))
        times = time_grid(k, self.shift)
        if self.sampler == "euler":
            x = sample_euler(self.model, noises[0], tokens, None, times, 1.0)
        else:
            x = sample_multistep(self.model, noises, tokens, times)
        return to_pixels(x)
