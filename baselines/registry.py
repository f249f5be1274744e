"""Model registry: names -> adapters, by lazy "module:Class" strings, a decorator, or entry points.

Entries are strings until built, so the registry imports none of its users (no import cycle);
a separate package adds a model through the `ntm_bench.generators` entry-point group, whose
object is a `ModelEntry` or a callable returning a list of them. Beside the fixed names, `diffusers:<spec>`
names any local diffusers text-to-image pipeline (`baselines.pretrained.DiffusersGenerator`), made on lookup.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from baselines.base import BuildContext, Generator

ENTRY_POINT_GROUP = "ntm_bench.generators"


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, available: list[str], hint: str = "") -> None:
        super().__init__(name)
        self.message = f"unknown {kind} {name!r}; available: {', '.join(sorted(available))}"
        if hint:
            self.message += f"; {hint}"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: `target` is "module:Class" of a Generator with `from_context(ctx, name, **options)`."""

    name: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    shares: str | None = None
    """Another model whose preset options this one takes first: the same trained weights, sampled otherwise."""

    def load(self) -> type[Generator]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_MODELS: dict[str, ModelEntry] = {}
_entry_points_loaded = False
_FROM_ENTRY_POINTS: dict[str, ModelEntry] = {}


def register(name: str, target: str | type, description: str = "", shares: str | None = None, **options: Any) -> None:
    """Register `name`; `target` is a Generator class or its lazy "module:Class" path; `shares`: see ModelEntry."""
    if not isinstance(target, str):
        target = f"{target.__module__}:{target.__qualname__}"
    _MODELS[name] = ModelEntry(name, target, options, description, shares)


def generator(name: str, description: str = "", **options: Any) -> Callable[[type], type]:
    """Class decorator form of `register`."""

    def wrap(cls: type) -> type:
        register(name, cls, description, **options)
        return cls

    return wrap


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        entries = obj() if callable(obj) and not isinstance(obj, ModelEntry) else obj
        for entry in [entries] if isinstance(entries, ModelEntry) else entries:
            if entry.name not in _MODELS:
                _MODELS[entry.name] = _FROM_ENTRY_POINTS[entry.name] = entry


def reload_entry_points() -> list[str]:
    """Scan the `ntm_bench.generators` entry points again; returns the model names this scan added.

    For a running interpreter whose installed distributions changed (a `pip install -e`, or a
    sys.path edit in a test): models an earlier scan added are dropped first, unless `register`
    has replaced them since, so an uninstalled package's models disappear.
    """
    global _entry_points_loaded
    for name, entry in _FROM_ENTRY_POINTS.items():
        if _MODELS.get(name) is entry:
            del _MODELS[name]
    _FROM_ENTRY_POINTS.clear()
    importlib.invalidate_caches()  # also forgets importlib.metadata's cached directory listings
    _entry_points_loaded = False
    _load_entry_points()
    return sorted(_FROM_ENTRY_POINTS)


def available_models() -> list[str]:
    _load_entry_points()
    return sorted(_MODELS)


DIFFUSERS_PREFIX = "diffusers:"
DIFFUSERS_HINT = (
    "or diffusers:/path/to/pipeline-folder (any diffusers text-to-image pipeline folder), or "
    "diffusers:owner/repo from the local Hugging Face cache"
)


def diffusers_entry(name: str) -> ModelEntry:
    """The entry of a `diffusers:<spec>` name: the generic pipeline adapter with `path` = <spec>."""
    spec = name.removeprefix(DIFFUSERS_PREFIX)
    return ModelEntry(
        name, "baselines.pretrained:DiffusersGenerator", {"path": spec}, f"diffusers pipeline {spec} (generic adapter)"
    )


def get_entry(name: str) -> ModelEntry:
    """The entry of a registered name, or of a `diffusers:<spec>` name (made on lookup, never listed)."""
    _load_entry_points()
    if name in _MODELS:
        return _MODELS[name]
    if name.startswith(DIFFUSERS_PREFIX) and name.removeprefix(DIFFUSERS_PREFIX).strip():
        return diffusers_entry(name)
    raise UnknownNameError("model", name, list(_MODELS), DIFFUSERS_HINT)


ARG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ARG_INT = re.compile(r"[+-]?[0-9]+")
ARG_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
ARGS_FORM = "key=value pairs separated by commas, e.g. path=/models/sdxl-turbo,dtype=float16,steps=4,guidance=0.0"


def parse_model_args(text: str) -> dict[str, Any]:
    """Model options from `key=value,key=value` (the CLI's --model-args), for `build(name, ctx, **options)`.

    Values: true/false (any case) -> bool, integers -> int, decimals and exponents -> float, anything else
    (or a value in matching quotes) -> str. Keys are identifiers; commas and '=' cannot occur in values.
    Blank text gives {}. ValueError, naming the item and the expected form, for an item without '=', an
    empty key or value, a key that is no identifier, or a key given twice. Whether the model takes the keys
    is `build`'s check (its message lists the options the model takes).
    """
    options: dict[str, Any] = {}
    if not text.strip():
        return options
    for item in text.split(","):
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not eq or not key or not raw:
            what = "no '='" if not eq else "no key" if not key else "no value"
            raise ValueError(f"model args item {item.strip()!r} has {what}; expected {ARGS_FORM}")
        if not ARG_KEY.fullmatch(key):
            raise ValueError(f"model args key {key!r} is not a name (letters, digits, _); expected {ARGS_FORM}")
        if key in options:
            raise ValueError(f"model args key {key!r} is given twice; expected {ARGS_FORM}")
        options[key] = _arg_value(raw)
    return options


