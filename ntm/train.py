"""One training loop for every method: AdamW, linear warm-up, clipping, and a warmed-up EMA."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn


@dataclass(frozen=True)
class TrainConfig:
    """A training budget; every method trained in one preset gets the same one unless it says so."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 50
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class TrainStats:
    steps: int
    final_loss: float
    wall_s: float
    samples_per_s: float


def ema_decay(step: int, decay: float) -> float:
    """EMA decay warmed up as (1 + n) / (10 + n): early averages do not keep the initialisation."""
    return min(decay, (1 + step) / (10 + step))


def fit(
    model: nn.Module,
    step_loss: Callable[[int], Tensor],
    config: TrainConfig,
    description: str = "training",
    progress: bool = True,
) -> tuple[nn.Module, TrainStats]:
    """Minimise `step_loss(step)` (a scalar for batch number `step`); returns the EMA model and stats.

    The loop itself draws no random numbers: the caller seeds the model's initialisation and
    `step_loss` draws its batch from `step`, so a run is a function of its recipe.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup)))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=config.steps, loss=float("nan"))
        for step in range(config.steps):
            loss = step_loss(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{description}: loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                d = ema_decay(step, config.ema_decay)
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm.detach(), 1 - d)
            losses.append(loss.item())
            bar.update(task, advance=1, loss=sum(losses[-50:]) / len(losses[-50:]))
    wall = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10) :]
    stats = TrainStats(config.steps, sum(tail) / len(tail), wall, config.steps * config.batch_size / wall)
    return ema, stats
