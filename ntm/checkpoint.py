"""Weights on disk: `model.safetensors` + `config.json` in one folder, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


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
    with open(Path(directory) / WEIGHTS, "rb") as f:
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
