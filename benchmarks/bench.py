"""Side-by-side speed ratios of NTM, measured in one run on one batch of held-out scenes.

Three comparisons, each a speed-up r = (time of the baseline) / (time of NTM's way) on the same inputs:

- likelihood: NTM's exact trajectory NLL (one forward trajectory per image, a single batched pass over
  the K steps) and its data bound (IWAE over the preset's `bound_samples` forward chains) against the
  flow-matching teacher's ODE NLL (its preset solver steps and Hutchinson probes);
- sampling at 4 steps: `ntm-fast` (K = 4 predictor passes + the distilled denoiser) against `consistency`
  (4 multistep consistency steps);
- sampling: `ntm-fast` against `ntm` (whose last step inverts the transporter autoregressively).

Every call is timed with `time.perf_counter()` bracketed by CUDA synchronisation, after `warmup` untimed
rounds. The calls are interleaved: each round times every call once, starting one later in the list each
round, so drift of the machine (clocks, other jobs) is shared by the calls compared; r is the median over
rounds of the per-round ratio. Models come from the registry with the preset's options and budgets,
trained into (or read from) OUT/checkpoints as `reproduce` does.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from baselines.registry import build
from benchmarks.presets import Preset
from benchmarks.records import atomic_write_text, ensure_writable
from benchmarks.runner import build_context
from benchmarks.suites.base import dequantise, item_seed
from benchmarks.suites.speed import device_name

TEACHERS = ("fm-teacher", "fm-teacher-4")
STEPS = 4


@dataclass(frozen=True)
class Comparison:
    """`fast` against `baseline`: r = median over rounds of time(baseline) / time(fast)."""

    name: str
    fast: str
    baseline: str


COMPARISONS = (
    Comparison("exact trajectory NLL vs teacher ODE NLL", "ntm trajectory_log_likelihood", "teacher log_likelihood"),
    Comparison("data bound (IWAE) vs teacher ODE NLL", "ntm log_likelihood", "teacher log_likelihood"),
    Comparison("4-step sampling: ntm-fast vs consistency", "ntm-fast sample", "consistency sample"),
    Comparison("sampling: ntm-fast vs ntm", "ntm-fast sample", "ntm sample"),
)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_times(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each call in `repeats` timed rounds after `warmup` untimed ones; round r starts at call r."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"bench needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for round_ in range(warmup + repeats):
            for i in range(len(names)):
                name = names[(round_ + i) % len(names)]
                _synchronize()
                start = time.perf_counter()
                calls[name]()
                _synchronize()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times


def speedup(fast: list[float], baseline: list[float]) -> float:
    """Median over rounds of baseline / fast (paired by round)."""
    if len(fast) != len(baseline) or not fast:
        raise ValueError(f"need paired timings, got {len(fast)} and {len(baseline)}")
    return statistics.median(b / f for f, b in zip(fast, baseline, strict=True))


def teacher_name(preset: Preset) -> str:
    """The teacher row whose likelihood settings the preset uses: the first of TEACHERS it lists."""
    return next((name for name in TEACHERS if name in preset.models), TEACHERS[0])


def run_bench(
    preset: Preset, out: Path, device: str | None = None, batch_size: int = 16, repeats: int = 5, warmup: int = 1,
    seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Build the four models, time every call on one batch, write OUT/bench.json and OUT/bench.md; return the report."""
    if batch_size < 1:
        raise ValueError(f"bench needs batch_size >= 1, got {batch_size}")
    ctx = build_context(preset, out, device, progress)
    ensure_writable(out)
    teacher = teacher_name(preset)
    names = {"ntm": "ntm", "ntm-fast": "ntm-fast", "consistency": "consistency", "teacher": teacher}
    models = {role: build(name, ctx, **preset.options_for(name)) for role, name in names.items()}
    batch = ctx.world.batch(list(range(batch_size)), split="test")
    prompts, seeds = list(batch.captions), [item_seed(seed, i) for i in range(batch_size)]
    # held-out pixels with per-item uniform dequantisation, as the nll suite feeds them
    x = dequantise(batch.images, seeds)
    calls = {
        "ntm trajectory_log_likelihood": lambda: models["ntm"].trajectory_log_likelihood(x, prompts, seeds),
        "ntm log_likelihood": lambda: models["ntm"].log_likelihood(x, prompts, seeds),
        "teacher log_likelihood": lambda: models["teacher"].log_likelihood(x, prompts, seeds),
        "ntm-fast sample": lambda: models["ntm-fast"].sample(prompts, seeds, STEPS),
        "consistency sample": lambda: models["consistency"].sample(prompts, seeds, STEPS),
        "ntm sample": lambda: models["ntm"].sample(prompts, seeds),
    }
    times = interleaved_times(calls, repeats, warmup)
    report = {
        "preset": preset.name, "world": preset.world, "resolution": preset.resolution,
        "device": device_name(torch.empty(0, device=ctx.device)), "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(), "batch_size": batch_size, "repeats": repeats, "warmup": warmup,
        "seed": seed, "models": {role: models[role].spec.to_dict() for role in names},
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "times_s": times,
        "ratios": [asdict(c) | {"speedup": speedup(times[c.fast], times[c.baseline])} for c in COMPARISONS],
    }
    atomic_write_text(Path(out) / "bench.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(Path(out) / "bench.md", to_markdown(report))
    return report


def to_markdown(report: dict[str, Any]) -> str:
    """The ratios and the median call times as Markdown tables, with what was measured where."""
    lines = [
        f"# bench: {report['preset']} ({report['world']} @ {report['resolution']} px)",
        "",
        f"{report['device']}, {report['threads']} threads, torch {report['torch']}; batch {report['batch_size']}, "
        f"median of {report['repeats']} interleaved rounds after {report['warmup']} warm-up.",
        "",
        "Models: "
        + "; ".join(f"{r} = {s['name']} ({s['steps']} steps, {s['nfe']} NFE)" for r, s in report["models"].items())
        + ".",
        "",
        "| comparison | fast | baseline | speed-up (x) |",
        "|---|---|---|---|",
        *[f"| {r['name']} | {r['fast']} | {r['baseline']} | {r['speedup']:.2f} |" for r in report["ratios"]],
        "",
        "| call | median s per batch | items/s |",
        "|---|---|---|",
        *[f"| {name} | {s:.4g} | {report['batch_size'] / s:.4g} |" for name, s in report["median_s"].items()],
    ]
    return "\n".join(lines) + "\n"
