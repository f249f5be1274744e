"""Records: one JSONL row per item and one summary per (model spec, suite version, seed).

Every file is written atomically (temporary file + rename), and the summary is written last, so
its presence marks a finished piece: an interrupted run redoes only unfinished pieces and a
finished one is never recomputed. Tables and plots are built from these files alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from baselines.base import GeneratorSpec

PACKAGES = ("ntm-bench", "torch", "numpy", "diffusers", "transformers", "clean-fid", "torchmetrics", "open_clip_torch")


def atomic_write_bytes(path: Path, data: bytes) -> None:
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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def protocol(device: str) -> dict[str, Any]:
    """Commit, package versions and device: what a number needs beside it to be reproduced."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"commit": _git_commit(), "packages": versions, "python": platform.python_version(), "device": device}


@dataclass(frozen=True)
class RecordKey:
    model: str
    spec_hash: str
    suite: str
    suite_version: str
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.model}/{self.suite}.v{self.suite_version}.seed{self.seed}.{self.spec_hash[:12]}"


class RecordStore:
    """The records folder of a results directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(spec: GeneratorSpec, suite: str, suite_version: str, seed: int) -> RecordKey:
        return RecordKey(spec.name, spec.hash, suite, suite_version, seed)

    def _path(self, key: RecordKey, suffix: str) -> Path:
        return self.root / f"{key.stem}.{suffix}"

    def has(self, key: RecordKey) -> bool:
        return self._path(key, "summary.json").is_file()

    def write(self, key: RecordKey, rows: list[dict], summary: dict, artifacts: dict[str, np.ndarray]) -> None:
        atomic_write_text(self._path(key, "rows.jsonl"), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        if artifacts:
            with tempfile.TemporaryFile() as buf:
                np.savez_compressed(buf, **artifacts)
                buf.seek(0)
                atomic_write_bytes(self._path(key, "artifacts.npz"), buf.read())
        atomic_write_text(self._path(key, "summary.json"), json.dumps(summary, indent=2, sort_keys=True))

    def summaries(self) -> Iterator[dict]:
        for path in sorted(self.root.glob("*/*.summary.json")):
            yield json.loads(path.read_text())

    def rows(self, summary: dict) -> list[dict]:
        path = self.root / f"{summary['record']}.rows.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def artifacts(self, summary: dict) -> dict[str, np.ndarray]:
        path = self.root / f"{summary['record']}.artifacts.npz"
        if not path.is_file():
            return {}
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
