"""`ntm-bench compare`: the paired GenEval-style difference of two models, from their records alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.intervals import Interval, paired_geneval
from benchmarks.records import RecordStore
from benchmarks.tables import FEATURE_NETS, GENEVAL_SUITES, GENEVAL_TASKS, canonical_metrics

FID_METRICS = tuple(f"fid_{net}" for net in FEATURE_NETS)


@dataclass
class Comparison:
    a: str
    b: str
    folders: list[str]
    pairs: int
    differences: dict[str, dict[str, Interval]] = field(default_factory=dict)
    """metric prefix (geneval, geneval_owlv2, ...) -> "overall" / task -> A - B with its interval"""
    fid: dict[str, dict[str, tuple[float, float | None, float | None]]] = field(default_factory=dict)
    """folder -> model -> (FID, lo, hi) for each FID metric recorded, keyed "<folder>: <metric>"."""


def _current(store: RecordStore, current: list[dict], model: str) -> list[dict]:
    mine = [s for s in current if s["model"] == model]
    if not mine:
        models = sorted({s["model"] for s in current})
        raise ValueError(f"{store.root} holds no records of model {model!r}; it has: {', '.join(models) or 'none'}")
    return mine


def compare_models(folders: Sequence[Path], a: str, b: str, draws: int = 2000, seed: int = 0) -> Comparison:
    """Pair A's and B's GenEval-style rows per (folder, suite, evaluation seed) and bootstrap the difference."""
    if a == b:
        raise ValueError(f"compare needs two different models, got {a!r} twice")
    result = Comparison(a, b, [str(f) for f in folders], 0)
    pairs: dict[str, list] = {}
    for folder in folders:
        if not (Path(folder) / "records").is_dir():
            raise FileNotFoundError(f"{folder} holds no records/; give a results folder (e.g. results/tiny)")
        store = RecordStore(Path(folder) / "records")
        current, _ = store.latest()
        mine = {m: _current(store, current, m) for m in (a, b)}
        for suite, prefix in GENEVAL_SUITES.items():
            by_seed = {m: {s["seed"]: s for s in mine[m] if s["suite"] == suite} for m in (a, b)}
            for run_seed in sorted(set(by_seed[a]) & set(by_seed[b])):
                pairs.setdefault(prefix, []).append(
                    (store.rows(by_seed[a][run_seed]), store.rows(by_seed[b][run_seed]))
                )
        for m in (a, b):
            for s in mine[m]:
                metrics = canonical_metrics(s)
                for key, value in metrics.items():
                    if key in FID_METRICS and value is not None:
                        result.fid.setdefault(f"{folder}: {key}", {})[m] = (
                            value, metrics.get(f"{key}_lo"), metrics.get(f"{key}_hi"))
    if not pairs:
        raise ValueError(f"{a!r} and {b!r} share no GenEval-style record (same suite and evaluation seed) to pair")
    for prefix, found in pairs.items():
        result.differences[prefix] = paired_geneval(found, draws=draws, seed=seed)
        result.pairs = max(result.pairs, len(found))
    return result


def to_text(c: Comparison) -> str:
    lines = [f"{c.a} - {c.b}: paired over prompts, {c.pairs} pair(s) of records from {', '.join(c.folders)}"]
    for prefix, parts in c.differences.items():
        lines.append("")
        lines.append(f"{'metric':<34} {'A - B':>8}  95% interval")
        for part in ["overall", *[t for t in GENEVAL_TASKS if t in parts]]:
            d = parts[part]
            lines.append(f"{prefix + '_' + part:<34} {d.value:+8.3f}  [{d.lo:+.3f}, {d.hi:+.3f}]")
    for key, models in c.fid.items():
        shown = []
        for m in (c.a, c.b):
            if m in models:
                v, lo, hi = models[m]
                shown.append(f"{m} {v:.4f}" + (f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""))
        lines.append(f"{key}: " + "; ".join(shown))
    return "\n".join(lines) + "\n"
