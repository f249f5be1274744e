"""Presets: one TOML file fixes the world, the backbone, every budget, the models and the suites."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.registry import UnknownNameError
from ntm.train import TrainConfig

PRESET_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    world: str
    resolution: int
    models: tuple[str, ...]
    suites: tuple[str, ...]
    backbone: dict[str, Any]
    train: dict[str, dict[str, Any]]
    device: str = "cpu"
    seeds: tuple[int, ...] = (0,)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    suite_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A bundled preset by name (`tiny`) or a TOML file by path; unknown keys are errors."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if str(name_or_path) not in available_presets():
            raise UnknownNameError("preset", str(name_or_path), available_presets())
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"preset file {path} does not exist; bundled presets: {', '.join(available_presets())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset {path} is not valid TOML: {err}") from err
    data.setdefault("name", path.stem)
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"preset {path}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    missing = sorted(n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"preset {path}: missing key(s) {missing}")
    for key in ("models", "suites", "seeds"):
        if key in data:
            data[key] = tuple(data[key])
    preset = Preset(**data)
    _validate(preset, path)
    return preset


def _validate(preset: Preset, path: Path) -> None:
    """Fail on load, naming the file, rather than after an hour of training."""
    from benchmarks.suites import get_suite

    for name in set(preset.suites) | set(preset.suite_options):
        get_suite(name, preset.suite_options.get(name))
    for recipe, options in preset.train.items():
        try:
            TrainConfig.from_dict(options)
        except ValueError as err:
            raise ValueError(f"preset {path}, [train.{recipe}]: {err}") from None
