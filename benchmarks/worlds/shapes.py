"""Shapes world: seeded scenes of 1-4 flat-coloured shapes, captioned in GenEval's six task kinds.

Shapes are drawn without anti-aliasing in pure palette colours on a white background, at least
one pixel apart, so the scene parser can read them back exactly. Every scene's caption comes with
its requirements in GenEval's metadata schema, and the scene satisfies them by GenEval's rules.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from benchmarks.geneval_rules import RELATIONS, TAGS, Detection, relative_position
from benchmarks.worlds.base import Batch, World, check_split
from benchmarks.worlds.parser import SceneParser

SHAPES = ("circle", "square", "triangle")
# Corners of the RGB cube: every pair (background included) is >= 255 apart. "purple" is magenta.
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (255, 0, 255),
    "black": (0, 0, 0),
}
COLORS = tuple(PALETTE)
BACKGROUND = (255, 255, 255)
NUMBERS = {2: "two", 3: "three", 4: "four"}
# Inclusive shape side lengths per resolution: four shapes fit, and 5 px still tells shapes apart.
SIZES = {16: (5, 7), 32: (8, 13), 64: (14, 26)}
GAP = 1
# A scene belongs to the test split iff the CRC of its image is 0 mod TEST_BUCKETS, so no image
# can appear in both splits.
TEST_BUCKETS = 5
_STREAMS = {"train": 0, "test": 1, "caption": 2}
_PLACE_TRIES = 32
_MAX_ATTEMPTS = 1000
_COLOR_TABLE = {name: np.array(rgb, dtype=np.uint8)[:, None] for name, rgb in PALETTE.items()}


@lru_cache(maxsize=4096)
def shape_mask(cls: str, width: int, height: int) -> np.ndarray:
    """Read-only bool (height, width) mask of `cls` filling its box; pixel centres decide membership."""
    # doubled pixel-centre coordinates relative to the box centre, in integers so masks are exact
    x = (2 * np.arange(width) + 1 - width)[None, :]
    y = (2 * np.arange(height) + 1 - height)[:, None]
    if cls == "square":
        mask = np.ones((height, width), dtype=bool)
    elif cls == "circle":
        mask = x**2 * height**2 + y**2 * width**2 <= width**2 * height**2
    elif cls == "triangle":
        # apex up: the half-width grows linearly to the full width on the bottom row
        mask = np.abs(x) * height <= width * (np.arange(height)[:, None] + 1)
    else:
        raise ValueError(f"unknown shape {cls!r}; available: {', '.join(SHAPES)}")
    mask.flags.writeable = False
    return mask


def _item(cls: str, count: int = 1, color: str | None = None, position: list | None = None) -> dict:
    item: dict = {"class": cls, "count": count}
    if color is not None:
        item["color"] = color
    if position is not None:
        item["position"] = position
    return item


def _row(tag: str, params: tuple) -> dict:
    """The GenEval metadata row (prompt included) for one choice of a tag's parameters."""
    match tag:
        case "single_object":
            (cls,) = params
            return {"tag": tag, "include": [_item(cls)], "prompt": f"a photo of a {cls}"}
        case "two_object":
            a, b = params
            return {"tag": tag, "include": [_item(a), _item(b)], "prompt": f"a photo of a {a} and a {b}"}
        case "counting":
            n, cls = params
            return {
                "tag": tag,
                "include": [_item(cls, n)],
                "exclude": [_item(cls, n + 1)],
                "prompt": f"a photo of {NUMBERS[n]} {cls}s",
            }
        case "colors":
            color, cls = params
            return {"tag": tag, "include": [_item(cls, color=color)], "prompt": f"a photo of a {color} {cls}"}
        case "position":
            subject, relation, reference = params
            return {
                "tag": tag,
                "include": [_item(reference), _item(subject, position=[relation, 0])],
                "prompt": f"a photo of a {subject} {relation} a {reference}",
            }
        case "color_attr":
            c1, a, c2, b = params
            return {
                "tag": tag,
                "include": [_item(a, color=c1), _item(b, color=c2)],
                "prompt": f"a photo of a {c1} {a} and a {c2} {b}",
            }
    raise ValueError(f"unknown tag {tag!r}; available: {', '.join(TAGS)}")


