"""Distilled few-step students of the rectified-flow teacher, sampled with deterministic Euler steps.

- `progressive`: progressive distillation (Salimans & Ho, 2022, Alg. 2) of the teacher's Euler
  sampler. Each stage halves the step count (`start_steps` -> ... -> `steps`); in a stage with N
  student steps one student step t -> s on time_grid(N) is regressed onto TWO steps t -> mid -> s of
  the stage teacher on time_grid(2N). Stage 1's teacher is the frozen flow-matching teacher with
  classifier-free guidance, which folds guidance into the student (Meng et al., 2023, stage one);
  later stages' teacher is a frozen copy of the student at the end of the previous stage, unguided.
- `reflow`: rectified-flow reflow (Liu et al., 2022, "2-rectified flow"; InstaFlow, Liu et al., 2023,
  Sec. 3): pairs (eps, ODE_teacher(eps)) from the guided teacher's `start_steps`-step Euler sampler,
  and the straight-line flow-matching loss between them, so the student's paths straighten and a few
  Euler steps suffice. InstaFlow's final one-step LPIPS distillation is not part of it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from baselines.base import BuildContext
from baselines.students import StudentGenerator, student_batch, train_student
from baselines.training import CountingTeacher
from ntm.flow_matching import Velocity, flow_matching_loss, guided_velocity, sample_euler, sample_training_times
from ntm.schedule import time_grid
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig

RECIPE = "distilled"
METHODS = ("progressive", "reflow")

StepLoss = Callable[[int], Tensor]
MakeLoss = Callable[[FlowMatchingTeacher, CountingTeacher, TrainConfig, torch.Generator], StepLoss]


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """Times (B,) shaped to broadcast against `like` (B, ...), in its dtype."""
    return t.to(like.dtype).reshape(-1, *[1] * (like.ndim - 1))


def stage_plan(start_steps: int, steps: int) -> list[int]:
    """The student's Euler step count in each stage: start_steps / 2, start_steps / 4, ..., steps.

    Progressive distillation halves the step count once per stage, so `start_steps` must be
    `steps` times a power of two greater than 1.
    """
    ratio = start_steps // steps if steps >= 1 else 0
    if ratio < 2 or start_steps % steps or ratio & (ratio - 1):
        raise ValueError(f"start_steps must be steps times a power of two >= 2, got {start_steps} and {steps}")
    plan = [start_steps // 2]
    while plan[-1] > steps:
        plan.append(plan[-1] // 2)
    return plan


def stage_of(step: int, total: int, stages: int) -> int:
    """The stage optimizer step `step` of `total` belongs to when the budget is split evenly across stages."""
    return step * stages // total


def stage_times(n: Tensor, steps: int, shift: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample float64 times (t, mid, s) of student step n (B,) out of `steps`.

    The student steps t -> s on time_grid(steps, shift); the stage teacher's two steps pass through
    mid = time_grid(2 steps, shift)[2n + 1].
    """
    grid, fine = time_grid(steps, shift), time_grid(2 * steps, shift)
    return grid[n], fine[2 * n + 1], grid[n + 1]


def two_step_target(
    velocity: Velocity, x_t: Tensor, t: Tensor, mid: Tensor, s: Tensor, cond: Tensor, null_cond: Tensor | None,
    guidance: float = 1.0,
) -> Tensor:
    """x_s from two (guided) Euler steps t -> mid -> s of `velocity`, per-sample times (B,), in x_t's dtype."""
    t, mid, s = (u.to(device=x_t.device, dtype=x_t.dtype) for u in (t, mid, s))
    x_mid = x_t + _per_sample(mid - t, x_t) * guided_velocity(velocity, x_t, t, cond, null_cond, guidance)
    return x_mid + _per_sample(s - mid, x_t) * guided_velocity(velocity, x_mid, mid, cond, null_cond, guidance)


