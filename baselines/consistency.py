"""Consistency models from the flow-matching teacher: distillation (CD) and teacher-free training (CT).

The consistency function is the student's x0 prediction f_theta(x_t, t, c) = x_t - t v_theta(x_t, t, c),
which meets the boundary condition f_theta(x, 0) = x exactly whatever the network outputs.
Time is cut into `intervals` steps by `time_grid(intervals, shift)`; each sample draws an interval
n and its two ends t = grid[n] > s = grid[n + 1], and the loss pulls f_theta(x_t, t) towards the
target f_{theta^-}(x_s, s) of an EMA "target network" theta^- (Song et al., 2023, eq. 7):
- CD (Song et al., 2023, Alg. 2; guidance-distilled and skipping-step as in LCM, Luo et al., 2023,
  eq. 9): x_t = (1 - t) x0 + t eps from real data and x_s the teacher's one ODE step t -> s with
  classifier-free guidance w (Euler, or Heun's 2nd order step, skipped on a last step to 0);
- CT (Song et al., 2023, Alg. 3): no teacher; x_s = (1 - s) x0 + s eps with the same x0 and eps,
  the one-sample estimate of the flow the teacher would follow.
The distance is the pseudo-Huber sqrt(||d||^2 + c^2) - c of iCT (Song & Dhariwal, 2023, sec. 3.3) or
the squared L2 norm of the original paper, with every interval weighted alike (LCM's choice), and
the number of intervals is fixed (no iCT curriculum). The student starts from the teacher's
weights, as every student here does, and is sampled with the multistep consistency sampler
(Song et al., 2023, Alg. 1) at any step count: the checkpoint does not depend on `steps`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from baselines.base import BuildContext
from baselines.students import StudentGenerator, student_batch, train_student, x0_prediction
from baselines.training import CountingTeacher
from ntm.flow_matching import guided_velocity
from ntm.schedule import time_grid
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig

RECIPE = "consistency"
FAMILY = "consistency"
METHODS = ("cd", "ct")
SOLVERS = ("euler", "heun")
LOSSES = ("huber", "l2")
HUBER_REFERENCE_DIM = 3072
"""The data dimension (CIFAR-10, 3 x 32 x 32) at which `huber_c` is quoted, as in iCT."""

Method = Literal["cd", "ct"]
Solver = Literal["euler", "heun"]
LossKind = Literal["huber", "l2"]


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """Per-sample times (B,) shaped to broadcast against `like` (B, ...), in its dtype."""
    return t.to(like.dtype).reshape(-1, *[1] * (like.ndim - 1))


def huber_scale(dim: int, c: float = 0.03) -> float:
    """The pseudo-Huber c for data of `dim` values: c sqrt(dim / 3072) (iCT's 0.00054 sqrt(dim), up to rounding)."""
    return c * math.sqrt(dim / HUBER_REFERENCE_DIM)


def pseudo_huber(d: Tensor, c: float) -> Tensor:
    """sqrt(||d||^2 + c^2) - c per sample (Song & Dhariwal, 2023, eq. 12), as ||d||^2 / (sqrt(||d||^2 + c^2) + c).

    The rationalised form is the same value without cancellation, and exactly 0 at d = 0.
    """
    sq = d.flatten(1).square().sum(1)
    return sq / ((sq + c * c).sqrt() + c)


def consistency_loss(prediction: Tensor, target: Tensor, loss: LossKind = "huber", c: float = 0.03) -> Tensor:
    """Per-sample distance d(f_theta(x_t, t), target): pseudo-Huber with constant c, or ||.||^2 ("l2")."""
    d = prediction - target
    if loss == "huber":
        return pseudo_huber(d, c)
    if loss == "l2":
        return d.flatten(1).square().sum(1)
    raise ValueError(f"unknown loss {loss!r}; available: {', '.join(LOSSES)}")


@torch.no_grad()
def teacher_step(
    teacher: nn.Module, x: Tensor, t: Tensor, s: Tensor, tokens: Tensor, null_tokens: Tensor, guidance: float,
    solver: Solver = "euler",
) -> Tensor:
    """The teacher's guided ODE step x_t -> x_s_hat for per-sample times t > s (B,), in float64 as the samplers.

    Euler: x_s = x_t + (s - t) v_w(x_t, t) with v_w = v_u + w (v_c - v_u). Heun adds the trapezoidal
    correction x_s = x_t + (s - t) (v_w(x_t, t) + v_w(x_s_euler, s)) / 2 on the samples with s > 0 only
    (Karras et al., 2022, Alg. 1), so a step to s = 0 costs one guided evaluation with either solver.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(SOLVERS)}")
    h = _per_sample(s.double() - t.double(), x.double())
    d = guided_velocity(teacher, x, t.to(x.dtype), tokens, null_tokens, guidance).double()
    x_next = x.double() + h * d
    later = s > 0
    if solver == "heun" and bool(later.any()):
        d2 = guided_velocity(
            teacher, x_next[later].to(x.dtype), s[later].to(x.dtype), tokens[later], null_tokens[later], guidance
        ).double()
        x_next[later] = x.double()[later] + h[later] * 0.5 * (d[later] + d2)
    return x_next.to(x.dtype)


@torch.no_grad()
def consistency_target(target_net: nn.Module, x_s: Tensor, s: Tensor, tokens: Tensor) -> Tensor:
    """The target f_{theta^-}(x_s, s) = x_s - s v_{theta^-}(x_s, s): x_s itself wherever s = 0."""
    return x0_prediction(target_net, x_s, s, tokens)


@torch.no_grad()
def update_target(target_net: nn.Module, student: nn.Module, decay: float) -> None:
    """theta^- <- decay theta^- + (1 - decay) theta, in place (Song et al., 2023, Alg. 2)."""
    for pt, ps in zip(target_net.parameters(), student.parameters(), strict=True):
        pt.lerp_(ps.detach(), 1 - decay)


@dataclass(frozen=True)
class ConsistencyOptions:
    """The method's knobs; `huber_c` is the pseudo-Huber constant at 3072 dimensions, scaled by `huber_scale`.

    `shift` sets the training grid and the sampler's times alike, so with `steps` dividing
    `intervals` every sampling time is a grid time the student was trained at.
    """

    method: Method = "cd"
    teacher_guidance: float = 2.0
    intervals: int = 16
    target_ema: float = 0.95
    solver: Solver = "euler"
    loss: LossKind = "huber"
    huber_c: float = 0.03
    shift: float = 1.0

    def __post_init__(self) -> None:
        for value, choices, what in (
            (self.method, METHODS, "method"), (self.solver, SOLVERS, "solver"), (self.loss, LOSSES, "loss")
        ):
            if value not in choices:
                raise ValueError(f"unknown {what} {value!r}; available: {', '.join(choices)}")
        if isinstance(self.intervals, bool) or not isinstance(self.intervals, int) or self.intervals < 1:
            raise ValueError(f"intervals must be an integer >= 1, got {self.intervals!r}")
        if not 0.0 <= self.target_ema <= 1.0:
            raise ValueError(f"target_ema must lie in [0, 1], got {self.target_ema}")
        if not self.huber_c > 0:
            raise ValueError(f"huber_c must be > 0, got {self.huber_c}")

    def to_dict(self) -> dict:
        """The options that shape the weights: CT never calls the teacher, so it drops the teacher's knobs."""
        d = dict(self.__dict__)
        if self.method == "ct":
            del d["teacher_guidance"], d["solver"]
        return d


class ConsistencyObjective:
    """`step_loss(step)` for `ntm.train.fit`: one consistency-loss batch per optimizer step.

    The target network `target` starts as a copy of the student and is moved towards the current
    student at the start of every call, i.e. once after each optimizer step (a no-op on the first).
    """

    def __init__(
        self, student: FlowMatchingTeacher, teacher: nn.Module, options: ConsistencyOptions,
        batch: Callable[[int], tuple[Tensor, list[str]]], generator: torch.Generator,
    ) -> None:
        self.student, self.teacher, self.options = student, teacher, options
        self.batch, self.generator = batch, generator
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        self.grid = time_grid(options.intervals, options.shift)

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.target.load_state_dict(state["target"])

    def __call__(self, step: int) -> Tensor:
        o = self.options
        update_target(self.target, self.student, o.target_ema)
        x0, captions = self.batch(step)
        b = x0.shape[0]
        n = torch.randint(0, o.intervals, (b,), generator=self.generator)
        t, s = self.grid[n].to(x0.device), self.grid[n + 1].to(x0.device)
        eps = torch.randn(x0.shape, generator=self.generator).to(x0)
        x_t = (1 - _per_sample(t, x0)) * x0 + _per_sample(t, x0) * eps
        tokens = self.student.encode_text(captions)
        with torch.no_grad():
            if o.method == "cd":
                null = self.teacher.encode_text([""] * b)
                x_s = teacher_step(self.teacher, x_t, t, s, tokens, null, o.teacher_guidance, o.solver)
            else:
                x_s = (1 - _per_sample(s, x0)) * x0 + _per_sample(s, x0) * eps
            target = consistency_target(self.target, x_s, s, tokens)
        prediction = x0_prediction(self.student, x_t, t, tokens)
        c = huber_scale(x0[0].numel(), o.huber_c)
        return consistency_loss(prediction, target, o.loss, c).mean().float()


def train_consistency(ctx: BuildContext, options: ConsistencyOptions) -> Path:
    """The checkpoint folder of the consistency student for `options` (budget `[train.consistency]`), cached."""

    def make_loss(
        student: FlowMatchingTeacher, teacher: CountingTeacher, train: TrainConfig, generator: torch.Generator
    ) -> ConsistencyObjective:
        return ConsistencyObjective(student, teacher, options, lambda step: student_batch(ctx, train, step), generator)

    return train_student(ctx, RECIPE, options.to_dict(), make_loss, f"train {RECIPE} ({options.method})")


class ConsistencyGenerator(StudentGenerator):
    """A consistency student sampled with the multistep consistency sampler, no guidance, NFE = steps."""

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, steps: int = 4, teacher_guidance: float = 2.0, intervals: int = 16,
        target_ema: float = 0.95, solver: Solver = "euler", loss: LossKind = "huber", huber_c: float = 0.03,
        method: Method = "cd", shift: float = 1.0,
    ) -> ConsistencyGenerator:
        options = ConsistencyOptions(method, teacher_guidance, intervals, target_ema, solver, loss, huber_c, shift)
        directory = train_consistency(ctx, options)
        return cls.from_checkpoint(directory, ctx.device, name, FAMILY, "multistep", steps, shift)
