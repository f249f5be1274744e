"""GenEval's scoring rules (Ghosh et al., 2023), restated for any detector that yields `Detection`s.

A prompt's requirements use GenEval's metadata schema: `include` items (`class`, `count`, optional
`color`, optional `position: [relation, j]`) that must all hold, and `exclude` items whose class
must appear fewer than `count` times.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
# GenEval shrinks the centre offset by this fraction of the summed box sizes on each axis.
POSITION_THRESHOLD = 0.1


@dataclass(frozen=True)
class Detection:
    """One detected object; `box` is (x0, y0, x1, y1) in pixels with exclusive ends."""

    cls: str
    color: str | None
    box: tuple[float, float, float, float]
    area: int


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...]) -> set[str]:
    """Relations of box A to box B by GenEval's rule (image y points down)."""
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    offset = ((ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2)
    sizes = (ax1 - ax0 + bx1 - bx0, ay1 - ay0 + by1 - by0)
    revised = [math.copysign(max(abs(o) - POSITION_THRESHOLD * s, 0.0), o) for o, s in zip(offset, sizes)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    # GenEval divides the shrunk offset by the length of the unshrunk one.
    length = math.hypot(*offset)
    dx, dy = revised[0] / length, revised[1] / length
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _describe(relations: set[str]) -> str:
    return " and ".join(sorted(relations)) if relations else "no clear relation to"


def score(detections: list[Detection], meta: dict, ranked: bool = False) -> tuple[bool, str]:
    """Judge detections against one GenEval metadata row; returns (correct, reason).

    Detections are taken in the order given (the detector's confidence order). Where GenEval
    checks the colour of the top-`count` detections, this counts every detection of the class
    with the required colour, since a rule-based detector has no confidence to rank by. With
    `ranked` (a detector whose order is its confidence), only the `count` first detections of the
    class are checked for colour, as GenEval's `evaluate` does.
    """
    reasons = []
    groups: list[list[Detection] | None] = []
    for item in meta["include"]:
        cls, count = item["class"], item["count"]
        found = [d for d in detections if d.cls == cls]
        group: list[Detection] | None = None
        if len(found) < count:
            reasons.append(f"expected {count} {cls}, found {len(found)}")
        elif "color" in item:
            color = item["color"]
            candidates = found[:count] if ranked else found
            coloured = [d for d in candidates if d.color == color]
            if len(coloured) < count:
                listing = ", ".join(f"{k} {c}" for c, k in Counter(d.color for d in candidates).items())
                reasons.append(f"expected {count} {color} {cls}, found {len(coloured)} {color} (colours: {listing})")
            else:
                group = coloured[:count]
        else:
            group = found[:count]
        if group is not None and "position" in item:
            relation, j = item["position"]
            target = groups[j]
            target_cls = meta["include"][j]["class"]
            if target is None:
                reasons.append(f"no {target_cls} to place {cls} {relation}")
                group = None
            else:
                for d, t in itertools.product(group, target):
                    found_relations = relative_position(d.box, t.box)
                    if relation not in found_relations:
                        reasons.append(
                            f"expected {cls} {relation} {target_cls}, "
                            f"found {cls} {_describe(found_relations)} {target_cls}"
                        )
                        group = None
                        break
        groups.append(group)
    for item in meta.get("exclude", []):
        cls, count = item["class"], item["count"]
        n = sum(d.cls == cls for d in detections)
        if n >= count:
            reasons.append(f"expected fewer than {count} {cls}, found {n}")
    return (False, "; ".join(reasons)) if reasons else (True, "correct")


def validate_metadata(meta: dict) -> None:
    """Raise ValueError unless `meta` follows GenEval's metadata schema."""
    if not isinstance(meta, dict):
        raise ValueError(f"metadata must be an object, got {type(meta).__name__}")
    unknown = set(meta) - {"tag", "include", "exclude", "prompt"}
    if unknown:
        raise ValueError(f"unknown metadata keys {sorted(unknown)}")
    if meta.get("tag") not in TAGS:
        raise ValueError(f"tag {meta.get('tag')!r} is not one of {', '.join(TAGS)}")
    if not isinstance(meta.get("prompt"), str) or not meta["prompt"]:
        raise ValueError("prompt must be a non-empty string")
    include = meta.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError("include must be a non-empty list")
    for where, items in (("include", include), ("exclude", meta.get("exclude", []))):
        if not isinstance(items, list):
            raise ValueError(f"{where} must be a list")
        for i, item in enumerate(items):
            _validate_item(item, where, i)
    for i, item in enumerate(include):
        if "position" in item and not item["position"][1] < i:
            raise ValueError(f"include[{i}] position must refer to an earlier include item")


def _validate_item(item: object, where: str, i: int) -> None:
    name = f"{where}[{i}]"
    if not isinstance(item, dict):
        raise ValueError(f"{name} must be an object")
    allowed = {"class", "count", "color", "position"} if where == "include" else {"class", "count"}
    if set(item) - allowed:
        raise ValueError(f"{name} has unknown keys {sorted(set(item) - allowed)}")
    if not isinstance(item.get("class"), str):
        raise ValueError(f"{name} needs a string 'class'")
    count = item.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{name} needs an integer 'count' >= 1")
    if "color" in item and not isinstance(item["color"], str):
        raise ValueError(f"{name} 'color' must be a string")
    if "position" in item:
        pos = item["position"]
        if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS and isinstance(pos[1], int)):
            raise ValueError(f"{name} 'position' must be [relation, index] with relation in {RELATIONS}")


def read_jsonl(path: str | Path, check: Callable[[dict], None], what: str) -> list[dict]:
    """One JSON object per non-empty line of `path`, each passed to `check` (which raises ValueError or fixes
    the row in place); a bad line is a ValueError naming the file, the line and `what` it should be."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                check(row)
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{lineno}: bad {what}: {e}") from None
            rows.append(row)
    return rows


def load_geneval_metadata(path: str | Path) -> list[dict]:
    """Read GenEval's `evaluation_metadata.jsonl`, one validated row per non-empty line."""
    return read_jsonl(path, validate_metadata, "GenEval metadata row")
