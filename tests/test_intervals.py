"""Bootstrap intervals: GenEval-style over prompts (one model, paired), FID over generated images, tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines.base import GeneratorSpec
from benchmarks.fid import fid_bootstrap, fid_from_stats, gaussian_stats
from benchmarks.intervals import geneval_interval, paired_geneval
from benchmarks.records import RecordStore
from benchmarks.tables import GENEVAL_TASKS, write_tables


def rows(correct: dict[tuple[str, int], list[bool]], seed_base: int = 0) -> list[dict]:
    """GenEval-style rows: (tag, prompt index) -> each image's correctness."""
    out = []
    for (tag, p), flags in sorted(correct.items()):
        for flag in flags:
            i = len(out)
            out.append({"item": i, "tag": tag, "prompt_index": p, "prompt": f"{tag} {p}", "seed": seed_base + i,
                        "correct": flag})
    return out


def test_geneval_interval_of_two_prompts_spans_the_resampled_extremes():
    # one task, prompt 0 all wrong, prompt 1 all right: a draw is 0, 0.5 or 1 (p = 1/4, 1/2, 1/4)
    r = rows({("colors", 0): [False] * 4, ("colors", 1): [True] * 4})
    got = geneval_interval(r, draws=4000, seed=0)
    assert got["colors"].value == 0.5 and got["overall"].value == 0.5
    assert (got["colors"].lo, got["colors"].hi) == (0.0, 1.0)
    perfect = geneval_interval(rows({("colors", p): [True] * 4 for p in range(5)}))
    assert (perfect["overall"].lo, perfect["overall"].value, perfect["overall"].hi) == (1.0, 1.0, 1.0)


def test_geneval_interval_is_stratified_by_task_and_narrows_with_prompts():
    rng = np.random.default_rng(0)

    def make(prompts: int) -> list[dict]:
        return rows({(t, p): list(rng.random(4) < 0.3 + 0.1 * k) for k, t in enumerate(GENEVAL_TASKS[:3])
                     for p in range(prompts)})

    small, large = geneval_interval(make(8)), geneval_interval(make(128))
    for got in (small, large):
        assert set(got) == {"overall", *GENEVAL_TASKS[:3]}
        assert got["overall"].value == pytest.approx(np.mean([got[t].value for t in GENEVAL_TASKS[:3]]))
        assert all(i.lo <= i.value <= i.hi for i in got.values())
    width = {n: g["overall"].hi - g["overall"].lo for n, g in (("small", small), ("large", large))}
    assert width["large"] < width["small"] / 2.5  # 16x the prompts: about a quarter of the width
    with pytest.raises(ValueError, match="no GenEval-style rows"):
        geneval_interval([])


def test_paired_difference_cancels_shared_prompt_difficulty():
    rng = np.random.default_rng(1)
    hard = {(t, p): rng.random() for t in GENEVAL_TASKS for p in range(16)}
    base = {k: list(rng.random(4) < v) for k, v in hard.items()}
    a_rows, b_rows = rows(base), rows(base)
    same = paired_geneval([(a_rows, b_rows)])
    assert all((i.lo, i.value, i.hi) == (0.0, 0.0, 0.0) for i in same.values())
    better = rows({k: [True] + v[1:] for k, v in base.items()})  # A fixes the first image of every prompt
    got = paired_geneval([(better, b_rows)])
    expected = np.mean([np.mean([1 - b[0] for (t, _), b in base.items() if t == task]) / 4 for task in GENEVAL_TASKS])
    assert got["overall"].value == pytest.approx(expected) and got["overall"].lo > 0
    alone = geneval_interval(better)["overall"]
    assert got["overall"].hi - got["overall"].lo < (alone.hi - alone.lo) / 2  # pairing narrows the interval
    pooled = paired_geneval([(better, b_rows), (a_rows, b_rows)])  # two pairs: the mean of the differences
    assert pooled["overall"].value == pytest.approx(expected / 2)
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_geneval([(a_rows, rows(base, seed_base=7))])


