"""Command-line overrides of a preset: `--set key=value`, `--limit`, `--seeds`, `--batch-size`, `--model-args`.

Every override is applied to the preset's data and the result checked exactly as a TOML file is (types, model
and suite options, budgets), so a typo fails before any work with the same message a file would get. The
overrides given are kept, in order, in `Preset.overrides`; the runner writes them into every record's protocol.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.presets import Preset, check_preset

PROMPT_SUITES = {"geneval": "prompts_per_category", "clipscore": "prompts_per_category", "geneval-real": "per_task_limit"}
"""suite -> its option counting prompts per task, which `--limit` sets."""
BATCHED_SUITES = ("geneval", "geneval-real", "clipscore", "fid", "nll")
"""Suites whose `batch_size` only splits the work (`--batch-size`); speed's batch is what it measures."""


def parse_value(text: str) -> Any:
    """A TOML value (`3`, `2.5`, `true`, `[0, 1]`, `"x"`, `{ a = 1 }`), or the text itself as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """data[a][b][c] = value for key "a.b.c", creating tables below the top level as needed."""
    parts = key.split(".")
    if not all(parts):
        raise ValueError(f"--set key {key!r} has an empty part; give dotted preset keys, e.g. train.ntm.steps=100")
    fields = [f.name for f in dataclasses.fields(Preset) if f.name != "overrides"]
    if parts[0] not in fields:
        raise ValueError(f"--set key {key!r}: {parts[0]!r} is no preset key; valid: {', '.join(fields)}")
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ValueError(f"--set key {key!r}: {part!r} holds {node[part]!r}, not a table")
        node = node[part]
    node[parts[-1]] = value


def apply_overrides(
    preset: Preset,
    sets: Sequence[str] = (),
    limit: int | None = None,
    seeds: Sequence[int] | None = None,
    batch_size: int | None = None,
    model_args: Mapping[str, Mapping[str, Any]] | None = None,
) -> Preset:
    """`preset` with the overrides applied in the order above (a later one wins), checked as a preset file is."""
    data = {f.name: _plain(getattr(preset, f.name)) for f in dataclasses.fields(Preset)}
    given = list(preset.overrides)
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} is not key=value; e.g. --set train.ntm.steps=100 or --set seeds=[1]")
        set_path(data, key.strip(), parse_value(text.strip()))
        given.append(f"set {key.strip()}={text.strip()}")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1 (prompts per task), got {limit}")
        for suite, option in PROMPT_SUITES.items():
            if suite in data["suites"]:
                data["suite_options"].setdefault(suite, {})[option] = limit
        given.append(f"limit {limit}")
    if seeds is not None:
        data["seeds"] = list(seeds)
        given.append(f"seeds {','.join(map(str, seeds))}")
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        for suite in BATCHED_SUITES:
            if suite in data["suites"]:
                data["suite_options"].setdefault(suite, {})["batch_size"] = batch_size
        given.append(f"batch_size {batch_size}")
    for model, args in (model_args or {}).items():
        data["model_options"][model] = data["model_options"].get(model, {}) | dict(args)
        given.append(f"model_args {model}: " + ",".join(f"{k}={v}" for k, v in args.items()))
    data["overrides"] = given
    return check_preset(data, f"{preset.name} with overrides {given}")


def _plain(value: Any) -> Any:
    """A preset field as the TOML loader gives it: tuples as lists, tables copied (so overrides never touch the
    original preset)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
