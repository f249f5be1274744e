"""The runner: build each model in a preset's context, run each suite per seed, write records."""

from __future__ import annotations

import os
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
from benchmarks.runlog import PieceClock, RunLog, duration
from benchmarks.suites import NotApplicable, Suite, SuiteResult, get_suite
from benchmarks.worlds import get_world
from ntm import distributed

console = Console(stderr=True)


def resolve_device(name: str) -> torch.device:
    """The torch device `name` means here; with several processes plain "cuda" is each rank's own GPU.

    `name` is one of cpu, cuda, cuda:N, mps or auto (cuda if there is a GPU, else cpu); anything else is a
    ValueError naming those forms, as is a device this machine lacks."""
    index = name[len("cuda:"):] if isinstance(name, str) and name.startswith("cuda:") else None
    if name not in ("cpu", "cuda", "mps", "auto") and not (index and index.isascii() and index.isdigit()):
        raise ValueError(
            f"device {name!r} is not a device; use one of: cpu, cuda, cuda:N (N a GPU index, e.g. cuda:1), mps, auto"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} GPU(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of those, or cuda"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for but MPS (Apple GPU) is not available here; use --device cpu")
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


def share_checkpoints(folder: Path, shared: Path) -> Path:
    """`folder` (created if missing) with its `checkpoints` a relative link to `shared`: results folders of one
    study (ablation rows, scaling arms, learning-curve steps) train and find each model once."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "checkpoints"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(os.path.relpath(shared, folder))
    return folder


def link_cached(source: Path, shared: Path) -> Path:
    """Link every finished model folder of the checkpoint folder `source` (and its snapshots) into `shared`,
    so a study reuses a results folder's trained models instead of training them again; returns `shared`."""
    shared.mkdir(parents=True, exist_ok=True)
    for folder in Path(source).resolve().glob("*"):
        if folder.is_dir() and not folder.name.endswith(".partial") and not (shared / folder.name).exists():
            (shared / folder.name).symlink_to(folder)
    return shared


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
    clock = PieceClock(len(models) * len(suites) * len(preset.seeds))  # from here: builds count as elapsed
    ctx = build_context(preset, out_dir, device, progress)
    world, out_dir = ctx.world, Path(out_dir)
    store = RecordStore(out_dir / "records")
    check_suite_versions(store, suites)
    ensure_writable(out_dir)
    proto = protocol(str(ctx.device))
    if preset.overrides:  # command-line overrides of the preset file, beside the commit they ran under
        proto["overrides"] = list(preset.overrides)
    log = RunLog(out_dir, console, enabled=main)

    def say(message: str, style: str | None = None, shown: bool = True) -> None:
        """Print `message` (rank 0; progress lines only with `progress`) and append it to OUT/run.log."""
        if main and shown:
            console.print(message, style=style, markup=False)
        log.write(message)

    say(f"run of preset {preset.name} (pid {os.getpid()}, device {ctx.device}): {len(models)} model(s) x "
        f"{len(suites)} suite(s) x {len(preset.seeds)} seed(s) = {clock.total} pieces", "dim", progress)
    written = []
    try:
        for i, name in enumerate(models, 1):
            say(f"model {i} of {len(models)}: {name} (elapsed {duration(clock.elapsed())})", "bold", progress)
            built = time.perf_counter()
            generator = CheckedGenerator(build(name, ctx, **preset.options_for(name)), world)
            log.write(f"{name}: built in {time.perf_counter() - built:.1f} s")
            for suite in suites:
                for seed in preset.seeds:
                    piece = f"{name} / {suite.name} / seed {seed}"
                    key = store.key(generator.spec, suite.name, suite.version, seed)
                    if distributed.broadcast(store.has(key)):  # rank 0's answer: every rank runs the piece or none
                        clock.finished(None)
                        say(f"{piece}: recorded, skipped", "dim")
                        log.start()
                        continue
                    say(clock.piece_line(piece), "dim", progress)
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
                    new = store.write(key, result.rows, summary, result.artifacts, replace=False)
                    clock.finished(time.perf_counter() - start)
                    log.start()
                    if not new:
                        say(f"{piece}: recorded by another run meanwhile", "dim")
                        continue
                    written.append(summary)
                    say(f"{piece}: {_headline(result.metrics)}")
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):  # not an error (docs/errors.md): the next run resumes
            log.start()
            log.write(f"interrupted after {clock.done} of {clock.total} pieces, elapsed {duration(clock.elapsed())}")
        elif log.started:
            log.write(f"stopped by {type(err).__name__} after {clock.done} of {clock.total} pieces: {err}")
        else:
            log.discard()  # a bad input stopped it before any piece: the folder stays as it was
        raise
    log.start()
    say(clock.summary_line(), "dim", progress)
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


HEADLINE = (
    "geneval_overall", "geneval_owlv2_overall", "nll_bpd", "fid_evalclip", "fid_inception", "kid_evalclip",
    "kid_inception", "clipscore", "img_per_s", "not_applicable",
)


def _headline(metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k in HEADLINE}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
