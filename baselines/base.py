"""The Generator interface every model is reached through, and the context models are built in.

A suite only ever sees a `Generator`: `sample(prompts, seeds)` and, optionally,
`log_likelihood(x, prompts, seeds)`. It never imports a concrete model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor

from ntm import distributed
from ntm.checkpoint import is_saved, snapshots_of, weights_hash
from ntm.locking import exclusive
from ntm.train import checkpointing, weights_recipe

ESTIMATORS = ("exact", "elbo", "iwae", "ode")
TARGETS = ("trajectory", "data")


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of `obj` (sorted keys): a content key for configs and specs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class GeneratorSpec:
    """What a record says about the model that produced it."""

    name: str
    family: str
    steps: int
    nfe: int
    parameters: int
    weights_hash: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    """The training budget behind the weights (`baselines.training.budget`): backbone, optimizer
    steps, batch size and teacher forward passes; empty for models not trained here."""

    def to_dict(self) -> dict:
        return asdict(self) | {"settings": dict(self.settings), "training": dict(self.training)}

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict())


@dataclass(frozen=True)
class Capabilities:
    likelihood: bool = False
    guidance: bool = False
    trajectory: bool = False


@dataclass(frozen=True)
class LikelihoodResult:
    """Negative log-likelihood per sample, in nats, of continuous inputs in [-1, 1]^D.

    `estimator` says how it was obtained (exact | elbo | iwae | ode), `target` what it is a
    likelihood of (the data point, or the whole generative trajectory), `settings` the
    estimator's knobs; `stderr` the per-sample Monte-Carlo standard error where one exists.
    """

    nll_nats: Tensor
    estimator: str
    target: str
    settings: Mapping[str, Any]
    stderr: Tensor | None = None

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r} is not one of {ESTIMATORS}")
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r} is not one of {TARGETS}")


class Generator(ABC):
    """A text-to-image model as the suites see it."""

    spec: GeneratorSpec
    capabilities: ClassVar[Capabilities] = Capabilities()

    @abstractmethod
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        """uint8 images (N, C, H, W), one per prompt; image i depends only on (prompts[i], seeds[i])."""

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        """-log p(x | prompt) for x in [-1, 1]^D; `seeds` drive any Monte-Carlo estimator per sample."""
        raise NotImplementedError(f"{self.spec.name} reports no likelihood")

    def trajectory_log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> LikelihoodResult:
        """-log p of a generative trajectory ending at x (models with `capabilities.trajectory`)."""
        raise NotImplementedError(f"{self.spec.name} has no trajectory likelihood")


class DataSource(Protocol):
    """The part of a world a model needs to train: shapes, vocabulary and seeded batches."""

    resolution: int
    channels: int

    def vocabulary(self) -> list[str]: ...

    def batch(self, indices: Sequence[int], split: str = "train") -> Any: ...


def to_model_space(images: np.ndarray | Tensor, noise: Tensor | None = None) -> Tensor:
    """uint8 pixels -> [-1, 1]; with `noise` ~ U[0,1) added first (uniform dequantisation)."""
    x = torch.as_tensor(images).double()
    if noise is not None:
        x = x + noise
    else:
        x = x + 0.5
    return (x / 128.0 - 1.0).float()


def to_pixels(x: Tensor) -> Tensor:
    """[-1, 1] -> uint8 pixels, the inverse of `to_model_space` up to quantisation."""
    return ((x.float().clamp(-1, 1) + 1) * 128.0 - 0.5).round().clamp(0, 255).to(torch.uint8)


@dataclass
class BuildContext:
    """What a model may use to build itself: the world, the device, training budgets, a cache.

    `train` maps a training recipe name (e.g. "flow_matching") to its budget from the preset;
    `backbone` holds the shared backbone's size and patch, so every method gets the same network.
    """

    world: DataSource
    device: torch.device
    checkpoint_root: Path
    backbone: Mapping[str, Any]
    train: Mapping[str, Mapping[str, Any]]
    progress: bool = True

    def train_config(self, recipe: str) -> dict:
        if recipe not in self.train:
            raise KeyError(
                f"the preset has no training budget for {recipe!r}; add a [train.{recipe}] table "
                f"(present: {', '.join(sorted(self.train)) or 'none'})"
            )
        return dict(self.train[recipe])

    def checkpoint(self, recipe: str, config: Mapping[str, Any], train_fn: Callable[[Path], None]) -> Path:
        """The folder of the model `recipe` trained with `config`, training it first if not cached.

        The folder is named by the hash of `config` without resume-only knobs (`ntm.train.weights_recipe`).
        Training holds an exclusive lock on that name, so a second run asking for the same model waits and
        then finds it cached. Every `fit` inside `train_fn` checkpoints into the `<folder>.partial` sibling
        and resumes from it, so a killed run loses at most `checkpoint_every` steps; the sibling is removed
        once the final folder is saved (and kept when training fails, e.g. on a non-finite loss).

        With several processes (`ntm.distributed`) all ranks train together, so only rank 0 takes the
        lock (a rank waiting on it would leave rank 0 alone in the gradient all-reduce: a deadlock) and every
        decision (cached? still missing under the lock?) is rank 0's, broadcast. Rank 0 alone writes the
        training checkpoints and the folder; another rank's `train_fn` saves into a hidden scratch folder that
        is compared with rank 0's (RuntimeError if the weights differ) and deleted, and then every rank loads
        rank 0's folder. The checkpoint root must be on a file system all ranks share (one machine, or NFS).
        """
        directory = self.checkpoint_root / f"{recipe}-{stable_hash(weights_recipe(config))[:12]}"
        partial = directory.with_name(f"{directory.name}.partial")

        def waiting() -> None:
            print(f"another run is training {directory.name}; waiting for it", file=sys.stderr)

        main = distributed.is_main()
        if not distributed.broadcast(is_saved(directory)):
            lock = exclusive(self.checkpoint_root / f"{directory.name}.lock", waiting) if main else nullcontext()
            with lock:
                if not distributed.broadcast(is_saved(directory)):
                    if main:
                        _remove_temporaries(directory, partial)
                    distributed.barrier()
                    with checkpointing(partial):
                        _train_on_every_rank(directory, train_fn)
                    if not is_saved(directory):
                        raise RuntimeError(f"training {recipe!r} returned without saving {directory}")
                    if main and (partial / "snapshots").is_dir():  # the EMA snapshots of learning curves
                        shutil.rmtree(snapshots_of(directory), ignore_errors=True)
                        os.replace(partial / "snapshots", snapshots_of(directory))
        if main:
            shutil.rmtree(partial, ignore_errors=True)  # also what a run killed between saving and this line left
        return directory


def _train_on_every_rank(directory: Path, train_fn: Callable[[Path], None]) -> None:
    """`train_fn(directory)` on rank 0; on any other rank `train_fn` into a hidden scratch sibling (what
    `_remove_temporaries` clears if a run is killed), checked against rank 0's weights, then deleted."""
    if distributed.world_size() == 1:
        train_fn(directory)
        return
    scratch = None if distributed.is_main() else Path(tempfile.mkdtemp(prefix=f".{directory.name}.rank", dir=directory.parent))
    try:
        train_fn(scratch / directory.name if scratch else directory)
        mine = weights_hash(scratch / directory.name if scratch else directory)
        hashes = distributed.gather_objects(mine)  # also waits until rank 0 has saved the folder
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if len(set(hashes)) > 1:
        if distributed.is_main():
            shutil.rmtree(directory, ignore_errors=True)  # not a model to cache
        raise RuntimeError(
            f"the processes ended training {directory.name} with different weights (hashes by rank: "
            f"{[h[:12] for h in hashes]}), so it was not kept; train it in one process"
        )