def distillation_target_velocity(x_t: Tensor, x_s: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """v* = (x_s - x_t) / (s - t): the velocity whose single Euler step t -> s lands on the target x_s."""
    return (x_s - x_t) / _per_sample((s - t).to(x_t.device), x_t)


class ProgressiveLoss:
    """`step_loss(step)` of progressive distillation; switches the stage teacher at stage boundaries.

    Loss: unweighted mean squared error between v_theta(x_t, t, c) and v*, with x_t = (1 - t) x0 + t eps
    from real data and n ~ U{0, ..., N - 1} per sample. The student's error in x_s is (s - t) times its
    velocity error, so on a uniform grid (shift = 1) this is the x_s-space error times the per-stage
    constant N^2 (Salimans & Ho regress x0 with SNR weighting instead). The teacher of stage k > 1 is
    the raw (not EMA) student as it stands at the first step of stage k; the optimizer state carries on.
    """

    def __init__(
        self, ctx: BuildContext, student: FlowMatchingTeacher, teacher: CountingTeacher, train: TrainConfig,
        generator: torch.Generator, plan: list[int], guidance: float, shift: float,
    ) -> None:
        if train.steps < len(plan):
            raise ValueError(f"{len(plan)} distillation stages need >= {len(plan)} optimizer steps, got {train.steps}")
        self.ctx, self.student, self.teacher, self.train, self.generator = ctx, student, teacher, train, generator
        self.plan, self.guidance, self.shift = plan, guidance, shift
        self.stage = 0

    def _enter(self, stage: int) -> None:
        """Freeze a copy of the student as the teacher of `stage` (counted through the same wrapper)."""
        frozen = copy.deepcopy(self.student).eval().requires_grad_(False)
        for p in frozen.parameters():
            p.grad = None
        self.teacher.teacher = frozen
        self.stage = stage

    def state_dict(self) -> dict:
        """The stage; a later stage's frozen teacher is saved with the CountingTeacher that wraps it."""
        return {"stage": self.stage}

    def load_state_dict(self, state: dict) -> None:
        # the wrapped network is loaded with the saved stage teacher's weights by the CountingTeacher's own state
        self.stage = state["stage"]

    def __call__(self, step: int) -> Tensor:
        stage = stage_of(step, self.train.steps, len(self.plan))
        if stage != self.stage:
            self._enter(stage)
        x0, captions = student_batch(self.ctx, self.train, step)
        b, steps = x0.shape[0], self.plan[stage]
        n = torch.randint(0, steps, (b,), generator=self.generator)
        t, mid, s = stage_times(n, steps, self.shift)
        eps = torch.randn(x0.shape, generator=self.generator).to(x0)
        tokens = self.student.encode_text(captions)
        x_t = (1 - _per_sample(t, x0)) * x0 + _per_sample(t, x0) * eps
        with torch.no_grad():
            guidance = self.guidance if stage == 0 else 1.0
            null = self.teacher.encode_text([""] * b) if guidance != 1 else None
            x_s = two_step_target(self.teacher, x_t, t, mid, s, tokens, null, guidance)
            target = distillation_target_velocity(x_t, x_s, t, s)
        v = self.student(x_t, t.to(x0), tokens)
        return (v - target).square().mean().float()


class ReflowLoss:
    """`step_loss(step)` of reflow: straight-line flow matching on (eps, guided teacher ODE output) pairs.

    The pair is drawn afresh each step (online reflow); only the captions of the data batch are used.
    Times are uniform in (0, 1) as in Liu et al. (2022); the loss is their unweighted velocity MSE.
    """

    def __init__(
        self, ctx: BuildContext, student: FlowMatchingTeacher, teacher: CountingTeacher, train: TrainConfig,
        generator: torch.Generator, teacher_steps: int, guidance: float, shift: float,
    ) -> None:
        self.ctx, self.student, self.teacher, self.train, self.generator = ctx, student, teacher, train, generator
        self.times, self.guidance = time_grid(teacher_steps, shift), guidance

    def __call__(self, step: int) -> Tensor:
        x0, captions = student_batch(self.ctx, self.train, step)
        eps = torch.randn(x0.shape, generator=self.generator).to(x0)
        t = sample_training_times(x0.shape[0], self.generator, kind="uniform").to(x0)
        tokens = self.student.encode_text(captions)
        with torch.no_grad():
            null = self.teacher.encode_text([""] * len(captions))
            x0_teacher = sample_euler(self.teacher, eps, tokens, null, self.times, self.guidance)
        return flow_matching_loss(self.student, x0_teacher, tokens, t, eps).mean().float()


def distillation_loss(
    ctx: BuildContext, method: str = "progressive", steps: int = 4, start_steps: int = 16,
    teacher_guidance: float = 2.0, shift: float = 1.0,
) -> MakeLoss:
    """`make_loss(student, teacher, train, generator)` for `baselines.students.train_student`."""
    if method == "progressive":
        plan = stage_plan(start_steps, steps)
        return lambda student, teacher, train, gen: ProgressiveLoss(
            ctx, student, teacher, train, gen, plan, teacher_guidance, shift
        )
    if method == "reflow":
        if steps < 1 or start_steps < 1:
            raise ValueError(f"steps and start_steps must be >= 1, got {steps} and {start_steps}")
        return lambda student, teacher, train, gen: ReflowLoss(
            ctx, student, teacher, train, gen, start_steps, teacher_guidance, shift
        )
    raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")


def train_distilled(
    ctx: BuildContext, method: str = "progressive", steps: int = 4, start_steps: int = 16,
    teacher_guidance: float = 2.0, shift: float = 1.0,
) -> Path:
    """The checkpoint folder of the distilled student (budget `[train.distilled]`), trained on first use."""
    options = {"method": method, "steps": steps, "start_steps": start_steps, "teacher_guidance": teacher_guidance,
               "shift": shift}
    make_loss = distillation_loss(ctx, **options)
    return train_student(ctx, RECIPE, options, make_loss, f"train {RECIPE} ({method})")


class DistilledGenerator(StudentGenerator):
    """A progressively distilled or reflowed student: `steps` unguided Euler steps, NFE = steps."""

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, steps: int = 4, start_steps: int = 16, teacher_guidance: float = 2.0,
        method: str = "progressive", shift: float = 1.0,
    ) -> DistilledGenerator:
        directory = train_distilled(ctx, method, steps, start_steps, teacher_guidance, shift)
        return cls.from_checkpoint(directory, ctx.device, name, "distilled", "euler", steps, shift)
