"""Presets: one TOML file fixes the world, the backbone, every budget, the models and the suites."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.registry import UnknownNameError
from benchmarks.presets.audit import AuditOptions
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
    world_options: dict[str, Any] = field(default_factory=dict)
    """Options of the world's factory (`get_world(world, resolution, **world_options)`), e.g. a folder path."""
    audit: dict[str, Any] | None = None
    """The likelihood audit's options (`benchmarks.presets.audit.AuditOptions`); with this table present,
    `ntm-bench reproduce` runs the audit after the suites. `audit-likelihood` takes the defaults without it."""
    overrides: tuple[str, ...] = ()
    """The command-line overrides applied to the file (`benchmarks.presets.overrides`), in order; the runner
    writes them into every record's protocol. Not a TOML key."""

    def options_for(self, name: str) -> dict[str, Any]:
        """Model `name`'s options: those of the model it shares weights with (its registry entry's `shares`,
        e.g. `ntm-8` and `ntm` are one trained model), as far as it takes them, then its own table."""
        from baselines.registry import get_entry, model_options

        shared = get_entry(name).shares
        base = self.model_options.get(shared, {}) if shared else {}
        valid = set(model_options(name))
        return {k: v for k, v in base.items() if k in valid} | self.model_options.get(name, {})


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name_or_path: str | Path) -> Path:
    """The TOML file of a bundled preset name or a .toml path; clear errors for unknown names and missing files."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if str(name_or_path) not in available_presets():
            raise UnknownNameError("preset", str(name_or_path), available_presets())
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"preset file {path} does not exist; bundled presets: {', '.join(available_presets())}")
    return path


def load_preset(name_or_path: str | Path) -> Preset:
    """A bundled preset by name (`tiny`) or a TOML file by path; unknown keys are errors."""
    path = preset_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset {path} is not valid TOML: {err}") from err
    data.setdefault("name", path.stem)
    if "overrides" in data:
        raise ValueError(f"preset {path}: 'overrides' is not a preset key (it records command-line --set options)")
    return check_preset(data, str(path))


def check_preset(data: dict[str, Any], where: str) -> Preset:
    """A Preset from TOML-like `data` (lists, tables), every key, type, name and budget checked; errors name
    `where` (the file, or the preset and its command-line overrides)."""
    data = dict(data)
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"preset {where}: unknown key(s) {unknown}; valid: {sorted(set(fields) - {'overrides'})}")
    missing = sorted(n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"preset {where}: missing key(s) {missing}")
    _check_types(data, where)
    for key in ("models", "suites", "seeds", "overrides"):
        if key in data:
            data[key] = tuple(data[key])
    preset = Preset(**data)
    _validate(preset, where)
    return preset


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seed(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_list_of(value: Any, kind: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(kind(x) for x in value)


def _is_table_of_tables(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str), 'a string, e.g. name = "mine"'),
    "description": (lambda v: isinstance(v, str), 'a string, e.g. description = "what it is for"'),
    "world": (lambda v: isinstance(v, str), 'a string, e.g. world = "shapes"'),
    "device": (lambda v: isinstance(v, str), 'a string, e.g. device = "cpu"'),
    "resolution": (lambda v: _is_int(v) and v >= 1, "a positive integer, e.g. resolution = 16"),
    "models": (lambda v: _is_list_of(v, _is_str), 'a non-empty list of names, e.g. models = ["ntm"]'),
    "suites": (lambda v: _is_list_of(v, _is_str), 'a non-empty list of names, e.g. suites = ["geneval"]'),
    "seeds": (lambda v: _is_list_of(v, _is_seed), "a non-empty list of integers >= 0, e.g. seeds = [0, 1]"),
    "backbone": (lambda v: isinstance(v, dict), 'a table, e.g. [backbone] size = "tiny"'),
    "train": (_is_table_of_tables, "a table of tables, e.g. [train.ntm] steps = 800"),
    "model_options": (_is_table_of_tables, "a table of tables, e.g. [model_options.ntm] guidance = 2.0"),
    "suite_options": (_is_table_of_tables, "a table of tables, e.g. [suite_options.nll] images = 64"),
    "world_options": (lambda v: isinstance(v, dict), 'a table, e.g. [world_options] path = "/data/coco-val2017"'),
    "audit": (lambda v: v is None or isinstance(v, dict), "a table, e.g. [audit] truth_images = 32"),
    "overrides": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
}


def _check_types(data: dict[str, Any], path: Path | str) -> None:
    for key, value in data.items():
        check, wanted = _TYPES[key]
        if not check(value):
            raise ValueError(f"preset {path}: {key} = {value!r} must be {wanted}")


def _validate(preset: Preset, path: Path | str) -> None:
    """Fail on load, naming the file, rather than after an hour of training."""
    import benchmarks.reference  # noqa: F401  (registers the reference rows)
    from baselines.registry import model_options
    from benchmarks.suites import get_suite
    from benchmarks.worlds import available_worlds

    if preset.world not in available_worlds():
        raise ValueError(f"preset {path}: unknown world {preset.world!r}; available: {', '.join(available_worlds())}")
    for name in preset.models + tuple(preset.model_options):
        try:
            valid = model_options(name)
        except UnknownNameError as err:
            raise ValueError(f"preset {path}: {err}; fix models or [model_options.{name}]") from None
        unknown = sorted(set(preset.model_options.get(name, {})) - set(valid))
        if unknown:
            raise ValueError(f"preset {path}, [model_options.{name}]: unknown option(s) {unknown}; valid: {valid}")
    for name in set(preset.suites) | set(preset.suite_options):
        get_suite(name, preset.suite_options.get(name))
    for recipe, options in preset.train.items():
        try:
            TrainConfig.from_dict(options)
        except ValueError as err:
            raise ValueError(f"preset {path}, [train.{recipe}]: {err}") from None
    if preset.audit is not None:
        try:
            AuditOptions.from_dict(preset.audit).known_world_budgets(preset.train)
        except (TypeError, ValueError) as err:
            raise ValueError(f"preset {path}, [audit]: {err}") from None