# Every distinct prompt of each tag, in a fixed order; classes (and colours) of a pair differ, as in GenEval.
OPTIONS: dict[str, list[tuple]] = {
    "single_object": [(cls,) for cls in SHAPES],
    "two_object": list(itertools.permutations(SHAPES, 2)),
    "counting": list(itertools.product(NUMBERS, SHAPES)),
    "colors": list(itertools.product(COLORS, SHAPES)),
    "position": [(s, rel, r) for s, r in itertools.permutations(SHAPES, 2) for rel in RELATIONS],
    "color_attr": [
        (c1, a, c2, b) for a, b in itertools.permutations(SHAPES, 2) for c1, c2 in itertools.permutations(COLORS, 2)
    ],
}

_CLS = "|".join(SHAPES)
_PREFIX = "a photo of "


def _noun_phrase(color_group: str, shape_group: str) -> str:
    return rf"a (?:(?P<{color_group}>{'|'.join(COLORS)}) )?(?P<{shape_group}>{_CLS})"


_ONE = re.compile(_noun_phrase("c1", "s1"))
_PAIR = re.compile(rf"{_noun_phrase('c1', 's1')} (?P<link>and|{'|'.join(RELATIONS)}) {_noun_phrase('c2', 's2')}")
_COUNT = re.compile(rf"(?P<n>{'|'.join(NUMBERS.values())}) (?P<s1>{_CLS})s")


def parse_caption(caption: str) -> dict:
    """The GenEval metadata row for a caption of the shapes grammar; ValueError if it is not one."""
    text = " ".join(caption.lower().split())
    if text.startswith(_PREFIX):
        body = text.removeprefix(_PREFIX)
        if m := _COUNT.fullmatch(body):
            number = next(k for k, word in NUMBERS.items() if word == m["n"])
            return _row("counting", (number, m["s1"]))
        if m := _ONE.fullmatch(body):
            return _row("colors", (m["c1"], m["s1"])) if m["c1"] else _row("single_object", (m["s1"],))
        if (m := _PAIR.fullmatch(body)) and m["s1"] != m["s2"]:
            plain = not m["c1"] and not m["c2"]
            if m["link"] != "and" and plain:
                return _row("position", (m["s1"], m["link"], m["s2"]))
            if m["link"] == "and" and plain:
                return _row("two_object", (m["s1"], m["s2"]))
            if m["link"] == "and" and m["c1"] and m["c2"] and m["c1"] != m["c2"]:
                return _row("color_attr", (m["c1"], m["s1"], m["c2"], m["s2"]))
    raise ValueError(
        f"caption {caption!r} is not in the shapes grammar (e.g. 'a photo of a red circle', "
        "'a photo of three squares', 'a photo of a circle left of a triangle')"
    )


