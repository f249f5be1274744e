"""Consistency distillation / training: boundary, targets, teacher steps, loss, objective, generator."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from baselines.base import BuildContext
from baselines.consistency import (
    ConsistencyGenerator, ConsistencyObjective, ConsistencyOptions, consistency_loss, consistency_target,
    huber_scale, pseudo_huber, teacher_step,
)
from baselines.students import x0_prediction
from baselines.training import CountingTeacher
from benchmarks.worlds import get_world
from ntm.flow_matching import sample_euler, sample_heun
from ntm.schedule import time_grid
from tests.conftest import random_teacher

PROMPTS = ["a photo of a red circle", "a circle", "", "a red circle"]


def inputs(batch: int = 4, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_boundary_condition_is_exact(one_thread):
    student = random_teacher(seed=3)
    x, tokens = inputs(), student.encode_text(PROMPTS)
    assert torch.equal(x0_prediction(student, x, torch.zeros(4), tokens), x)
    assert not torch.allclose(x0_prediction(student, x, torch.full((4,), 0.5), tokens), x)


def test_target_at_zero_is_the_guided_euler_step(one_thread):
    teacher, target_net = CountingTeacher(random_teacher(seed=0)), random_teacher(seed=1)
    x_t, tokens, null = inputs(), teacher.encode_text(PROMPTS), teacher.encode_text([""] * 4)
    t, s = torch.full((4,), 0.3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    target = consistency_target(target_net, teacher_step(teacher, x_t, t, s, tokens, null, 2.0), s, tokens)
    assert teacher.calls == 8  # one CFG pair per sample
    with torch.no_grad():  # the network's no-grad fast path, as in teacher_step
        euler = sample_euler(teacher.teacher, x_t, tokens, null, torch.tensor([0.3, 0.0], dtype=torch.float64), 2.0)
        v_c, v_u = teacher.teacher(x_t, t.float(), tokens), teacher.teacher(x_t, t.float(), null)
    assert torch.equal(target, euler)
    by_hand = x_t + (0 - 0.3) * (v_u + 2.0 * (v_c - v_u))
    torch.testing.assert_close(target, by_hand, rtol=0, atol=1e-5)


def test_target_for_positive_s_is_the_ema_network_at_the_teacher_step(one_thread):
    teacher, target_net = random_teacher(seed=0), random_teacher(seed=1)
    x_t, tokens, null = inputs(), teacher.encode_text(PROMPTS), teacher.encode_text([""] * 4)
    grid = time_grid(8, shift=3.0)
    n = torch.tensor([0, 2, 5, 6])
    t, s = grid[n], grid[n + 1]
    target = consistency_target(target_net, teacher_step(teacher, x_t, t, s, tokens, null, 3.0), s, tokens)
    with torch.no_grad():
        tf, sf = t.float().view(-1, 1, 1, 1), s.float().view(-1, 1, 1, 1)
        v_c, v_u = teacher(x_t, t.float(), tokens), teacher(x_t, t.float(), null)
        x_s = x_t + (sf - tf) * (v_u + 3.0 * (v_c - v_u))
        by_hand = x_s - sf * target_net(x_s, s.float(), tokens)
    torch.testing.assert_close(target, by_hand, rtol=0, atol=1e-5)
    assert (target - x_s).abs().amax() > 1e-3  # the EMA network's correction is really there


def test_heun_step_matches_the_sampler_and_skips_the_last_correction(one_thread):
    teacher = CountingTeacher(random_teacher(seed=0))
    x_t, tokens, null = inputs(), teacher.encode_text(PROMPTS), teacher.encode_text([""] * 4)
    t, s = torch.full((4,), 0.6, dtype=torch.float64), torch.full((4,), 0.2, dtype=torch.float64)
    heun = teacher_step(teacher, x_t, t, s, tokens, null, 2.0, "heun")
    assert teacher.calls == 16
    with torch.no_grad():
        sampled = sample_heun(teacher.teacher, x_t, tokens, null, torch.tensor([0.6, 0.2], dtype=torch.float64), 2.0)
    assert torch.equal(heun, sampled)
    assert not torch.allclose(heun, teacher_step(teacher, x_t, t, s, tokens, null, 2.0, "euler"))
    # a batch mixing last steps (s = 0) with inner ones: Euler on the former, Heun on the latter
    teacher.calls = 0
    s_mixed = torch.tensor([0.2, 0.0, 0.2, 0.0], dtype=torch.float64)
    mixed = teacher_step(teacher, x_t, t, s_mixed, tokens, null, 2.0, "heun")
    assert teacher.calls == 4 * 2 + 2 * 2
    euler_to_zero = teacher_step(teacher, x_t, t, torch.zeros(4, dtype=torch.float64), tokens, null, 2.0)
    torch.testing.assert_close(mixed[0::2], heun[0::2], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1::2], euler_to_zero[1::2], rtol=0, atol=1e-6)


def test_pseudo_huber_and_l2_closed_forms():
    d = torch.zeros(2, 3, 2, 2)
    d[0, 0, 0, 0], d[0, 2, 1, 1] = 3.0, -4.0  # ||d_0|| = 5, d_1 = 0
    c = 0.5
    torch.testing.assert_close(pseudo_huber(d, c), torch.tensor([math.sqrt(25.25) - 0.5, 0.0]))
    assert pseudo_huber(d, c)[1] == 0
    torch.testing.assert_close(consistency_loss(d, torch.zeros_like(d), "l2"), torch.tensor([25.0, 0.0]))
    small = torch.full((1, 4), 1e-4)  # ||d||^2 = 4e-8 << c^2: pseudo-Huber -> ||d||^2 / (2c)
    torch.testing.assert_close(pseudo_huber(small, 0.1), torch.tensor([4e-8 / 0.2]), rtol=1e-5, atol=0)
    assert huber_scale(3072) == pytest.approx(0.03) and huber_scale(768) == pytest.approx(0.015)
    with pytest.raises(ValueError, match="loss"):
        ConsistencyOptions(loss="l1")
    with pytest.raises(ValueError, match="method"):
        ConsistencyOptions(method="ict")
    assert "teacher_guidance" not in ConsistencyOptions(method="ct").to_dict()


class PointMassFlow(nn.Module):
    """The exact velocity (x - mu) / t of data concentrated at mu: straight paths, so f(x_t, t) = mu."""

    def __init__(self, mu: Tensor) -> None:
        super().__init__()
        self.mu = nn.Parameter(mu)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        return (x - self.mu) / t.clamp_min(1e-12).view(-1, 1, 1, 1)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return torch.zeros(len(prompts), 1)


@pytest.mark.parametrize("method", ["cd", "ct"])
def test_loss_vanishes_for_a_consistent_teacher_and_student(method):
    mu = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    teacher = PointMassFlow(mu.clone())
    options = ConsistencyOptions(method=method, intervals=4, loss="l2")

    def loss(student_mu: Tensor) -> float:
        objective = ConsistencyObjective(
            PointMassFlow(student_mu), teacher, options, lambda step: (mu.expand(8, -1, -1, -1), [""] * 8),
            torch.Generator().manual_seed(0),
        )
        return objective(0).item()

    assert loss(mu.clone()) < 1e-20
    assert loss(mu + 0.1) > 1e-3  # f(x_t, t) = mu' != the target wherever s = 0


def hand_cd_loss(
    student: nn.Module, target_net: nn.Module, frozen: nn.Module, x0: Tensor, captions: list[str],
    replay: torch.Generator, intervals: int, w: float,
) -> Tensor:
    """LCM's pseudo-Huber CD loss written out from the paper, replaying the objective's random draws."""
    n = torch.randint(0, intervals, (x0.shape[0],), generator=replay)
    eps = torch.randn(x0.shape, generator=replay)
    grid = time_grid(intervals)
    t, s = grid[n].float().view(-1, 1, 1, 1), grid[n + 1].float().view(-1, 1, 1, 1)
    x_t = (1 - t) * x0 + t * eps
    tokens, null = frozen.encode_text(captions), frozen.encode_text([""] * len(captions))
    with torch.no_grad():
        v_c, v_u = frozen(x_t, t.flatten(), tokens), frozen(x_t, t.flatten(), null)
        x_s = x_t + (s - t) * (v_u + w * (v_c - v_u))
        target = x_s - s * target_net(x_s, s.flatten(), tokens)
        pred = x_t - t * student(x_t, t.flatten(), tokens)
    c = 0.03 * math.sqrt(x0[0].numel() / 3072)
    return ((pred - target).square().flatten(1).sum(1) + c**2).sqrt().sub(c).mean()


def test_objective_equals_a_hand_computed_loss_and_moves_its_target(one_thread):
    student, frozen = random_teacher(seed=0), random_teacher(seed=1)
    teacher = CountingTeacher(frozen)
    x0, captions = inputs(3, seed=7).clamp(-1, 1), ["a photo of a circle", "", "a red circle"]
    options = ConsistencyOptions(intervals=4, teacher_guidance=2.5, target_ema=0.9)
    objective = ConsistencyObjective(
        student, teacher, options, lambda step: (x0, captions), torch.Generator().manual_seed(5)
    )
    replay = torch.Generator().manual_seed(5)
    loss = objective(0)
    assert teacher.calls == 3 * 2
    # the target network starts as a copy of the student
    by_hand = hand_cd_loss(student, student, frozen, x0, captions, replay, 4, 2.5)
    torch.testing.assert_close(loss, by_hand, rtol=1e-4, atol=1e-7)

    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in [*frozen.parameters(), *objective.target.parameters()])
    before = copy.deepcopy(objective.target)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loss = objective(1)
    for old, new, current in zip(before.parameters(), objective.target.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * current, rtol=0, atol=1e-6)
    # the target is now the moved EMA network, neither the student nor the old target
    by_hand = hand_cd_loss(student, objective.target, frozen, x0, captions, replay, 4, 2.5)
    torch.testing.assert_close(loss, by_hand, rtol=1e-4, atol=1e-7)


def test_trained_student_samples_at_any_step_count(one_thread, tmp_path):
    train = {"flow_matching": {"steps": 2, "batch_size": 4}, "consistency": {"steps": 2, "batch_size": 4}}
    world, backbone = get_world("shapes", 16), {"size": "tiny", "patch": 4}
    ctx = BuildContext(world, torch.device("cpu"), tmp_path, backbone, train, progress=False)
    four = ConsistencyGenerator.from_context(ctx, "consistency")
    one = ConsistencyGenerator.from_context(ctx, "consistency-1", steps=1)
    assert len(list(tmp_path.glob("consistency-*"))) == 1  # the step count is a sampling choice only
    assert four.spec.weights_hash == one.spec.weights_hash
    assert (four.spec.family, four.spec.nfe, one.spec.nfe) == ("consistency", 4, 1)
    assert four.spec.settings["sampler"] == "multistep" and four.spec.settings["teacher_guidance"] == 2.0
    assert four.spec.training["teacher_nfe"] == 2 * 4 * 2  # optimizer steps x batch x CFG pair, Euler

    prompts, seeds = ["a photo of a circle", "a photo of a red square", "a photo of a circle"], [3, 1, 3]
    whole = four.sample(prompts, seeds)
    parts = torch.cat([four.sample(prompts[:1], seeds[:1]), four.sample(prompts[1:], seeds[1:])])
    assert whole.dtype == torch.uint8 and whole.shape == (3, 3, 16, 16)
    torch.testing.assert_close(whole.int(), parts.int(), atol=1, rtol=0)  # float32 rounding at pixel edges only
    assert torch.equal(whole[0], whole[2])
    assert one.sample(prompts, seeds).shape == (3, 3, 16, 16)

    ct = ConsistencyGenerator.from_context(ctx, "consistency-ct", method="ct")
    assert ct.spec.training["teacher_nfe"] == 0 and ct.spec.weights_hash != four.spec.weights_hash
    assert len(list(tmp_path.glob("consistency-*"))) == 2


def test_ct_objective_renoises_the_same_sample_without_the_teacher(one_thread):
    student, teacher = random_teacher(seed=0), CountingTeacher(random_teacher(seed=1))
    x0, captions = inputs(3, seed=7).clamp(-1, 1), ["a photo of a circle", "", "a red circle"]
    options = ConsistencyOptions(method="ct", intervals=4, loss="l2", shift=2.0)
    objective = ConsistencyObjective(
        student, teacher, options, lambda step: (x0, captions), torch.Generator().manual_seed(2)
    )
    loss = objective(0)
    assert teacher.calls == 0

    replay = torch.Generator().manual_seed(2)
    n = torch.randint(0, 4, (3,), generator=replay)
    eps = torch.randn(x0.shape, generator=replay)
    grid = time_grid(4, shift=2.0)
    t, s = grid[n].float().view(-1, 1, 1, 1), grid[n + 1].float().view(-1, 1, 1, 1)
    x_t, x_s, tokens = (1 - t) * x0 + t * eps, (1 - s) * x0 + s * eps, student.encode_text(captions)
    with torch.no_grad():
        target = x_s - s * student(x_s, s.flatten(), tokens)
        pred = x_t - t * student(x_t, t.flatten(), tokens)
    torch.testing.assert_close(loss, (pred - target).square().flatten(1).sum(1).mean(), rtol=1e-4, atol=1e-7)
