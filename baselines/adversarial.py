"""Adversarial diffusion distillation (ADD; Sauer et al., 2023, "Adversarial Diffusion Distillation").

The student (the teacher's network, initialised from its weights) maps real images noised to a
student time t in the grid time_grid(student_steps)[:-1] to x0_fake = x_t - t v(x_t, t, c) and is
trained on L = L_adv + lambda L_distill (ADD, Eq. 4):

- L_adv: a hinge GAN (ADD, Eq. 2-3). The discriminator reads FROZEN features (the teacher's DiT token
  states after a few blocks, at a fixed small time `feature_time`) through small trainable heads, one per
  layer, each conditioned on the pooled caption by a projection (Miyato & Koyama, 2018; ADD Sec. 3.2,
  after StyleGAN-T). L_D = mean relu(1 - D(real)) + mean relu(1 + D(sg(fake))), L_adv = -mean D(fake);
  the generator's gradient reaches the student through the frozen feature network. No R1 penalty is
  used (ADD regularises with R1; its double backward through attention is left out here).
- L_distill: score distillation (ADD, Eq. 5): x0_fake is re-noised to t' ~ U(0, 1) and the teacher's
  guided x0 prediction (CFG weight `teacher_guidance`) is a stop-gradient target for a weighted L2,
  c(t') ||x0_fake - x0_teacher||^2 with ADD's exponential weighting c(t') = alpha_t' = 1 - t' in
  rectified flow.

The discriminator has its own AdamW and takes one step inside each `step_loss` call, before the
generator loss is built. Every teacher pass (features, CFG pairs) is counted by the CountingTeacher;
the frozen text encoder that conditions the heads is not a DiT pass and is not counted.
The student is sampled with the multistep x0-prediction sampler (ADD's sampler), without guidance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import BuildContext
from baselines.flow_matching import teacher_backbone
from baselines.students import StudentGenerator, student_batch, train_student, x0_prediction
from baselines.training import CountingTeacher
from ntm import distributed
from ntm.flow_matching import guided_velocity, sample_training_times
from ntm.schedule import time_grid
from ntm.teacher import FlowMatchingTeacher
from ntm.train import TrainConfig

RECIPE = "adversarial"
FAMILY = "adversarial"


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss mean relu(1 - D(real)) + mean relu(1 + D(fake)) (ADD, Eq. 3)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """The generator's adversarial loss -mean D(fake) (ADD, Eq. 2)."""
    return -fake_logits.mean()


def default_feature_blocks(depth: int, count: int = 4) -> tuple[int, ...]:
    """`count` blocks evenly spaced over a depth-`depth` DiT, the last block included (ADD reads 4 layers)."""
    n = min(count, depth)
    return tuple(round((i + 1) * depth / n) - 1 for i in range(n))


class DiscriminatorHead(nn.Module):
    """Token-wise logits from one feature layer: an MLP score plus a projection on the caption embedding."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
        )
        self.score = nn.Linear(hidden, 1)
        self.project = nn.Linear(width, hidden)

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """features (B, N, width), text (B, width) -> logits (B, N)."""
        z = self.body(features)
        projection = (z * self.project(text)[:, None]).sum(-1) / math.sqrt(z.shape[-1])
        return self.score(z).squeeze(-1) + projection


class Discriminator(nn.Module):
    """ADD's discriminator heads over frozen features: one `DiscriminatorHead` per feature layer.

    Returns every head's token logits side by side, (B, layers * N); the losses average them all.
    """

    def __init__(self, width: int, layers: int, hidden: int | None = None) -> None:
        super().__init__()
        self.heads = nn.ModuleList(DiscriminatorHead(width, hidden or width) for _ in range(layers))

    def forward(self, features: Sequence[Tensor], text: Tensor) -> Tensor:
        if len(features) != len(self.heads):
            raise ValueError(f"{len(self.heads)} heads need {len(self.heads)} feature layers, got {len(features)}")
        return torch.cat([head(f, text) for head, f in zip(self.heads, features, strict=True)], dim=1)


def teacher_features(
    teacher: CountingTeacher, x: Tensor, tokens: Tensor, blocks: Sequence[int], time: float,
    generator: torch.Generator,
) -> list[Tensor]:
    """The frozen teacher's image-token states after `blocks` for images x seen at time `time`, counted.

    At time > 0 the images are first noised, (1 - time) x + time eps, with eps drawn from `generator`.
    Gradients flow to x (not to the teacher), so the generator can learn through these features.
    """
    if time > 0:
        x = (1 - time) * x + time * torch.randn(x.shape, generator=generator).to(x)
    teacher.count(x.shape[0])
    t = torch.full((x.shape[0],), time, dtype=x.dtype, device=x.device)
    return teacher.teacher.net.features(x, t, tokens, blocks)


@torch.no_grad()
def caption_embedding(teacher: CountingTeacher, tokens: Tensor) -> Tensor:
    """The frozen teacher's pooled caption (its text encoder's <bos> state): the heads' condition."""
    return teacher.teacher.net.text(tokens)[1]


