"""The runner: build each model in a preset's context, run each suite per seed, write records."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console

import benchmarks.reference  # noqa: F401  (registers the reference rows)
from baselines.base import BuildContext, Generator
from baselines.registry import build, get_entry
from benchmarks.presets import Preset
from benchmarks.records import RecordStore, protocol
from benchmarks.suites import NotApplicable, SuiteResult, get_suite
from benchmarks.worlds import get_world

console = Console(stderr=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    return device


def build_context(preset: Preset, out_dir: Path, device: str | None = None, progress: bool = True) -> BuildContext:
    """The world, device, budgets and checkpoint cache (OUT/checkpoints) models of `preset` are built in."""
    world = get_world(preset.world, preset.resolution)
    dev = resolve_device(device or preset.device)
    torch.set_float32_matmul_precision("high")
    return BuildContext(world, dev, Path(out_dir) / "checkpoints", preset.backbone, preset.train, progress)


def train(preset: Preset, out_dir: Path, model: str, device: str | None = None, progress: bool = True, **options) -> Generator:
    """Build `model` as `preset` configures it (training its weights if not cached), with `options` on top."""
    get_entry(model)
    return build(model, build_context(preset, out_dir, device, progress), **(preset.model_options.get(model, {}) | options))


def evaluate(
    preset: Preset,
    out_dir: Path,
    models: Sequence[str] | None = None,
    suites: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Score `models` (default: the preset's) on `suites` for every seed; returns the new summaries.

    Every name is checked before any work starts. A (model spec, suite version, seed) piece whose
    record exists is skipped, so re-running a finished command does nothing and an interrupted
    one picks up where it stopped.
    """
    models = list(models or preset.models)
    suites = [get_suite(name, preset.suite_options.get(name)) for name in (suites or preset.suites)]
    for name in models:
        get_entry(name)
    ctx = build_context(preset, out_dir, device, progress)
    world, out_dir = ctx.world, Path(out_dir)
    store = RecordStore(out_dir / "records")
    proto = protocol(str(ctx.device))
    written = []
    for name in models:
        generator = build(name, ctx, **preset.model_options.get(name, {}))
        for suite in suites:
            for seed in preset.seeds:
                key = store.key(generator.spec, suite.name, suite.version, seed)
                if store.has(key):
                    console.print(f"[dim]{name} / {suite.name} / seed {seed}: recorded, skipped[/dim]")
                    continue
                start = time.perf_counter()
                try:
                    result = suite.run(generator, world, seed, progress)
                except NotApplicable as reason:
                    result = SuiteResult([], {"not_applicable": str(reason)})
                summary = {
                    "record": key.stem, "model": name, "family": generator.spec.family,
                    "spec": generator.spec.to_dict(), "spec_hash": key.spec_hash,
                    "suite": suite.name, "suite_version": suite.version, "suite_options": suite.options.__dict__,
                    "seed": seed, "preset": preset.name, "world": preset.world, "resolution": preset.resolution,
                    "metrics": result.metrics, "wall_s": time.perf_counter() - start, "protocol": proto,
                }
                store.write(key, result.rows, summary, result.artifacts)
                written.append(summary)
                console.print(f"{name} / {suite.name} / seed {seed}: {_headline(result.metrics)}")
    return written


HEADLINE = ("geneval_overall", "nll_bpd", "fid", "kid", "clipscore", "img_per_s", "not_applicable")


def _headline(metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k in HEADLINE}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
