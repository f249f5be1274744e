"""A local folder of captioned images, read the same way by the folder world and by models that train on one.

The folder holds the images and `captions.jsonl`, one JSON object per line:
    {"file": "images/000000000139.jpg", "caption": "A woman stands in the dining area", "split": "test"}
`file` is relative to the folder; `split` is "train" or "test" (default "test"). Each image is resized so its
shorter side is the requested resolution (PIL bicubic, which antialiases when shrinking) and centre-cropped to a
square. `benchmarks.worlds.folder` builds the evaluation world on these functions; `CaptionFolder` is the
training-only view of such a folder a model reads when a preset points it at its own caption folder (this
module sits below `benchmarks`, so a model adapter may use it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS_FILE = "captions.jsonl"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Entry:
    """One captioned image: its path and caption."""

    file: Path
    caption: str


def read_captions(
    folder: Path, captions: str = CAPTIONS_FILE, label: str = "world 'folder'"
) -> tuple[dict[str, list[Entry]], list[str]]:
    """The entries of each split from `folder/captions`, and one problem per malformed line (prefixed `label`)."""
    splits: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    problems = []
    lines = (folder / captions).read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{folder / captions}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{label}: {where} is not JSON ({err.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("file"), str) or not isinstance(row.get("caption"), str):
            problems.append(f"{label}: {where} needs string fields \"file\" and \"caption\"")
            continue
        split = row.get("split", "test")
        if split not in SPLITS:
            problems.append(f"{label}: {where} has split {split!r}; use one of {', '.join(SPLITS)}")
            continue
        splits[split].append(Entry(folder / row["file"], " ".join(row["caption"].split())))
    return splits, problems


def load_image(file: Path, resolution: int) -> np.ndarray:
    """uint8 (3, R, R): shorter side resized to R (bicubic), then the centred R x R square."""
    with Image.open(file) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def check_listed(folder: Path, captions: str, label: str) -> tuple[dict[str, list[Entry]], list[str]]:
    """`read_captions`, plus one problem (prefixed `label`) when images the captions file lists are missing."""
    splits, problems = read_captions(folder, captions, label)
    entries = [e for split in splits.values() for e in split]
    missing = [e.file for e in entries if not e.file.is_file()]
    if missing:
        shown = ", ".join(str(f) for f in missing[:3])
        problems.append(
            f"{label}: {len(missing)} of {len(entries)} images listed in {folder / captions} are missing "
            f"(e.g. {shown}); copy them there or drop their lines"
        )
    return splits, problems


def folder_problems(path: str | Path | None, what: str, fix: str, captions: str = CAPTIONS_FILE) -> list[str]:
    """What stops a caption folder at `path` from being read: missing folder, captions file, images or rows.

    `what` names it in each message (e.g. "ntm-diffusers: caption folder data"), `fix` says what to do.
    Reads the captions file, never an image.
    """
    if path is None:
        return [f"{what} is not set. {fix}"]
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return [f"{what} {path} does not exist. {fix}"]
    if not (folder / captions).is_file():
        return [f"{what} {folder} has no {captions}. {fix}"]
    splits, problems = check_listed(folder, captions, what)
    if not any(splits.values()) and not problems:
        problems.append(f"{what} {folder / captions} lists no images. {fix}")
    return problems


@dataclass(frozen=True)
class CaptionBatch:
    """uint8 images (N, 3, R, R) and their captions: what `baselines.training.training_batch` reads."""

    images: np.ndarray
    captions: list[str]


class CaptionFolder:
    """Every captioned image of a folder (both splits: a training folder needs no split marks), square at
    `resolution`; batch indices wrap around. A `DataSource` for `baselines.training.training_batch`."""

    channels = 3

    def __init__(self, path: str | Path, resolution: int, what: str = "caption folder", captions: str = CAPTIONS_FILE) -> None:
        fix = f"Put images and a {CAPTIONS_FILE} (one {{\"file\": ..., \"caption\": ...}} per line) in one folder"
        problems = folder_problems(path, what, fix, captions)
        if problems:
            raise FileNotFoundError("\n".join(problems))
        self.path, self.resolution, self.name = Path(path).expanduser(), resolution, "caption-folder"
        splits, _ = read_captions(self.path, captions, what)
        self.entries = splits["train"] + splits["test"]

    def vocabulary(self) -> list[str]:
        return sorted({w for e in self.entries for w in e.caption.lower().split()})

    def batch(self, indices: Sequence[int], split: str = "train") -> CaptionBatch:
        chosen = [self.entries[i % len(self.entries)] for i in indices]
        return CaptionBatch(np.stack([load_image(e.file, self.resolution) for e in chosen]), [e.caption for e in chosen])
