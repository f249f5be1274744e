"""Bootstrap intervals over prompts for GenEval-style scores, one model's and a paired difference of two.

A GenEval-style score is the mean over tasks of each task's fraction of correct images. The prompts of a
task are a sample of the prompts it could have had, and a prompt's images share that prompt's difficulty, so
the bootstrap resamples prompts within each task (stratified), each with all its images (every seed's), and
recomputes the score. The percentile interval of `draws` such scores (numpy default_rng(seed)) is reported.

A paired difference (`paired_geneval`) resamples the same prompts for both models, so the prompt difficulty
they share cancels: the interval is much narrower than the two models' own intervals suggest. Several pairs
(e.g. two training seeds, each model scored on the same prompts and sample seeds) are averaged item by item;
the training seeds themselves are not resampled, so the interval covers prompt (and image) sampling only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DRAWS = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float


def _prompt_sums(values: dict[tuple[str, int], list[float]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (per-prompt sum of values, per-prompt image count), prompts in a fixed order."""
    out: dict[str, tuple[list[float], list[int]]] = {}
    for (tag, _), vs in sorted(values.items()):
        sums, counts = out.setdefault(tag, ([], []))
        sums.append(float(np.sum(vs)))
        counts.append(len(vs))
    return {t: (np.array(s), np.array(c, dtype=float)) for t, (s, c) in out.items()}


def _bootstrap(values: dict[tuple[str, int], list[float]], draws: int, seed: int, level: float) -> dict[str, Interval]:
    """Intervals of each task's mean and of the mean over tasks ("overall"), prompts resampled within tasks."""
    if not values:
        raise ValueError("no GenEval-style rows to bootstrap")
    if draws < 2:
        raise ValueError(f"bootstrap draws must be >= 2, got {draws}")
    by_tag = _prompt_sums(values)
    rng = np.random.default_rng(seed)
    point, drawn = {}, {}
    for tag, (sums, counts) in by_tag.items():  # sorted tags: a fixed order of random draws
        point[tag] = sums.sum() / counts.sum()
        pick = rng.integers(0, len(sums), size=(draws, len(sums)))
        drawn[tag] = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    point["overall"] = float(np.mean([point[t] for t in by_tag]))
    drawn["overall"] = np.mean([drawn[t] for t in by_tag], axis=0)
    q = [(1 - level) / 2, (1 + level) / 2]
    return {k: Interval(float(point[k]), *map(float, np.quantile(drawn[k], q))) for k in point}


def geneval_interval(
    rows: Sequence[dict], draws: int = DRAWS, seed: int = 0, level: float = LEVEL
) -> dict[str, Interval]:
    """`level` intervals of "overall" and each task for one model's GenEval-style rows (any number of seeds:
    a prompt's images from every seed are resampled together). Rows need `tag`, `prompt_index`, `correct`."""
    values: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        values.setdefault((r["tag"], r["prompt_index"]), []).append(float(r["correct"]))
    return _bootstrap(values, draws, seed, level)


def paired_geneval(
    pairs: Sequence[tuple[Sequence[dict], Sequence[dict]]], draws: int = DRAWS, seed: int = 0, level: float = LEVEL
) -> dict[str, Interval]:
    """The difference A - B of "overall" and each task, averaged over `pairs` of rows, with a paired interval.

    Within a pair both models must hold the same items (item index, prompt, sample seed), and every pair the
    same prompts; otherwise the rows cannot be paired and ValueError says so."""
    if not pairs:
        raise ValueError("no pairs of rows to compare")
    ref = {r["item"]: r for r in pairs[0][0]}
    diffs: dict[int, list[float]] = {}
    for a_rows, b_rows in pairs:
        a, b = ({r["item"]: r for r in rs} for rs in (a_rows, b_rows))
        if not (a.keys() == b.keys() == ref.keys()) or any(
            (a[i]["prompt"], a[i]["seed"]) != (b[i]["prompt"], b[i]["seed"]) or a[i]["prompt"] != ref[i]["prompt"]
            for i in ref
        ):
            raise ValueError(
                "the two models' rows do not hold the same prompts and sample seeds item by item, so they cannot "
                "be paired: score both with the same suite options and seeds"
            )
        for i in ref:
            diffs.setdefault(i, []).append(float(a[i]["correct"]) - float(b[i]["correct"]))
    values: dict[tuple[str, int], list[float]] = {}
    for i, r in ref.items():
        values.setdefault((r["tag"], r["prompt_index"]), []).append(float(np.mean(diffs[i])))
    return _bootstrap(values, draws, seed, level)
