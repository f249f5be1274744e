"""Distilled students: two-step targets, stage switching with honest teacher counts, and a trained generator."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from baselines.base import BuildContext
from baselines.distilled import (
    DistilledGenerator,
    ReflowLoss,
    distillation_loss,
    distillation_target_velocity,
    stage_of,
    stage_plan,
    stage_times,
    two_step_target,
)
from baselines.flow_matching import teacher_backbone
from baselines.training import CountingTeacher
from benchmarks.worlds import get_world
from ntm.flow_matching import sample_euler
from ntm.schedule import time_grid
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig
from tests.conftest import random_teacher

F64 = torch.float64


def world_context(tmp_path, train: dict | None = None) -> BuildContext:
    backbone = {"size": "tiny", "patch": 4}
    return BuildContext(get_world("shapes", 16), torch.device("cpu"), tmp_path, backbone, train or {}, progress=False)


def test_stage_plan_halves_and_splits_the_budget_evenly():
    assert stage_plan(16, 4) == [8, 4] and stage_plan(8, 1) == [4, 2, 1] and stage_plan(8, 4) == [4]
    for bad in ((4, 4), (12, 4), (2, 4), (16, 0)):
        with pytest.raises(ValueError):
            stage_plan(*bad)
    assert [stage_of(k, 4, 2) for k in range(4)] == [0, 0, 1, 1]
    assert [stage_of(k, 7, 3) for k in range(7)] == [0, 0, 0, 1, 1, 2, 2]


def test_stage_times_nest_the_teacher_grid_in_the_student_grid():
    n = torch.arange(4)
    t, mid, s = stage_times(n, 4, shift=3.0)
    fine = time_grid(8, 3.0)
    torch.testing.assert_close(t, fine[0::2][:4], rtol=0, atol=1e-15)
    torch.testing.assert_close(s, fine[2::2], rtol=0, atol=1e-15)
    torch.testing.assert_close(mid, fine[1::2], rtol=0, atol=0)
    assert bool(((t > mid) & (mid > s)).all()) and s[-1] == 0


def test_one_student_step_on_the_target_equals_two_guided_teacher_euler_steps(one_thread):
    teacher = random_teacher(resolution=8).double()
    prompts = ["a photo of a red circle", "a circle", "photo", "a red photo"]
    cond, null = teacher.encode_text(prompts), teacher.encode_text([""] * 4)
    x_t = torch.randn(4, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    n = torch.tensor([0, 1, 2, 3])
    t, mid, s = stage_times(n, 4, shift=2.0)
    with torch.no_grad():
        x_s = two_step_target(teacher, x_t, t, mid, s, cond, null, 2.0)
        v_star = distillation_target_velocity(x_t, x_s, t, s)
        for i in range(4):  # sample_euler, the teacher's own sampler, over [t, mid, s] for each sample alone
            one = slice(i, i + 1)
            ref = sample_euler(teacher, x_t[one], cond[one], null[one], torch.stack([t[i], mid[i], s[i]]), 2.0)
            torch.testing.assert_close(x_s[one], ref, rtol=0, atol=1e-12)
        one_step = x_t + (s - t).view(-1, 1, 1, 1) * v_star
        torch.testing.assert_close(one_step, x_s, rtol=0, atol=1e-12)
        # the target is neither one teacher step nor unguided: the test would catch either mistake
        single = x_t + (s - t).view(-1, 1, 1, 1) * teacher(x_t, t, cond)
        unguided = two_step_target(teacher, x_t, t, mid, s, cond, None, 1.0)
    assert (x_s - single).abs().amax() > 1e-4 and (x_s - unguided).abs().amax() > 1e-4


def perturbed_teacher(ctx: BuildContext) -> FlowMatchingTeacher:
    torch.manual_seed(0)
    model = FlowMatchingTeacher(teacher_backbone(ctx))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def test_stages_switch_teacher_and_guidance_at_the_budget_midpoint(tmp_path, one_thread):
    ctx = world_context(tmp_path)
    frozen = perturbed_teacher(ctx).requires_grad_(False)
    student = copy.deepcopy(frozen).train().requires_grad_(True)
    teacher = CountingTeacher(frozen)
    train = TrainConfig(steps=4, batch_size=4)
    make_loss = distillation_loss(ctx, "progressive", steps=4, start_steps=16, teacher_guidance=2.0)
    step_loss = make_loss(student, teacher, train, torch.Generator().manual_seed(0))
    spent, snapshot = [], None
    for step in range(4):
        with torch.no_grad():  # stands in for an optimizer step between losses
            for p in student.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        before = teacher.calls
        loss = step_loss(step)
        loss.backward()
        spent.append(teacher.calls - before)
        if step < 2:
            assert teacher.teacher is frozen
        if step == 2:  # stage 2's teacher: the student as it stood when the stage began, frozen
            assert teacher.teacher is not frozen and teacher.teacher is not student
            snapshot = [p.detach().clone() for p in student.parameters()]
        if step >= 2:
            stage_teacher = list(teacher.teacher.parameters())
            assert all(not p.requires_grad and p.grad is None for p in stage_teacher)
            assert all(torch.equal(a, b) for a, b in zip(stage_teacher, snapshot, strict=True))
    # stage 1: 2 Euler steps x CFG pair (2 passes) x 4 samples; stage 2: 2 unguided steps x 4 samples
    assert spent == [16, 16, 8, 8]
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), snapshot, strict=True))


class ConstantField(nn.Module):
    """v(x, t, c) = c0, a constant velocity: its ODE from eps ends at eps - c0 along a straight line."""

    def __init__(self, value: float, vocabulary_of: FlowMatchingTeacher) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))
        self.encoder = vocabulary_of

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        return self.value.expand_as(x)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.encoder.encode_text(prompts)


def test_reflow_regresses_the_straight_line_between_noise_and_teacher_output(tmp_path, one_thread):
    ctx = world_context(tmp_path)
    text = perturbed_teacher(ctx)
    train = TrainConfig(steps=1, batch_size=4)
    teacher = CountingTeacher(ConstantField(0.3, text))
    # the teacher's pair is (eps, eps - 0.3): the straight-line target eps - x0 is 0.3 everywhere
    exact = ReflowLoss(ctx, ConstantField(0.3, text), teacher, train, torch.Generator().manual_seed(0), 5, 2.0, 1.0)
    off = ReflowLoss(ctx, ConstantField(0.5, text), teacher, train, torch.Generator().manual_seed(0), 5, 2.0, 1.0)
    assert exact(0).item() < 1e-10
    assert off(0).item() == pytest.approx(0.04, rel=1e-4)
    assert teacher.calls == 2 * (4 * 5 * 2)  # two losses x (4 samples x 5 Euler steps x CFG pair)


@pytest.mark.parametrize("method, teacher_nfe", [("progressive", 48), ("reflow", 4 * 4 * 16 * 2)])
def test_trained_generator_samples_per_seed_in_four_unguided_steps(tmp_path, one_thread, method, teacher_nfe):
    train = {"flow_matching": {"steps": 2, "batch_size": 4}, "distilled": {"steps": 4, "batch_size": 4}}
    ctx = world_context(tmp_path, train)
    gen = DistilledGenerator.from_context(ctx, "distilled-4", method=method)
    prompts = ["a photo of a circle", "a photo of a red square", "a photo of two triangles", "a photo of a circle"]
    seeds = [3, 1, 4, 3]
    whole = gen.sample(prompts, seeds)
    parts = torch.cat([gen.sample(prompts[:1], seeds[:1]), gen.sample(prompts[1:], seeds[1:])])
    assert whole.dtype == torch.uint8 and whole.shape == (4, 3, 16, 16)
    torch.testing.assert_close(whole.int(), parts.int(), atol=1, rtol=0)  # float32 rounding at pixel edges only
    assert (whole != parts).float().mean() < 1e-3
    assert torch.equal(whole[0], whole[3])
    spec = gen.spec
    assert (spec.nfe, spec.steps, spec.family, spec.settings["sampler"], spec.settings["guidance"]) == (
        4, 4, "distilled", "euler", 1.0
    )
    assert spec.settings["method"] == method and spec.settings["start_steps"] == 16
    assert spec.training["teacher_nfe"] == teacher_nfe and spec.training["optimizer_steps"] == 4
    again = DistilledGenerator.from_context(ctx, "distilled-4", method=method)  # cached: same weights
    assert again.spec.weights_hash == spec.weights_hash
