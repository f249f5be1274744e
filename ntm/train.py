"""One training loop for every method: AdamW, linear warm-up, clipping, a warmed-up EMA, and resumable state.

A `fit` started inside `checkpointing(folder)` writes its whole state (model, optimiser, scheduler, EMA,
step, losses, the torch RNG states and the caller's extra state such as its noise generator) into that
folder every `checkpoint_every` steps, atomically; a later `fit` of the same recipe in the same folder
resumes from it. A run killed at any point and restarted therefore ends with the same weights, to the bit,
as an uninterrupted one.

Under torchrun (`ntm.distributed.init()` called, world size N > 1) every rank runs this same loop on
its own share of each batch (`distributed.shard`, used by `baselines.training.training_batch`) and the
gradients are averaged over the ranks before clipping. This is a manual all-reduce, not
`DistributedDataParallel`: the callers' `step_loss` closures call `model.loss(...)`, `model.encode_text(...)`
and helpers on the unwrapped module, which DDP's hooks would not see, and one flat all-reduce per step is
all DDP would add here. The initial weights are seeded alike on every rank and every rank applies the same
averaged gradient, so weights and EMA stay equal to the bit; rank 0 alone writes training checkpoints
(with every rank's noise generators). The noise generators in `state` get a stream per rank
(`_rank_streams`), so the shards do not share noise; a run on N processes is therefore a function of its
recipe and N, and its weights differ from a single process's by that noise, not by its batches.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from ntm import distributed
from ntm.checkpoint import atomic_write_bytes

RESUME_ONLY = ("checkpoint_every", "snapshot_every")
"""TrainConfig fields that change how a run is checkpointed, never its weights: left out of recipe hashes."""

SCHEDULES = ("constant", "cosine")
LATER_DEFAULTS = {"schedule": "constant", "final_lr_ratio": 0.1}
"""Fields added after recipes were first hashed: left out of a recipe while at these defaults, so
every cache key written before they existed still names the same weights."""

_BOUNDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "steps": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup": (lambda v: v >= 0, ">= 0"),
    "ema_decay": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "grad_clip": (lambda v: v > 0, "> 0"),
    "cfg_dropout": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0 (0 turns training checkpoints off)"),
    "snapshot_every": (lambda v: v >= 0, ">= 0 (0: no snapshots for learning curves)"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    "final_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


@dataclass(frozen=True)
class TrainConfig:
    """A training budget; every method trained in one preset gets the same one unless it says so.

    `checkpoint_every` is the training-checkpoint cadence in optimiser steps (0: none). It does not change
    the weights, so recipe hashes leave it out (`weights_recipe`) and cached models stay valid.
    `snapshot_every`: every that many steps (the last included) the EMA weights are kept for learning
    curves (`snapshot_path`; only inside `checkpointing`); like `checkpoint_every` it leaves the weights alone.
    `schedule`: the learning rate after the linear warm-up, "constant" or "cosine" (down to
    `final_lr_ratio` x lr at the last step).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 50
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 200
    snapshot_every: int = 0
    schedule: str = "constant"
    final_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "str":
                check, bound = _BOUNDS[f.name]
                if not check(value):
                    raise ValueError(f"training option {f.name} = {value!r} must be {bound}")
                continue
            integer = f.type == "int"
            wanted = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"training option {f.name} = {value!r} must be {kind}, e.g. {f.name} = {f.default}")
            check, bound = _BOUNDS[f.name]
            if not (math.isfinite(value) and check(value)):
                raise ValueError(f"training option {f.name} = {value!r} must be {bound}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)

    def weights_recipe(self) -> dict[str, Any]:
        """The fields that shape the weights: what a cache key and a training checkpoint are checked against."""
        return _shaping(self.__dict__)

    def lr_factor(self, step: int) -> float:
        """The learning rate at optimiser step `step` as a fraction of `lr`: linear warm-up, then the schedule."""
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        if self.schedule == "constant" or step < self.warmup:
            return warm
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.final_lr_ratio + (1 - self.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _shaping(train: Mapping[str, Any]) -> dict[str, Any]:
    """Training fields without the resume-only knobs and without later fields left at their defaults."""
    out = {k: v for k, v in train.items() if k not in RESUME_ONLY}
    if out.get("schedule", "constant") == "constant":
        out = {k: v for k, v in out.items() if k not in LATER_DEFAULTS}
    return out


def weights_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A model recipe (`{"train": train.__dict__, ...}`) without the resume-only training knobs.

    Hashing this keeps every cache key what it was before `checkpoint_every` (and the lr schedule) existed.
    """
    out = dict(recipe)
    if isinstance(out.get("train"), Mapping):
        out["train"] = _shaping(out["train"])
    return out


@dataclass(frozen=True)
class TrainStats:
    """A finished run: its last-10% mean loss, wall time, and the gradient norms (before clipping) after warm-up."""

    steps: int
    final_loss: float
    wall_s: float
    samples_per_s: float
    grad_norm_median: float = float("nan")
    grad_norm_max: float = float("nan")
    grad_norm_max_step: int = -1


def ema_decay(step: int, decay: float) -> float:
    """EMA decay warmed up as (1 + n) / (10 + n): early averages do not keep the initialisation."""
    return min(decay, (1 + step) / (10 + step))


@dataclass
class _Scope:
    directory: Path
    fits: int = 0


_SCOPE: ContextVar[_Scope | None] = ContextVar("ntm_training_checkpoints", default=None)


@contextmanager
def checkpointing(directory: str | Path) -> Iterator[Path]:
    """Inside this block, every `fit` keeps its training checkpoint in `directory` (the n-th fit in
    `fit-n.pt`) and resumes from it when it is there."""
    token = _SCOPE.set(_Scope(Path(directory)))
    try:
        yield Path(directory)
    finally:
        _SCOPE.reset(token)


def _claim_checkpoint_path() -> Path | None:
    scope = _SCOPE.get()
    if scope is None:
        return None
    path = scope.directory / f"fit-{scope.fits}.pt"
    scope.fits += 1
    return path


def snapshot_path(checkpoint: Path, step: int) -> Path:
    """Where the fit checkpointing into `checkpoint` (`<folder>/fit-n.pt`) keeps its EMA weights at `step`:
    `<folder>/snapshots/fit-n-step<step>.pt` (`BuildContext.checkpoint` moves the folder beside the model's)."""
    return checkpoint.parent / "snapshots" / f"{checkpoint.stem}-step{step:07d}.pt"


def _get_state(obj: Any) -> Any:
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


def _set_state(obj: Any, value: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(value)
    else:
        obj.load_state_dict(value)


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _save(path: Path, payload: dict[str, Any]) -> None:
    """torch.save into a temporary sibling, fsync, rename: the checkpoint is either the old one or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _restore(
    path: Path, config: TrainConfig, modules: Mapping[str, Any], state: Mapping[str, Any]
) -> tuple[int, list[float], list[float], list[dict[str, Any]] | None]:
    """Load a training checkpoint into `modules` and `state`; (next step, losses and gradient norms so far,
    every rank's noise generators when several processes wrote it, else None)."""
    fix = f"delete {path} to train this model from step 0"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises several kinds
        raise ValueError(f"training checkpoint {path} is unreadable ({type(err).__name__}: {err}); {fix}") from None
    if payload.get("config") != config.weights_recipe():
        raise ValueError(
            f"training checkpoint {path} was written for another training budget "
            f"({payload.get('config')}, not {config.weights_recipe()}); {fix}"
        )
    if set(payload["state"]) != set(state):
        held = sorted(payload["state"])
        raise ValueError(f"training checkpoint {path} holds state {held}, this run has {sorted(state)}; {fix}")
    try:
        for name, module in modules.items():
            module.load_state_dict(payload[name])
    except (RuntimeError, ValueError, KeyError) as err:
        problem = " ".join(str(err).split())[:300]
        raise ValueError(f"training checkpoint {path} does not fit this model ({problem}); {fix}") from None
    for name, obj in state.items():
        _set_state(obj, payload["state"][name])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    norms = list(payload.get("grad_norms", [float("nan")] * len(payload["losses"])))
    return int(payload["step"]), list(payload["losses"]), norms, payload.get("ranks")


def _generators(state: Mapping[str, Any]) -> dict[str, torch.Generator]:
    return {name: obj for name, obj in state.items() if isinstance(obj, torch.Generator)}


def _rank_streams(state: Mapping[str, Any], saved: list[dict[str, Any]] | None) -> None:
    """Give every rank its own noise: the generators in `state` were seeded alike on every rank (by the caller,
    or by a restored checkpoint) and would draw the same noise for different samples of each shard.

    Rank 0 keeps its stream; rank r > 0 reseeds each generator from a hash of (its state, r). A checkpoint
    written by as many processes as run now restores each rank's own streams instead (`saved`), so a resumed
    run continues to the bit; one written by another number of processes restarts the per-rank streams.
    """
    rank, world = distributed.rank(), distributed.world_size()
    generators = _generators(state)
    if saved is not None and len(saved) == world:
        for name, generator in generators.items():
            generator.set_state(saved[rank][name])
    elif rank > 0:
        for generator in generators.values():
            digest = hashlib.sha256(generator.get_state().numpy().tobytes() + rank.to_bytes(4, "little")).digest()
            generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _nonfinite(description: str, value: float, step: int, path: Path | None, saved: int) -> str:
    where = (
        f"the last good training checkpoint (step {saved}) is kept in {path}"
        if path is not None and saved > 0
        else "no training checkpoint was written before it"
    )
    return (
        f"{description}: the loss is {value} at step {step}; training stopped and {where}. "
        "Lower lr, raise warmup or lower grad_clip in the preset's [train.*] table and run again."
    )


def fit(
    model: nn.Module,
    step_loss: Callable[[int], Tensor],
    config: TrainConfig,
    description: str = "training",
    progress: bool = True,
    state: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, TrainStats]:
    """Minimise `step_loss(step)` (a scalar for batch number `step`); returns the EMA model and stats.

    The loop itself draws no random numbers: the caller seeds the model's initialisation and
    `step_loss` draws its batch from `step`, so a run is a function of its recipe. Anything else the
    loss advances as it runs belongs in `state` (name -> torch.Generator, or an object with
    state_dict/load_state_dict such as a discriminator's optimiser): it is saved with each training
    checkpoint and restored on resume (checkpoints are written only inside `checkpointing`). A
    non-finite loss stops training (FloatingPointError naming the step) before it reaches the
    weights; the last training checkpoint is kept.

    With several processes (module docstring) `config.batch_size` is the global batch and must be a
    multiple of the world size; losses and stats are the means over ranks, as for the full batch.
    """
    state = dict(state or {})
    world = distributed.world_size()
    if config.batch_size % world:
        raise ValueError(
            f"{description}: batch_size = {config.batch_size} does not split evenly over {world} processes; "
            f"make it a multiple of {world} in the preset's [train.*] table"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, config.lr_factor)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    modules = {"model": model, "ema": ema, "optimizer": opt, "scheduler": sched}
    path = _claim_checkpoint_path()
    start, losses, grad_norms, streams = (
        _restore(path, config, modules, state) if path is not None and path.is_file() else (0, [], [], None)
    )
    if world > 1:
        _rank_streams(state, streams)
        starts = distributed.gather_objects(start)
        if len(set(starts)) > 1:
            raise RuntimeError(f"{description}: the processes would resume from different steps {starts}; {path} changed")
    saved = start
    model.train()
    began = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=config.steps, completed=start, loss=float("nan"))
        for step in range(start, config.steps):
            loss = step_loss(step)
            mean = distributed.all_mean(loss)  # every rank stops alike on a non-finite loss anywhere
            if not torch.isfinite(mean):
                raise FloatingPointError(_nonfinite(description, mean.item(), step, path, saved))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(params)
            grad_norms.append(float(nn.utils.clip_grad_norm_(params, config.grad_clip)))
            opt.step()
            sched.step()
            with torch.no_grad():
                d = ema_decay(step, config.ema_decay)
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm.detach(), 1 - d)
            losses.append(mean.item())
            bar.update(task, advance=1, loss=sum(losses[-50:]) / len(losses[-50:]))
            done = step + 1
            if path is not None and config.snapshot_every and done % config.snapshot_every == 0 and distributed.is_main():
                _save(snapshot_path(path, done), {k: v.detach().to("cpu") for k, v in ema.state_dict().items()})
            every = config.checkpoint_every
            if path is not None and every and done % every == 0 and done < config.steps:
                streams = distributed.gather_objects({n: g.get_state() for n, g in _generators(state).items()})
                if distributed.is_main():  # the others hold the same weights; their noise streams come along
                    payload = {name: m.state_dict() for name, m in modules.items()}
                    payload |= {
                        "config": config.weights_recipe(), "step": done, "losses": losses, "grad_norms": grad_norms,
                        "rng": _rng_state(),
                        "state": {name: _get_state(obj) for name, obj in state.items()},
                    } | ({"ranks": streams} if world > 1 else {})
                    _save(path, payload)
                saved = done
    wall = max(time.perf_counter() - began, 1e-9)
    tail = losses[-max(1, len(losses) // 10) :]
    after = grad_norms[config.warmup :]
    settled = sorted(after) or [float("nan")]
    stats = TrainStats(
        config.steps, sum(tail) / len(tail), wall, (config.steps - start) * config.batch_size / wall,
        settled[len(settled) // 2], settled[-1], config.warmup + after.index(settled[-1]) if after else -1,
    )
    return ema, stats