def test_fid_bootstrap_brackets_the_point_and_narrows_with_images():
    rng = np.random.default_rng(0)
    reference = gaussian_stats(rng.normal(size=(512, 8)))

    def interval(n: int) -> tuple[float, float, float]:
        g = rng.normal(0.3, 1.2, size=(n, 8))
        return fid_from_stats(gaussian_stats(g), reference), *fid_bootstrap(g, reference, draws=400, seed=0)

    point, lo, hi = interval(128)
    assert lo < point < hi
    big_point, big_lo, big_hi = interval(2048)
    assert big_hi - big_lo < (hi - lo) / 2.5
    g = rng.normal(size=(64, 8))
    assert fid_bootstrap(g, reference, draws=50, seed=3) == fid_bootstrap(g, reference, draws=50, seed=3)
    with pytest.raises(ValueError, match="draws"):
        fid_bootstrap(g, reference, draws=1)


def _write(store: RecordStore, model: str, suite: str, metrics: dict, item_rows: list[dict], seed: int = 0) -> None:
    spec = GeneratorSpec(model, "ntm", 4, 8, 1000, "w")
    key = store.key(spec, suite, "1", seed)
    summary = {
        "record": key.stem, "model": model, "family": spec.family, "spec": spec.to_dict(), "spec_hash": key.spec_hash,
        "suite": suite, "suite_version": "1", "suite_options": {}, "seed": seed, "preset": "test", "world": "shapes",
        "resolution": 16, "metrics": metrics, "wall_s": 1.0, "protocol": {"commit": "c", "packages": {}, "device": "cpu"},
    }
    store.write(key, item_rows, summary, {})


def test_tables_carry_geneval_intervals_from_rows_and_read_old_metric_names(tmp_path):
    store = RecordStore(tmp_path / "records")
    r = rows({("colors", p): [p % 3 == 0, p % 2 == 0] for p in range(10)} | {("counting", p): [p < 4] for p in range(6)})
    tasks = {t: np.mean([x["correct"] for x in r if x["tag"] == t]) for t in ("colors", "counting")}
    _write(store, "ntm", "geneval", {"geneval_overall": float(np.mean(list(tasks.values())))}
           | {f"geneval_{t}": float(v) for t, v in tasks.items()}, r)
    _write(store, "ntm", "fid", {"fid": 0.5, "kid": 0.01, "fid_features": "eval-clip", "fid_floor": 0.1}, [])
    _write(store, "ntm", "geneval-real", {"geneval_overall": 0.25, "geneval_colors": 0.25}, r)
    frame = write_tables(tmp_path).set_index("model")
    expected = geneval_interval(r)
    assert frame.loc["ntm", "geneval_overall_lo"] == expected["overall"].lo
    assert frame.loc["ntm", "geneval_colors_hi"] == expected["colors"].hi
    # old names: fid -> fid_evalclip (by fid_features), geneval-real's geneval_* -> geneval_owlv2_*
    assert frame.loc["ntm", "fid_evalclip"] == 0.5 and frame.loc["ntm", "kid_evalclip"] == 0.01
    assert frame.loc["ntm", "geneval_owlv2_overall"] == 0.25 and "geneval_owlv2_overall_lo" in frame.columns
    assert math.isnan(frame.loc["ntm", "fid_evalclip_lo"]) if "fid_evalclip_lo" in frame.columns else True
    md = (tmp_path / "summary.md").read_text()
    assert f"[{expected['overall'].lo:.2f}, {expected['overall'].hi:.2f}]" in md


def test_fid_bootstrap_point_agrees_with_the_frechet_distance_in_both_gram_orders():
    # n < d (the n x n Gram) and n > d (the d x d one): with every draw the identity resample (seeded so the
    # interval degenerates only if the code ignores the resampling), the shift makes lo <= point <= hi
    rng = np.random.default_rng(2)
    for n, d in ((10, 40), (200, 6)):
        reference = gaussian_stats(rng.normal(size=(300, d)))
        g = rng.normal(0.2, 1.1, size=(n, d))
        point = fid_from_stats(gaussian_stats(g), reference)
        lo, hi = fid_bootstrap(g, reference, draws=200, seed=0)
        assert lo <= point <= hi and hi - lo > 0
