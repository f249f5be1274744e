"""ADD: hinge losses, the generator/discriminator game, the score-distillation target, the trained student."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from baselines.adversarial import (
    AdversarialGenerator, AdversarialOptions, Discriminator, add_loss, caption_embedding, default_feature_blocks,
    discriminator_step, distillation_loss, generator_adversarial_loss, hinge_d_loss, teacher_features,
)
from baselines.base import BuildContext
from baselines.students import x0_prediction
from baselines.training import CountingTeacher
from benchmarks.presets import load_preset
from benchmarks.worlds import get_world
from tests.conftest import random_teacher

PROMPTS = ["a red circle", "a photo of a circle", "", "a circle"]


def frozen_and_student() -> tuple[CountingTeacher, nn.Module]:
    teacher = random_teacher(resolution=8).requires_grad_(False)
    return CountingTeacher(teacher), copy.deepcopy(teacher).requires_grad_(True)


def test_hinge_losses_match_hand_computation():
    real = torch.tensor([2.0, 0.5, -1.0], requires_grad=True)
    fake = torch.tensor([-2.0, 0.0, 0.5, 1.0])
    # relu(1 - real) = (0, 0.5, 2) -> 2.5 / 3; relu(1 + fake) = (0, 1, 1.5, 2) -> 4.5 / 4
    loss = hinge_d_loss(real, fake)
    torch.testing.assert_close(loss, torch.tensor(2.5 / 3 + 1.125))
    loss.backward()
    torch.testing.assert_close(real.grad, torch.tensor([0.0, -1 / 3, -1 / 3]))  # no gradient past the margin
    torch.testing.assert_close(generator_adversarial_loss(fake), torch.tensor(0.125))  # -mean(fake)
    assert default_feature_blocks(4) == (0, 1, 2, 3) and default_feature_blocks(12) == (2, 5, 8, 11)
    assert default_feature_blocks(2) == (0, 1)


def test_features_are_the_states_forward_reads(one_thread):
    net = random_teacher(resolution=8).net
    x, t, tokens = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.9]), net.encode_text(PROMPTS[:2])
    first, last = net.features(x, t, tokens, [0, 1])
    assert first.shape == last.shape == (2, 4, 32) and not torch.allclose(first, last)
    _, c, _ = net._embed(x, t, tokens)
    shift, scale = net.final_ada(c)[:, None].chunk(2, dim=-1)
    by_hand = net.unpatchify(net.out(net.final_norm(last) * (1 + scale) + shift))
    torch.testing.assert_close(by_hand, net(x, t, tokens), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="blocks must be"):
        net.features(x, t, tokens, [2])


def test_generator_step_raises_the_discriminator_score_on_fakes(one_thread):
    teacher, student = frozen_and_student()
    torch.manual_seed(1)
    disc = Discriminator(32, 2).requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(4, 3, 8, 8, generator=gen), torch.full((4,), 0.75)
    tokens = student.encode_text(PROMPTS)
    text = caption_embedding(teacher, tokens)

    def scores() -> Tensor:
        fake = x0_prediction(student, x_t, t, tokens)
        return disc(teacher_features(teacher, fake, tokens, (0, 1), 0.0, gen), text)

    before = scores().mean().detach()
    generator_adversarial_loss(scores()).backward()
    params = [p for p in student.parameters() if p.grad is not None]
    grad_sq = sum(p.grad.square().sum() for p in params)
    lr = 1e-3
    with torch.no_grad():
        for p in params:
            p.sub_(lr * p.grad)  # one SGD step on L_adv = -mean D(fake)
        after = scores().mean()
    # first order: the mean score rises by lr * |grad|^2 (a sign error in L_adv would lower it)
    assert after > before
    torch.testing.assert_close(after - before, lr * grad_sq, rtol=0.1, atol=0)
    assert all(p.grad is None for p in teacher.parameters())


def test_discriminator_step_lowers_its_loss_and_leaves_the_features_frozen(one_thread):
    teacher, student = frozen_and_student()
    torch.manual_seed(2)
    disc = Discriminator(32, 2)
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    tokens = student.encode_text(PROMPTS)
    text = caption_embedding(teacher, tokens)
    real_x = torch.randn(4, 3, 8, 8, generator=gen).clamp(-1, 1)
    fake_x = x0_prediction(student, torch.randn(4, 3, 8, 8, generator=gen), torch.ones(4), tokens)
    real = teacher_features(teacher, real_x, tokens, (0, 1), 0.0, gen)
    fake = teacher_features(teacher, fake_x, tokens, (0, 1), 0.0, gen)  # still attached to the student
    frozen = copy.deepcopy(teacher.teacher.state_dict())

    def d_loss() -> Tensor:
        with torch.no_grad():
            return hinge_d_loss(disc(real, text), disc(fake, text))

    before = d_loss()
    torch.testing.assert_close(discriminator_step(disc, opt, real, fake, text), before)
    assert d_loss() < before
    for key, value in teacher.teacher.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.parameters())  # the fakes reach the heads detached
    assert teacher.calls == 8


class LinearVelocity(nn.Module):
    """v(x, t, c) = k(c) x with k = (number of non-pad tokens) / 10: a teacher with a closed-form x0."""

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        return ((tokens != 0).sum(1).to(x) / 10).view(-1, 1, 1, 1) * x


def test_distillation_target_is_the_guided_teacher_x0_with_alpha_weighting():
    teacher = CountingTeacher(LinearVelocity())
    cond = torch.tensor([[1, 5, 6, 7, 0]] * 2)  # k_c = 0.4
    null = torch.tensor([[1, 0, 0, 0, 0]] * 2)  # k_u = 0.1; guided k = 0.1 + 2 (0.4 - 0.1) = 0.7
    fake = torch.full((2, 3, 2, 2), 0.5, requires_grad=True)
    noise = torch.full((2, 3, 2, 2), -1.0)
    t = torch.tensor([0.2, 0.5])
    loss = distillation_loss(teacher, fake, cond, null, 2.0, t, noise)
    # x_t = (1 - t) 0.5 - t = (0.2, -0.25); target = (1 - 0.7 t) x_t = (0.172, -0.1625)
    # loss = (1 - t) (0.5 - target)^2 = (0.8 * 0.328^2, 0.5 * 0.6625^2)
    torch.testing.assert_close(loss, torch.tensor([0.8 * 0.328**2, 0.5 * 0.6625**2]))
    assert teacher.calls == 4  # one CFG pair per sample
    loss.sum().backward()
    # the target is a stop-gradient: d/df = 2 (1 - t) (f - target) / 12 elementwise
    expected = torch.tensor([2 * 0.8 * 0.328 / 12, 2 * 0.5 * 0.6625 / 12]).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    torch.testing.assert_close(fake.grad, expected)


def test_one_add_step_counts_every_teacher_pass(one_thread):
    teacher, student = frozen_and_student()
    torch.manual_seed(3)
    disc = Discriminator(32, 1)
    heads = copy.deepcopy(disc.state_dict())
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    options = AdversarialOptions((1,), teacher_guidance=2.0, feature_time=0.1)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    loss = add_loss(student, teacher, disc, opt, x0, PROMPTS, options, torch.Generator().manual_seed(0))
    assert teacher.calls == 4 * 4  # real features + fake features + a CFG pair, per sample
    assert any(not torch.equal(v, disc.state_dict()[k]) for k, v in heads.items())  # the heads took their step
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    with pytest.raises(ValueError, match="feature_time"):
        AdversarialOptions((0,), feature_time=1.0)


def test_trained_student_samples_per_seed_with_counted_teacher_passes(one_thread, tmp_path):
    train = {"flow_matching": {"steps": 2, "batch_size": 4}, "adversarial": {"steps": 2, "batch_size": 4}}
    backbone = {"size": "tiny", "patch": 4}
    ctx = BuildContext(get_world("shapes", 16), torch.device("cpu"), tmp_path, backbone, train, progress=False)
    gen = AdversarialGenerator.from_context(ctx, "add-4")
    prompts = ["a photo of a circle", "a photo of a red square", "a photo of two triangles", "a photo of a circle"]
    seeds = [3, 1, 4, 3]
    whole = gen.sample(prompts, seeds)
    parts = torch.cat([gen.sample(prompts[:1], seeds[:1]), gen.sample(prompts[1:], seeds[1:])])
    assert whole.dtype == torch.uint8 and whole.shape == (4, 3, 16, 16)
    torch.testing.assert_close(whole.int(), parts.int(), atol=1, rtol=0)  # float32 rounding at pixel edges only
    assert (whole != parts).float().mean() < 1e-3
    assert torch.equal(whole[0], whole[3])
    spec = gen.spec
    assert (spec.family, spec.steps, spec.nfe, spec.settings["sampler"]) == ("adversarial", 4, 4, "multistep")
    assert spec.settings["feature_blocks"] == [0, 1, 2, 3] and spec.settings["distill_weight"] == 2.5
    assert spec.training["teacher_nfe"] == 2 * 4 * 4  # steps x batch x (2 feature passes + a CFG pair)
    one = AdversarialGenerator.from_context(ctx, "add-1", steps=1)  # sampling steps do not retrain
    assert one.spec.nfe == 1 and one.spec.weights_hash == spec.weights_hash
    assert one.sample(prompts[:2], seeds[:2]).shape == (2, 3, 16, 16)
    assert len(list(tmp_path.glob("adversarial-*"))) == 1


def load_add_diagnosis():
    """scripts/add_diagnosis.py as a module (scripts/ is no package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "add_diagnosis.py"
    spec = importlib.util.spec_from_file_location("add_diagnosis", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_add_diagnosis_tables_on_random_models_and_no_training(one_thread, tmp_path):
    diagnosis = load_add_diagnosis()
    teacher = random_teacher(resolution=8)
    student = random_teacher(seed=1, resolution=8)
    gen = torch.Generator().manual_seed(0)
    images = torch.where(torch.rand(4, 1, 8, 8, generator=gen) < 0.75, 255, 0).expand(4, 3, 8, 8).to(torch.uint8)
    images[0, 1, :2] = 7  # a few pixels of another colour, not the background
    background = diagnosis.background_colour(images)
    assert background.tolist() == [255, 255, 255]
    options = AdversarialOptions((0, 1), student_steps=2)
    distill = diagnosis.distillation_rows(teacher, options, images, PROMPTS, background, times=(0.1, 0.9))
    assert [r["input"] for r in distill] == ["real images", "blank background", "teacher x0 at t = 1"]
    assert all(list(r)[1:] == ["t' = 0.1", "t' = 0.9", "t' ~ U(0, 1)"] for r in distill)
    assert all(v >= 0 and v == v for r in distill for v in list(r.values())[1:])
    assert distill == diagnosis.distillation_rows(teacher, options, images, PROMPTS, background, times=(0.1, 0.9))
    rows = diagnosis.prediction_rows({"add": student, "fm-teacher": teacher}, options, images, PROMPTS, background)
    assert [(r["model"], r["t"]) for r in rows] == [("real images", "-"), ("add", "1"), ("add", "0.5"),
                                                    ("fm-teacher", "1"), ("fm-teacher", "0.5")]
    real = (images == 255).all(1).float().mean().item()
    assert rows[0]["= background"] == pytest.approx(real) and rows[0]["within 16 of background"] == pytest.approx(real)
    assert "| input | t' = 0.1 |" in diagnosis.markdown(distill)
    # no cached weights: a clear exit naming the training command, and nothing trained
    with pytest.raises(SystemExit, match="ntm-bench train add --preset tiny"):
        diagnosis.load_model(load_preset("tiny"), tmp_path, "add", "cpu")
    assert not any(tmp_path.glob("checkpoints/*-*"))
