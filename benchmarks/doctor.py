"""Preflight of a preset: every input `ntm-bench reproduce` would need, checked without loading weights or training.

The preset file is read leniently (key by key), so one run lists every problem at once instead of the
first one `load_preset` would raise: its keys and types, the world (built, which for the folder world
checks its files), the backbone size, every model name and option, every training budget, every suite
and its options, the local weights each model and suite reads (an adapter or suite module's
`check_inputs`: pretrained pipelines, geneval-real's detector and CLIP; clean-fid's Inception file and
the eval-CLIP asset for fid), the devices asked for, and whether the results folder can be written.
Each problem is one line that names its fix.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from baselines.registry import get_entry, model_options
from benchmarks.presets import Preset, load_preset, preset_path
from ntm.backbone import SIZES
from ntm.train import TrainConfig

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotImplementedError, TypeError)
"""What a bad preset value makes the harness raise; anything else is a bug and propagates."""


@dataclass(frozen=True)
class Diagnosis:
    """The preset's name, the results folder checked, and every problem found (empty: ready)."""

    preset: str
    out: Path
    problems: list[str]

    @property
    def ready(self) -> bool:
        return not self.problems


def _attempt(problems: list[str], prefix: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`; on a user error append `prefix` + its message (one problem per line) and return None."""
    try:
        return fn()
    except USER_ERRORS as err:
        problems.extend(f"{prefix}{line}" for line in str(err).splitlines() if line.strip())
        return None


def _module_check(obj: type) -> Callable[..., list[str]] | None:
    """The `check_inputs` of the module defining `obj`: how adapters and suites report missing local inputs."""
    return getattr(sys.modules[obj.__module__], "check_inputs", None)


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_tables(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


SECTIONS: dict[str, tuple[Callable[[Any], bool], Any, str]] = {
    "device": (lambda v: isinstance(v, str), "cpu", 'a string, e.g. device = "cuda"'),
    "models": (_is_names, [], 'a list of names, e.g. models = ["ntm"]'),
    "suites": (_is_names, [], 'a list of names, e.g. suites = ["geneval"]'),
    "backbone": (lambda v: isinstance(v, dict), {}, 'a table, e.g. [backbone] size = "tiny"'),
    "world_options": (lambda v: isinstance(v, dict), {}, 'a table, e.g. [world_options] path = "/data/coco"'),
    "train": (_is_tables, {}, "a table of tables, e.g. [train.ntm] steps = 800"),
    "model_options": (_is_tables, {}, "a table of tables, e.g. [model_options.ntm] guidance = 2.0"),
    "suite_options": (_is_tables, {}, "a table of tables, e.g. [suite_options.nll] images = 64"),
}
"""The sections the checks below walk: their shape, the stand-in used when it is wrong, and the fix."""


def structure_problems(data: dict[str, Any]) -> list[str]:
    """Unknown and missing top-level keys and mis-shaped sections; a mis-shaped one is replaced by its stand-in."""
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    valid = ", ".join(sorted(fields))
    problems = [f"preset: unknown key {k!r}; valid: {valid}" for k in sorted(set(data) - set(fields))]
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data and name != "name":
            problems.append(f"preset: missing key {name!r}; add it (see benchmarks/presets/tiny.toml)")
    for key, (check, stand_in, wanted) in SECTIONS.items():
        if not check(data.get(key, stand_in)):
            problems.append(f"preset: {key} = {data[key]!r} must be {wanted}")
            data[key] = stand_in
    return problems


def world_problems(world: Any, resolution: Any, options: Mapping[str, Any]) -> list[str]:
    """Build the world as the runner will (cheap: no model); the folder world checks its files here."""
    from benchmarks.worlds import get_world

    if not isinstance(world, str):
        return [f'preset: world = {world!r} must be a world name, e.g. world = "shapes"']
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        return [f"preset: resolution = {resolution!r} must be a positive integer, e.g. resolution = 16"]
    problems: list[str] = []
    _attempt(problems, "", lambda: get_world(world, resolution, **options))
    return problems


def backbone_problems(backbone: Any, resolution: Any) -> list[str]:
    """A named backbone size and a patch that divides the resolution (an empty [backbone] trains nothing)."""
    if not isinstance(backbone, dict) or not backbone:
        return []
    size, patch = backbone.get("size"), backbone.get("patch")
    problems = []
    if size not in SIZES:
        problems.append(f"[backbone] size = {size!r} is not one of {', '.join(SIZES)}")
    if not isinstance(patch, int) or patch < 1 or (isinstance(resolution, int) and resolution % patch):
        problems.append(f"[backbone] patch = {patch!r} must be a positive integer dividing resolution {resolution}")
    return problems


def model_problems(models: list[str], options: Mapping[str, Any]) -> list[str]:
    """Registered names, known options, and the local weights an adapter reads (its module's `check_inputs`)."""
    import benchmarks.reference  # noqa: F401  (registers the reference rows)

    problems: list[str] = []
    for name in models + sorted(set(options) - set(models)):
        entry = _attempt(problems, "", lambda name=name: get_entry(name))
        if entry is None:
            continue
        given = options.get(name, {})
        unknown = sorted(set(given) - set(model_options(name)))
        if unknown:
            problems.append(f"[model_options.{name}]: unknown option(s) {unknown}; valid: {model_options(name)}")
        check = _module_check(entry.load()) if name in models else None
        if check is not None:
            problems.extend(check(name, entry.options | given))
    return problems


def train_problems(train: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for recipe, budget in train.items():
        _attempt(problems, f"[train.{recipe}]: ", lambda budget=budget: TrainConfig.from_dict(budget))
    return problems


def fid_problems(options: Mapping[str, Any], world: Any, resolution: Any) -> list[str]:
    """clean-fid's Inception file for `features = "inception"`, else the world's eval-CLIP asset."""
    from benchmarks.fid import find_inception

    problems: list[str] = []
    if options.get("features", "eval-clip") == "inception":
        _attempt(problems, "fid: ", lambda: find_inception(options.get("inception_path")))
        return problems
    if world == "folder":
        return ['fid: an eval-CLIP exists only for the rendered worlds; set [suite_options.fid] features = "inception"']
    from benchmarks.features import WEIGHTS_FILE, asset_dir, build_command

    folder = asset_dir(world, resolution)
    if not (folder / WEIGHTS_FILE).is_file():
        problems.append(
            f"fid: no eval-CLIP for world {world!r} at {resolution} px ({folder}); "
            f"build it with `{build_command(world, resolution)}`"
        )
    return problems


def suite_problems(suites: list[str], options: Mapping[str, Any], world: Any, resolution: Any) -> list[str]:
    """Known suites with valid options, and the local inputs each reads."""
    from benchmarks.suites import get_suite

    problems: list[str] = []
    for name in suites + sorted(set(options) - set(suites)):
        given = options.get(name, {})
        suite = _attempt(problems, f"suite {name}: ", lambda name=name, given=given: get_suite(name, given))
        if suite is None or name not in suites:
            continue
        if name == "fid":
            problems.extend(fid_problems(given, world, resolution))
        check = _module_check(type(suite))
        if check is not None:
            problems.extend(check(given))
    return problems


def device_problems(device: str, where: str) -> list[str]:
    """A device string torch parses, and CUDA present when it is asked for."""
    if device == "auto":
        return []
    try:
        parsed = torch.device(device)
    except RuntimeError:
        return [f"{where}: {device!r} is not a torch device; use cpu, cuda, cuda:1 or auto"]
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return [
            f"{where}: {device!r} is asked for but CUDA is not available here; run on a GPU machine or use --device cpu"
        ]
    return []


def output_problems(out: Path) -> list[str]:
    """Whether `out` can be created and written, judged from its nearest existing ancestor (nothing is created)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"results folder {out}: {existing} is a file, not a folder; pass --out with another folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"results folder {out}: {existing} is not writable; pass --out with a folder you can write to"]
    return []


def diagnose(preset: str | Path, out: Path | None = None, device: str | None = None) -> Diagnosis:
    """Every problem that would stop `ntm-bench reproduce --preset PRESET --out OUT --device DEVICE`."""
    name = Path(preset).stem if Path(preset).suffix == ".toml" else str(preset)
    problems: list[str] = []
    path = _attempt(problems, "", lambda: preset_path(preset))
    data = None
    if path is not None:
        data = _attempt(problems, f"preset {path} is not valid TOML: ", lambda: tomllib.loads(path.read_text()))
    if data is None:
        return Diagnosis(name, out or Path("results") / name, problems)
    name = data.get("name", name)
    out = out or Path("results") / name
    problems += structure_problems(data)
    world, resolution = data.get("world"), data.get("resolution")
    problems += world_problems(world, resolution, data.get("world_options", {}))
    problems += backbone_problems(data.get("backbone"), resolution)
    problems += model_problems(data.get("models", []), data.get("model_options", {}))
    problems += train_problems(data.get("train", {}))
    problems += suite_problems(data.get("suites", []), data.get("suite_options", {}), world, resolution)
    problems += device_problems(device or data.get("device", "cpu"), "--device" if device else "preset device")
    for suite, given in data.get("suite_options", {}).items():
        if isinstance(given.get("device"), str):
            problems += device_problems(given["device"], f"[suite_options.{suite}] device")
    problems += output_problems(out)
    if not problems:  # anything the key-by-key checks above do not cover
        _attempt(problems, "", lambda: load_preset(path))
    return Diagnosis(name, out, problems)