def _arg_value(raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if ARG_INT.fullmatch(raw):
        return int(raw)
    if ARG_FLOAT.fullmatch(raw):
        return float(raw)
    return raw


def model_options(name: str) -> list[str]:
    """The options model `name` accepts (keyword arguments of its `from_context`)."""
    params = inspect.signature(get_entry(name).load().from_context).parameters
    return [p for p in params if p not in ("ctx", "name")]


def build(name: str, ctx: BuildContext, **overrides: Any) -> Generator:
    """Instantiate model `name` in `ctx` (training it first if its weights are not cached)."""
    entry = get_entry(name)
    unknown = sorted(set(overrides) - set(model_options(name)))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; valid: {model_options(name)}")
    return entry.load().from_context(ctx, name=name, **(entry.options | overrides))


register(
    "fm-teacher",
    "baselines.flow_matching:FlowMatchingGenerator",
    "rectified-flow teacher, Heun sampler at its full step count",
    solver="heun",
    steps=16,
)
register(
    "fm-teacher-4",
    "baselines.flow_matching:FlowMatchingGenerator",
    "the same rectified-flow teacher sampled with 4 Euler steps",
    solver="euler",
    steps=4,
)
register(
    "ntm",
    "baselines.ntm:NTMGenerator",
    "Normalizing Trajectory Model: 4 exact conditional-flow steps, one transporter inverse",
    transporter=True,
)
register(
    "ntm-no-transporter",
    "baselines.ntm:NTMGenerator",
    "NTM with f_T = id: 4-step Gaussian diffusion with learned variance (the Gaussian bottleneck)",
    transporter=False,
)
register(
    "ntm-8",
    "baselines.ntm:NTMGenerator",
    "the `ntm` weights sampled and scored at 8 steps (needs step_counts with 8 in the preset)",
    shares="ntm",
    transporter=True,
    sample_steps=8,
)
register(
    "ntm-eta0.5",
    "baselines.ntm:NTMGenerator",
    "the `ntm` weights with the eta = 0.5 u-space sampler (half the fresh noise; ancestral is eta = 1)",
    shares="ntm",
    transporter=True,
    eta=0.5,
)
register(
    "ntm-eta0",
    "baselines.ntm:NTMGenerator",
    "the `ntm` weights with the deterministic eta = 0 u-space sampler (DDIM-like from the step's mean)",
    shares="ntm",
    transporter=True,
    eta=0.0,
)
register(
    "ntm-scratch",
    "baselines.ntm:NTMGenerator",
    "NTM trained from scratch (no teacher) on its own budget, [train.ntm_scratch]",
    transporter=True,
    recipe="ntm_scratch",
)
register(
    "ntm-fast",
    "baselines.ntm:NTMFastGenerator",
    "NTM sampled with K predictor passes + its self-distilled denoiser (no transporter inverse)",
    shares="ntm",
)
register(
    "ntm-diffusers",
    "baselines.ntm_diffusers:NTMDiffusersGenerator",
    "NTM fine-tuned from a local SD3-family diffusers pipeline (init = \"diffusers:PATH\") in its VAE latent space",
)
register(
    "diffusers-latent-flow",
    "baselines.ntm_diffusers:DiffusersLatentFlowGenerator",
    "the pipeline ntm-diffusers starts from, in the same latent space: Euler + CFG, ODE NLL of the latent",
)
register(
    "consistency",
    "baselines.consistency:ConsistencyGenerator",
    "LCM-style consistency distillation of the teacher (CFG-2 targets), multistep sampling",
    steps=4,
)
register(
    "consistency-ct",
    "baselines.consistency:ConsistencyGenerator",
    "consistency training without a teacher (re-noised data targets), multistep sampling",
    steps=4,
    method="ct",
)
register(
    "progressive",
    "baselines.distilled:DistilledGenerator",
    "progressive distillation 16 -> 8 -> 4 Euler steps, guidance distilled in the first stage",
    steps=4,
    start_steps=16,
)
register(
    "reflow",
    "baselines.distilled:DistilledGenerator",
    "rectified-flow reflow on the guided teacher's ODE pairs, Euler sampling",
    steps=4,
    method="reflow",
)
register(
    "add",
    "baselines.adversarial:AdversarialGenerator",
    "adversarial diffusion distillation (hinge GAN on frozen teacher features + score distillation)",
    steps=4,
)
for _name, _description in {
    "lcm": "LCM-Dreamshaper-v7 from a local folder: 4 LCM steps, guidance 8 embedded",
    "lcm-lora": "SDXL + LCM-LoRA from local folders: 4 LCM steps, no CFG",
    "tcd": "SDXL + TCD LoRA from local folders: 4 TCD steps, eta 0.3",
    "sdxl-turbo": "SDXL-Turbo (ADD) from a local folder: 4 steps at 512 px, no CFG",
    "sdxl-lightning": "SDXL-Lightning 4-step from local folders: Euler, trailing timesteps",
    "sd35-turbo": "SD3.5 Large Turbo from a local folder: 4 flow-matching Euler steps, no CFG",
    "flux-schnell": "FLUX.1 [schnell] from a local folder: 4 steps, no CFG",
}.items():
    register(_name, "baselines.pretrained:PretrainedGenerator", _description, recipe=_name)
