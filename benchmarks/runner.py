"""The runner: build each model in a preset's context, run each suite per seed, write records."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

import benchmarks.reference  # noqa: F401  (registers the reference rows)
from baselines.base import BuildContext, Generator, GeneratorSpec
from baselines.registry import build, get_entry
from benchmarks.presets import Preset
from benchmarks.records import RecordStore, ensure_writable, protocol
from benchmarks.suites import NotApplicable, Suite, SuiteResult, get_suite
from benchmarks.worlds import get_world
from ntm import distributed

console = Console(stderr=True)


def resolve_device(name: str) -> torch.device:
    """The torch device `name` means here; with several processes plain "cuda" is each rank's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None and distributed.world_size() > 1:
        if not distributed.gpu_per_process():
            raise ValueError(
                f"more processes were started on this machine than it has GPUs ({torch.cuda.device_count()}); "
                "start at most one process per GPU (torchrun --nproc-per-node), or use --device cpu"
            )
        device = torch.device("cuda", distributed.local_rank())
    return device


def build_context(preset: Preset, out_dir: Path, device: str | None = None, progress: bool = True) -> BuildContext:
    """The world, device, budgets and checkpoint cache (OUT/checkpoints) models of `preset` are built in."""
    world = get_world(preset.world, preset.resolution, **preset.world_options)
    dev = resolve_device(device or preset.device)
    torch.set_float32_matmul_precision("high")
    return BuildContext(world, dev, Path(out_dir) / "checkpoints", preset.backbone, preset.train, progress)


def train(preset: Preset, out_dir: Path, model: str, device: str | None = None, progress: bool = True, **options) -> Generator:
    """Build `model` as `preset` configures it (training its weights if not cached), with `options` on top.

    With several processes every rank calls this and trains its share (`ntm.train.fit`); rank 0 shows progress."""
    get_entry(model)
    ctx = build_context(preset, out_dir, device, progress and distributed.is_main())
    ensure_writable(out_dir)
    return build(model, ctx, **(preset.options_for(model) | options))


def evaluate(
    preset: Preset,
    out_dir: Path,
    models: Sequence[str] | None = None,
    suites: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Score `models` (default: the preset's) on `suites` for every seed; returns the new summaries.

    Every name, the folder's suite versions and its writability are checked before any work starts.
    A (model spec, suite version, seed) piece whose record exists is skipped, so re-running a finished
    command does nothing and an interrupted one picks up where it stopped; a piece another run recorded
    meanwhile is not written twice. Every generator's images are checked against the protocol.

    With several processes (`ntm.distributed`) every rank calls this: the models train together,
    each suite's batches are shared out (`suites.base.in_batches`), whether a piece is recorded is rank 0's
    answer, and rank 0 alone writes records, prints and shows progress; the other ranks return [].
    """
    models = list(models or preset.models)
    suites = [get_suite(name, preset.suite_options.get(name)) for name in (suites or preset.suites)]
    for name in models:
        get_entry(name)
    main = distributed.is_main()
    progress = progress and main
    ctx = build_context(preset, out_dir, device, progress)
    world, out_dir = ctx.world, Path(out_dir)
    store = RecordStore(out_dir / "records")
    check_suite_versions(store, suites)
    ensure_writable(out_dir)
    proto = protocol(str(ctx.device))
    written = []
    for name in models:
        generator = CheckedGenerator(build(name, ctx, **preset.options_for(name)), world)
        for suite in suites:
            for seed in preset.seeds:
                key = store.key(generator.spec, suite.name, suite.version, seed)
                if distributed.broadcast(store.has(key)):  # rank 0's answer: every rank runs the piece or none
                    if main:
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
                    "written_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                }
                if not main:
                    continue
                if not store.write(key, result.rows, summary, result.artifacts, replace=False):
                    console.print(f"[dim]{name} / {suite.name} / seed {seed}: recorded by another run meanwhile[/dim]")
                    continue
                written.append(summary)
                console.print(f"{name} / {suite.name} / seed {seed}: {_headline(result.metrics)}")
    return written


def check_suite_versions(store: RecordStore, suites: Sequence[Suite]) -> None:
    """Refuse to add records to a folder holding records of another version of the same suite."""
    for suite in suites:
        other = store.other_versions(suite.name, suite.version)
        if other:
            found = "; ".join(f"v{v}: {len(names)} record(s), e.g. {names[0]}" for v, names in sorted(other.items()))
            raise ValueError(
                f"{store.root} holds {suite.name!r} records of another suite version ({found}) but this code's "
                f"{suite.name!r} is v{suite.version}; versions are not comparable. Use a new --out folder, or "
                f"move the old {suite.name}.v* records out of {store.root}."
            )


def expected_image_shape(spec: GeneratorSpec, world: Any) -> tuple[int, int, int]:
    """(C, H, W) a generator must return: the world's, or RGB at the height and width its spec declares
    (published models sample at their own size)."""
    settings = spec.settings
    if "height" in settings and "width" in settings:
        return 3, int(settings["height"]), int(settings["width"])
    return world.channels, world.resolution, world.resolution


class CheckedGenerator(Generator):
    """A generator whose `sample` output is checked against the protocol: uint8 (len(prompts), C, H, W)."""

    def __init__(self, inner: Generator, world: Any) -> None:
        self.inner, self.spec, self.capabilities = inner, inner.spec, inner.capabilities
        self.shape = expected_image_shape(inner.spec, world)

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        images = self.inner.sample(prompts, seeds) if steps is None else self.inner.sample(prompts, seeds, steps)
        shape = (len(prompts), *self.shape)
        got = tuple(images.shape) if isinstance(images, Tensor) else None
        if got != shape or images.dtype != torch.uint8:
            what = f"{images.dtype} {got}" if got is not None else type(images).__name__
            raise ValueError(
                f"{self.spec.name}.sample returned {what} for {len(prompts)} prompts; the protocol is a uint8 tensor "
                f"(N, C, H, W) = {shape}. Fix the adapter's sample() (channels first, this world's size)."
            )
        return images

    def log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> Any:
        return self.inner.log_likelihood(x, prompts, seeds)

    def trajectory_log_likelihood(self, x: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> Any:
        return self.inner.trajectory_log_likelihood(x, prompts, seeds)


HEADLINE = ("geneval_overall", "nll_bpd", "fid", "kid", "clipscore", "img_per_s", "not_applicable")


def _headline(metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k in HEADLINE}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