def _remove_temporaries(directory: Path, partial: Path) -> None:
    """Delete what a run killed while writing `directory` or a training checkpoint left: hidden temporaries
    (`.<name>.*`, see `ntm.checkpoint.save_pretrained` and `ntm.train`). Called under the folder's lock."""
    stale = list(directory.parent.glob(f".{directory.name}.*")) + (list(partial.glob(".*")) if partial.is_dir() else [])
    stale += list((partial / "snapshots").glob(".*")) if (partial / "snapshots").is_dir() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def weights_folders(checkpoint_root: Path, spec_weights: str) -> list[Path]:
    """The folders under `checkpoint_root` (a `BuildContext`'s cache) that hold the weights a spec names.

    `spec_weights` is a `GeneratorSpec.weights_hash`: the SHA-256 of one folder's weights, or several joined
    by "+" (e.g. NTM and its denoiser); one folder per part, in that order. A part found in no folder (a
    reference renderer, a pretrained model loaded from elsewhere) is left out."""
    wanted = spec_weights.split("+")
    found: dict[str, Path] = {}
    root = Path(checkpoint_root)
    candidates = sorted(root.iterdir()) if root.is_dir() else []
    for folder in candidates:
        if len(found) == len(set(wanted)):
            break
        if folder.name.startswith(".") or folder.name.endswith(".partial") or not is_saved(folder):
            continue
        digest = weights_hash(folder)
        if digest in wanted and digest not in found:
            found[digest] = folder
    return list(dict.fromkeys(found[part] for part in wanted if part in found))
