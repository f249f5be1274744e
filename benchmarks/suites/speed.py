"""Throughput: images/s of `sample()` at the model's own step count, and likelihood evaluations/s.

One fixed batch (the captions and images of the first `batch_size` held-out scenes, seeded per
item) is timed end to end: `warmup` untimed calls, then `repeats` timed ones, each bracketed by
`time.perf_counter()` and, when CUDA is in use, `torch.cuda.synchronize()` so queued kernels
are counted. The reported rate is batch / median call time (the median resists a stray slow
call). Every call's time is kept in the rows. It measures; it never judges a speed.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from baselines.base import Generator
from benchmarks.suites.base import Suite, SuiteResult, dequantise, item_seed


@dataclass(frozen=True)
class SpeedOptions:
    batch_size: int = 16
    repeats: int = 3
    warmup: int = 1


def _synchronize() -> None:
    """Wait for queued CUDA work; a no-op unless this process has used CUDA."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[list[float], list[float], Any]:
    """Wall-clock seconds of `warmup` then `repeats` calls of `fn`; returns (warmup s, timed s, last output)."""
    times: list[float] = []
    output = None
    with torch.no_grad():
        for _ in range(warmup + repeats):
            _synchronize()
            start = time.perf_counter()
            output = fn()
            _synchronize()
            times.append(time.perf_counter() - start)
    return times[:warmup], times[warmup:], output


def device_name(images: torch.Tensor) -> str:
    """Where the samples were computed, with the accelerator's or CPU's name.

    The images' own device, or, for adapters that hand back CPU images after GPU work (diffusers
    pipelines), the current CUDA device whenever this process has used CUDA.
    """
    if images.device.type == "cuda":
        return f"{images.device} ({torch.cuda.get_device_name(images.device)})"
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()})"


class SpeedSuite(Suite):
    """Images/s at the model's step count, its NFE, and likelihood evaluations/s, on one fixed batch."""

    name = "speed"
    version = "1"
    Options = SpeedOptions

    def run(self, generator: Generator, world, seed: int, progress: bool = True) -> SuiteResult:
        o = self.options
        if o.batch_size < 1 or o.repeats < 1 or o.warmup < 0:
            raise ValueError(f"speed needs batch_size >= 1, repeats >= 1 and warmup >= 0, got {o}")
        batch = world.batch(list(range(o.batch_size)), split="test")
        prompts, seeds = list(batch.captions), [item_seed(seed, i) for i in range(o.batch_size)]
        warm, timed, images = time_calls(lambda: generator.sample(prompts, seeds), o.repeats, o.warmup)
        rows = _rows("sample", warm, timed, o.batch_size)
        metrics: dict[str, Any] = {
            "img_per_s": o.batch_size / statistics.median(timed),
            "nfe": generator.spec.nfe,
            "steps": generator.spec.steps,
            "nll_per_s": None,
            "speed_images": o.batch_size,
            "device": device_name(images),
            "threads": torch.get_num_threads(),
        }
        if generator.capabilities.likelihood:
            # the nll suite's input: held-out pixels with per-item uniform dequantisation noise
            x = dequantise(batch.images, seeds)
            warm, timed, _ = time_calls(lambda: generator.log_likelihood(x, prompts, seeds), o.repeats, o.warmup)
            rows += _rows("log_likelihood", warm, timed, o.batch_size)
            metrics["nll_per_s"] = o.batch_size / statistics.median(timed)
        return SuiteResult(rows, metrics)


def _rows(call: str, warm: list[float], timed: list[float], batch: int) -> list[dict]:
    """One row per call, warm-up calls flagged (they are not in the median)."""
    calls = [(True, s) for s in warm] + [(False, s) for s in timed]
    return [
        {"call": call, "index": i, "warmup": w, "seconds": s, "batch": batch, "per_s": batch / s}
        for i, (w, s) in enumerate(calls)
    ]