class ShapesWorld(World):
    """Procedural RGB shape scenes at 16, 32 or 64 px, with an exact scene parser as detector."""

    name = "shapes"
    channels = 3
    categories = TAGS
    RESOLUTIONS = tuple(SIZES)

    def __init__(self, resolution: int = 16) -> None:
        if resolution not in self.RESOLUTIONS:
            raise ValueError(
                f"world 'shapes' supports resolutions {', '.join(map(str, self.RESOLUTIONS))}; got {resolution}"
            )
        self.resolution = resolution
        self._parser = SceneParser(PALETTE, BACKGROUND, SHAPES, shape_mask)

    def batch(self, indices: Sequence[int], split: str = "train") -> Batch:
        """Scenes with a uniformly drawn task kind and prompt each; seeded by (split, index)."""
        check_split(split)
        images, captions, metadata = [], [], []
        for index in indices:
            if index < 0:
                raise ValueError(f"scene indices must be >= 0, got {index}")
            rng = np.random.default_rng((_STREAMS[split], int(index)))
            tag = TAGS[rng.integers(len(TAGS))]
            options = OPTIONS[tag]
            meta = _row(tag, options[rng.integers(len(options))])
            while True:
                image = self._render(meta, rng)
                if (zlib.crc32(image.tobytes()) % TEST_BUCKETS == 0) == (split == "test"):
                    break
            images.append(image)
            captions.append(meta["prompt"])
            metadata.append(meta)
        shape = (0, self.channels, self.resolution, self.resolution)
        return Batch(np.stack(images) if images else np.zeros(shape, np.uint8), captions, metadata)

    def vocabulary(self) -> list[str]:
        return sorted({w for tag, opts in OPTIONS.items() for p in opts for w in _row(tag, p)["prompt"].split()})

    def prompts(self, per_category: int, seed: int = 0) -> list[dict]:
        """`per_category` rows per tag, drawn without repetition until a tag's prompts run out."""
        rng = np.random.default_rng(seed)
        rows = []
        for tag in TAGS:
            options = OPTIONS[tag]
            rounds = -(-per_category // len(options))
            order = np.concatenate([rng.permutation(len(options)) for _ in range(rounds)])[:per_category]
            rows += [_row(tag, options[i]) for i in order]
        return rows

    def render_caption(self, caption: str, seed: int) -> np.ndarray:
        return self._render(parse_caption(caption), np.random.default_rng((_STREAMS["caption"], seed)))

    def detect(self, image: np.ndarray) -> list[Detection]:
        if image.shape != (3, self.resolution, self.resolution):
            raise ValueError(f"expected a (3, {self.resolution}, {self.resolution}) image, got {image.shape}")
        return self._parser(image)

    def fragments(self, image: np.ndarray) -> int:
        """Coloured specks too small to be an object, which `detect` drops (`SceneParser.fragments`)."""
        return self._parser.fragments(image)

    def _render(self, meta: dict, rng: np.random.Generator) -> np.ndarray:
        """Draw one scene holding exactly the included objects, in clear GenEval relations."""
        items = meta["include"]
        owners = [i for i, item in enumerate(items) for _ in range(item["count"])]
        lo, hi = SIZES[self.resolution]
        for _ in range(_MAX_ATTEMPTS):
            sizes = rng.integers(lo, hi + 1, size=len(owners))
            boxes = self._place(sizes, rng)
            if boxes is not None and _relations_hold(items, owners, boxes):
                break
        else:
            raise RuntimeError(f"could not lay out {meta['prompt']!r} at {self.resolution} px")
        image = np.empty((3, self.resolution, self.resolution), dtype=np.uint8)
        image[:] = np.array(BACKGROUND, dtype=np.uint8)[:, None, None]
        for owner, (x0, y0, x1, y1) in zip(owners, boxes):
            color = items[owner].get("color") or COLORS[rng.integers(len(COLORS))]
            mask = shape_mask(items[owner]["class"], x1 - x0, y1 - y0)
            image[:, y0:y1, x0:x1][:, mask] = _COLOR_TABLE[color]
        return image

    def _place(self, sizes: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int, int]] | None:
        """Random boxes (x0, y0, x1, y1) at least GAP apart, or None if one does not fit."""
        boxes: list[tuple[int, int, int, int]] = []
        for s in sizes.tolist():
            xy = rng.integers(0, self.resolution - s + 1, size=(_PLACE_TRIES, 2))
            x, y = xy[:, 0], xy[:, 1]
            free = np.ones(_PLACE_TRIES, dtype=bool)
            for bx0, by0, bx1, by1 in boxes:
                free &= (x + s + GAP <= bx0) | (bx1 + GAP <= x) | (y + s + GAP <= by0) | (by1 + GAP <= y)
            hits = np.flatnonzero(free)
            if len(hits) == 0:
                return None
            x0, y0 = xy[hits[0]].tolist()
            boxes.append((x0, y0, x0 + s, y0 + s))
        return boxes


def _relations_hold(items: list[dict], owners: list[int], boxes: list[tuple[int, ...]]) -> bool:
    """Whether every positioned object stands in exactly its relation to each target object."""
    for i, item in enumerate(items):
        if "position" not in item:
            continue
        relation, j = item["position"]
        for a, b in itertools.product(range(len(owners)), repeat=2):
            if owners[a] == i and owners[b] == j and relative_position(boxes[a], boxes[b]) != {relation}:
                return False
    return True
