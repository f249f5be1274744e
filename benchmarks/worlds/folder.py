"""Folder world: real captioned photos from a local folder (e.g. COCO val2017 with one caption per image).

The folder holds the images and `captions.jsonl`, one JSON object per line:
    {"file": "images/000000000139.jpg", "caption": "A woman stands in the dining area", "split": "test"}
`file` is relative to the folder; `split` ("train" or "test") defaults to "test", the held-out set that
FID's reference and floor sets and the NLL suite read. Each image is resized so its shorter side is the
world's resolution (PIL bicubic, which antialiases when shrinking) and centre-cropped to a square, the
usual preprocessing of text-to-image FID on COCO. Nothing is downloaded; `check_inputs` lists what is
missing without decoding an image. There is no exact detector for photos: GenEval on real images is the
`geneval-real` suite (OWLv2 + CLIP colour over GenEval's 553 prompts), and GenEval-style suites on this
world are not applicable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from baselines.caption_folder import CAPTIONS_FILE, Entry, check_listed, load_image, read_captions
from benchmarks.geneval_rules import Detection
from benchmarks.worlds.base import Batch, World, check_split

DEFAULT_RESOLUTION = 256
FIX = (
    f"Put the images and a {CAPTIONS_FILE} (one {{\"file\": ..., \"caption\": ...}} per line, files relative to "
    "the folder) in one folder, e.g. COCO val2017 with one of its captions per image, and set "
    '[world_options] path = "/path/to/that/folder"'
)
__all__ = ["CAPTIONS_FILE", "DEFAULT_RESOLUTION", "FIX", "Entry", "FolderWorld", "check_inputs", "load_image", "read_captions"]


def check_inputs(options: Mapping[str, Any]) -> list[str]:
    """What stops the folder world from loading with `options` (the preset's [world_options]), without decoding."""
    path, captions = options.get("path"), options.get("captions", CAPTIONS_FILE)
    if path is None:
        return [f"world 'folder': world_options.path is not set. {FIX}"]
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return [f"world 'folder': path {path} does not exist. {FIX}"]
    if not (folder / captions).is_file():
        return [f"world 'folder': {folder} has no {captions}. {FIX}"]
    splits, problems = check_listed(folder, captions, "world 'folder'")
    if not splits["test"]:
        problems.append(f"world 'folder': {folder / captions} has no test images (rows without \"split\" are test)")
    return problems


class FolderWorld(World):
    """Captioned photos from a folder, square at `resolution`; batch indices wrap around each split."""

    name = "folder"
    channels = 3
    categories: tuple[str, ...] = ()

    def __init__(
        self, path: str | Path | None, resolution: int = DEFAULT_RESOLUTION, captions: str = CAPTIONS_FILE
    ) -> None:
        if resolution < 1:
            raise ValueError(f"world 'folder' needs resolution >= 1, got {resolution}")
        problems = check_inputs({"path": path, "captions": captions})
        if problems:
            raise FileNotFoundError("\n".join(problems))
        self.path, self.resolution = Path(path).expanduser(), resolution
        self._splits, _ = read_captions(self.path, captions)

    def split_size(self, split: str) -> int:
        """Number of images in a split; `batch` indices wrap around it."""
        check_split(split)
        return len(self._splits[split])

    def batch(self, indices: Sequence[int], split: str = "train") -> Batch:
        check_split(split)
        entries = self._splits[split]
        if not entries:
            raise ValueError(
                f"world 'folder' at {self.path} has no {split} images; mark lines of its {CAPTIONS_FILE} "
                f"with \"split\": \"{split}\""
            )
        chosen = [entries[i % len(entries)] for i in indices]
        images = np.stack([load_image(e.file, self.resolution) for e in chosen])
        return Batch(images, [e.caption for e in chosen], [{} for _ in chosen])

    def vocabulary(self) -> list[str]:
        return sorted({w for split in self._splits.values() for e in split for w in e.caption.lower().split()})

    def prompts(self, per_category: int, seed: int = 0) -> list[dict]:
        """None: GenEval's prompts on photos are the geneval-real suite's."""
        return []

    def render_caption(self, caption: str, seed: int) -> np.ndarray:
        """A test image carrying exactly this caption (whitespace-normalised), chosen by `seed`."""
        text = " ".join(caption.split())
        candidates = [e for e in self._splits["test"] if e.caption == text]
        if not candidates:
            raise ValueError(f"no test image of world 'folder' at {self.path} has the caption {caption!r}")
        chosen = candidates[np.random.default_rng(seed).integers(len(candidates))]
        return load_image(chosen.file, self.resolution)

    def detect(self, image: np.ndarray) -> list[Detection]:
        raise NotImplementedError(
            "the folder world has no exact detector: score GenEval on photos with the geneval-real suite"
        )