def discriminator_step(
    discriminator: Discriminator, optimizer: torch.optim.Optimizer, real: Sequence[Tensor], fake: Sequence[Tensor],
    text: Tensor,
) -> Tensor:
    """One optimizer step of the heads on the hinge loss; features are detached, so nothing else learns.

    With several processes the heads' gradients are averaged over the ranks, as the student's are in
    `ntm.train.fit`, so every rank keeps the same discriminator.
    """
    loss = hinge_d_loss(
        discriminator([f.detach() for f in real], text), discriminator([f.detach() for f in fake], text)
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(discriminator.parameters())
    optimizer.step()
    return loss.detach()


def distillation_loss(
    teacher: CountingTeacher, x0_fake: Tensor, tokens: Tensor, null: Tensor, guidance: float, t: Tensor,
    noise: Tensor,
) -> Tensor:
    """Per-sample (1 - t) mean (x0_fake - sg(x0_teacher))^2 with x0_teacher the guided x0 prediction at
    x_t = (1 - t) sg(x0_fake) + t noise (ADD, Eq. 5, exponential weighting c(t) = alpha_t = 1 - t)."""
    t_x = t.to(x0_fake.dtype).view(-1, *[1] * (x0_fake.ndim - 1))
    with torch.no_grad():
        x_t = (1 - t_x) * x0_fake.detach() + t_x * noise
        target = x_t - t_x * guided_velocity(teacher, x_t, t.to(x0_fake.dtype), tokens, null, guidance)
    return (1 - t.to(x0_fake.dtype)) * (x0_fake - target).square().flatten(1).mean(1)


@dataclass(frozen=True)
class AdversarialOptions:
    """ADD's knobs: student time grid, teacher guidance, lambda, and the discriminator's feature reading."""

    feature_blocks: tuple[int, ...]
    student_steps: int = 4
    shift: float = 1.0
    teacher_guidance: float = 2.0
    distill_weight: float = 2.5
    feature_time: float = 0.0

    def __post_init__(self) -> None:
        if not self.feature_blocks:
            raise ValueError("the discriminator needs at least one feature block")
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")
        if not 0.0 <= self.feature_time < 1.0:
            raise ValueError(f"feature_time must lie in [0, 1), got {self.feature_time}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")

    def to_dict(self) -> dict:
        return asdict(self) | {"feature_blocks": list(self.feature_blocks)}


def add_loss(
    student: FlowMatchingTeacher, teacher: CountingTeacher, discriminator: Discriminator,
    d_optimizer: torch.optim.Optimizer, x0: Tensor, captions: list[str], options: AdversarialOptions,
    generator: torch.Generator,
) -> Tensor:
    """One ADD step on a batch of real images x0: steps the discriminator, returns the student's loss.

    Draws t from the student's grid, x_t = (1 - t) x0 + t eps and x0_fake = x0_prediction(student, x_t, t, c);
    then one hinge step of the heads on (x0, sg(x0_fake)), and L_adv + lambda L_distill for the student.
    Teacher passes per sample: 1 (real features) + 1 (fake features) + 2 (CFG target) when guidance != 0, 1.
    """
    b, device = x0.shape[0], x0.device
    grid = time_grid(options.student_steps, options.shift)[:-1]
    t = grid[torch.randint(len(grid), (b,), generator=generator)].to(device=device, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=generator).to(x0)
    t_x = t.view(-1, *[1] * (x0.ndim - 1))
    tokens = student.encode_text(captions)
    x0_fake = x0_prediction(student, (1 - t_x) * x0 + t_x * eps, t, tokens)

    text = caption_embedding(teacher, tokens)
    blocks, time = options.feature_blocks, options.feature_time
    with torch.no_grad():
        real = teacher_features(teacher, x0, tokens, blocks, time, generator)
    fake = teacher_features(teacher, x0_fake, tokens, blocks, time, generator)
    discriminator_step(discriminator, d_optimizer, real, fake, text)

    adversarial = generator_adversarial_loss(discriminator(fake, text))
    t_teacher = sample_training_times(b, generator, kind="uniform").to(device=device, dtype=x0.dtype)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    null = student.encode_text([""] * b)
    distill = distillation_loss(teacher, x0_fake, tokens, null, options.teacher_guidance, t_teacher, noise).mean()
    return adversarial + options.distill_weight * distill


def make_add_loss(
    ctx: BuildContext, options: AdversarialOptions, student: FlowMatchingTeacher, teacher: CountingTeacher,
    train: TrainConfig, generator: torch.Generator,
) -> Callable[[int], Tensor]:
    """`step_loss(step)` for `train_student`: a fresh discriminator with its own AdamW (the budget's lr)."""
    return AddObjective(ctx, options, student, teacher, train, generator)


class AddObjective:
    """ADD's per-step loss with its discriminator and the discriminator's optimiser (saved on resume)."""

    def __init__(
        self, ctx: BuildContext, options: AdversarialOptions, student: FlowMatchingTeacher, teacher: CountingTeacher,
        train: TrainConfig, generator: torch.Generator,
    ) -> None:
        self.ctx, self.options, self.student, self.teacher, self.train, self.generator = (
            ctx, options, student, teacher, train, generator
        )
        width = teacher.teacher.net.config.width
        self.discriminator = Discriminator(width, len(options.feature_blocks)).to(ctx.device)
        self.d_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=train.lr, weight_decay=train.weight_decay)

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.d_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["optimizer"])

    def __call__(self, step: int) -> Tensor:
        x0, captions = student_batch(self.ctx, self.train, step)
        return add_loss(
            self.student, self.teacher, self.discriminator, self.d_optimizer, x0, captions, self.options, self.generator
        )


class AdversarialGenerator(StudentGenerator):
    """An ADD student: multistep x0-prediction sampling at `steps` steps, no guidance, NFE = steps."""

    @classmethod
    def from_context(
        cls, ctx: BuildContext, name: str, steps: int = 4, teacher_guidance: float = 2.0, distill_weight: float = 2.5,
        student_steps: int = 4, shift: float = 1.0, feature_time: float = 0.0,
        feature_blocks: Sequence[int] | None = None,
    ) -> AdversarialGenerator:
        """Train (cached, budget `[train.adversarial]`) and load the student; `steps` only affects sampling.

        `shift` sets both the training grid and the sampling grid; `feature_blocks` defaults to 4 blocks
        evenly spaced over the teacher's depth, the last included.
        """
        blocks = tuple(feature_blocks) if feature_blocks else default_feature_blocks(teacher_backbone(ctx).depth)
        options = AdversarialOptions(blocks, student_steps, shift, teacher_guidance, distill_weight, feature_time)
        directory = train_student(
            ctx, RECIPE, options.to_dict(), partial(make_add_loss, ctx, options), f"train {RECIPE}"
        )
        return cls.from_checkpoint(directory, ctx.device, name, FAMILY, "multistep", steps, shift)
