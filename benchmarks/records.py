"""Records: one JSONL row per item and one summary per (model spec, suite version, seed).

Every file is written atomically (temporary file + rename), and the summary is written last, so
its presence marks a finished piece: an interrupted run redoes only unfinished pieces and a
finished one is never recomputed. Writes hold the store's lock (`ntm.locking`), so two runs
sharing a folder write each piece once. Files are byte-identical across runs of the same command
(the artifact archive carries no timestamps); only the summary's `wall_s` (how long the run took) and `written_at` (when) differ.
Tables and plots are built from these files alone.
"""

from __future__ import annotations

import io
import json
import platform
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from baselines.base import GeneratorSpec
from ntm.checkpoint import atomic_write_bytes
from ntm.locking import exclusive

PACKAGES = ("ntm-bench", "torch", "numpy", "diffusers", "transformers", "clean-fid", "torchmetrics", "open_clip_torch")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def ensure_writable(directory: str | Path) -> None:
    """Create `directory` and write a probe file in it; PermissionError naming the folder if that fails."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise PermissionError(
            f"results folder {directory} is not writable ({err.strerror or err}); "
            "pass --out with a folder you can write to"
        ) from None


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz (what np.load reads) whose bytes depend only on the arrays: fixed entry timestamps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[name]), allow_pickle=False)
    return buffer.getvalue()


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


def _read_summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        fix = "delete it and re-run to recompute that piece"
        raise ValueError(f"record {path} is not valid JSON ({err}); {fix}") from None


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

    def write(
        self, key: RecordKey, rows: list[dict], summary: dict, artifacts: dict[str, np.ndarray], replace: bool = True
    ) -> bool:
        """Write one piece (rows, artifacts, then the summary that marks it finished) under the store's lock.

        With `replace=False` a piece already recorded (by another run, meanwhile) is left as it is and False
        returned. Temporaries a killed run left for this piece are removed first.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive(self.root / "records.lock"):
            if not replace and self.has(key):
                return False
            for suffix in ("rows.jsonl", "artifacts.npz", "summary.json"):
                path = self._path(key, suffix)
                for stale in path.parent.glob(f".{path.name}.*"):
                    stale.unlink(missing_ok=True)
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            atomic_write_text(self._path(key, "rows.jsonl"), lines)
            if artifacts:
                atomic_write_bytes(self._path(key, "artifacts.npz"), npz_bytes(artifacts))
            atomic_write_text(self._path(key, "summary.json"), json.dumps(summary, indent=2, sort_keys=True))
        return True

    def summaries(self) -> Iterator[dict]:
        """Every summary on disk, of every spec (see `latest` for what a table should show)."""
        return (_read_summary(path) for path in sorted(self.root.glob("*/*.summary.json")))

    def latest(self) -> tuple[list[dict], dict[str, list[str]]]:
        """The summaries of each model's newest spec, and model -> the superseded spec hashes (12 digits).

        A model retrained or reconfigured under the same name gets a new spec hash, and its old records stay
        on disk (nothing is deleted); tables must not average them with the new ones as if they were seeds.
        A spec's age is its newest record's `written_at` (records from before that field count as oldest),
        then the summary files' modification times.
        """
        by_spec: dict[tuple[str, str], list[tuple[tuple[str, float], dict]]] = {}
        for path in sorted(self.root.glob("*/*.summary.json")):
            summary = _read_summary(path)
            age = (str(summary.get("written_at", "")), path.stat().st_mtime)
            by_spec.setdefault((summary["model"], summary["spec_hash"]), []).append((age, summary))
        newest: dict[str, tuple[tuple[str, float], str]] = {}
        for (model, spec_hash), found in by_spec.items():
            age = max(a for a, _ in found)
            if model not in newest or age > newest[model][0]:
                newest[model] = (age, spec_hash)
        current, superseded = [], {}
        for (model, spec_hash), found in sorted(by_spec.items()):
            if spec_hash == newest[model][1]:
                current += [s for _, s in found]
            else:
                superseded.setdefault(model, []).append(spec_hash[:12])
        return current, superseded

    def other_versions(self, suite: str, version: str) -> dict[str, list[str]]:
        """Records of `suite` at a version other than `version`: version -> record names."""
        found: dict[str, list[str]] = {}
        for summary in self.summaries():
            if summary.get("suite") == suite and str(summary.get("suite_version")) != str(version):
                found.setdefault(str(summary.get("suite_version")), []).append(summary["record"])
        return found

    def rows(self, summary: dict) -> list[dict]:
        path = self.root / f"{summary['record']}.rows.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def artifacts(self, summary: dict) -> dict[str, np.ndarray]:
        path = self.root / f"{summary['record']}.artifacts.npz"
        if not path.is_file():
            return {}
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
