"""Weights on disk: `model.safetensors` + `config.json` in one folder, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"

_SNAPSHOT: ContextVar[tuple[str, int] | None] = ContextVar("ntm_snapshot", default=None)


def snapshots_of(directory: str | Path) -> Path:
    """The folder of a cached model's training snapshots (`ntm.train.snapshot_path`): `<folder>.snapshots`."""
    directory = Path(directory)
    return directory.with_name(f"{directory.name}.snapshots")


@contextmanager
def using_snapshot(recipe: str, step: int) -> Iterator[None]:
    """Inside this block, a cached model folder of `recipe` (`<recipe>-<hash>`) loads, and hashes as, its EMA
    weights at training step `step` instead of its final ones; every other folder loads as it is. A learning
    curve builds each model this way at each of its snapshots."""
    token = _SNAPSHOT.set((recipe, int(step)))
    try:
        yield
    finally:
        _SNAPSHOT.reset(token)


def _snapshot_file(directory: Path) -> Path | None:
    """The snapshot file standing in for `directory`'s weights under `using_snapshot`, else None."""
    active = _SNAPSHOT.get()
    if active is None or not directory.name.startswith(f"{active[0]}-") or "-" in directory.name[len(active[0]) + 1 :]:
        return None
    recipe, step = active
    found = sorted(snapshots_of(directory).glob(f"fit-*-step{step:07d}.pt"))
    if len(found) != 1:
        have = sorted({p.name.rsplit("step", 1)[-1][:-3].lstrip("0") for p in snapshots_of(directory).glob("fit-*-step*.pt")})
        raise FileNotFoundError(
            f"{directory.name} has no training snapshot at step {step} (snapshots at steps: {', '.join(have) or 'none'}); "
            f"set snapshot_every in the preset's [train.{recipe}] table and delete {directory} to retrain it with snapshots"
        )
    return found[0]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a fsynced temporary sibling and a rename: old file or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained(directory: str | Path, state_dict: dict[str, torch.Tensor], config: dict) -> Path:
    """Write weights and config into `directory`; a reader never sees a half-written folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu", kind: str | None = None) -> tuple[dict, dict]:
    """(state_dict, config) from a folder written by `save_pretrained`; clear errors when absent or of another `kind`."""
    directory = Path(directory)
    missing = [name for name in (WEIGHTS, CONFIG) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not a saved model: missing {', '.join(missing)}. "
            "Pass a folder written by save_pretrained (or train one with `ntm-bench reproduce`)."
        )
    fix = "delete the folder to retrain it (a cached checkpoint) or copy it again (a given path)"
    try:
        config = json.loads((directory / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / CONFIG} is not valid JSON ({err}): the folder is damaged; {fix}") from None
    if kind is not None and config.get("kind") != kind:
        raise ValueError(f"{directory} holds a {config.get('kind')!r} model, not a {kind!r}; pass a {kind!r} folder")
    snapshot = _snapshot_file(directory)
    if snapshot is not None:
        return torch.load(snapshot, map_location=device, weights_only=True), config
    try:
        return load_file(directory / WEIGHTS, device=str(device)), config
    except SafetensorError as err:
        raise ValueError(f"{directory / WEIGHTS} is truncated or not a safetensors file ({err}); {fix}") from None


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The keyword metadata a model was saved with (`save_pretrained(directory, **metadata)`)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved model: missing {CONFIG}")
    return dict(json.loads(path.read_text()).get("metadata", {}))


def is_saved(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / WEIGHTS).is_file() and (directory / CONFIG).is_file()


def weights_hash(directory: str | Path) -> str:
    """SHA-256 of the weights file: identifies the exact parameters a record was produced with."""
    digest = hashlib.sha256()
    with open(_snapshot_file(Path(directory)) or Path(directory) / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PretrainedMixin:
    """`save_pretrained` / `from_pretrained` for a module rebuilt from a JSON config, tagged with its `KIND`."""

    KIND: ClassVar[str]

    def to_config(self) -> dict[str, Any]:
        """Everything the constructor needs, as JSON (the "kind" and "metadata" keys are added on save)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path, **metadata: Any) -> Path:
        config = {"kind": self.KIND, **self.to_config(), "metadata": metadata}
        return save_pretrained(directory, self.state_dict(), config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Self:
        state, config = load_pretrained(directory, kind=cls.KIND)
        model = cls.from_config(config)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            problem = " ".join(str(err).split())[:300]
            raise ValueError(
                f"the weights in {directory} do not fit the {cls.KIND!r} model its {CONFIG} describes ({problem}); "
                "the folder mixes files of different models: delete it to retrain it, or pass a matching folder"
            ) from None
        return model.to(device).eval()
