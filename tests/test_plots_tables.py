"""Tables, protocol section and plots rebuilt from hand-written records."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from baselines.base import GeneratorSpec
from benchmarks.plots import geneval_per_category_figure, grid_figure, prompt_label, quality_vs_nfe_figure
from benchmarks.records import RecordStore
from benchmarks.tables import GENEVAL_TASKS, summary_frame, write_tables

PACKAGES = {"torch": "2.14.1", "numpy": "2.4.6"}
SPECS = {
    "ground-truth": GeneratorSpec("ground-truth", "reference", 0, 0, 0, "renderer"),
    "ntm": GeneratorSpec("ntm", "ntm", 4, 8, 1_000_000, "w1"),
    "consistency-1": GeneratorSpec("consistency-1", "consistency", 1, 1, 900_000, "w2"),
}


def record(
    store: RecordStore, model: str, suite: str, seed: int, metrics: dict, *, commit: str = "abc123",
    device: str = "cpu", packages: dict | None = None, version: str = "1", artifacts: dict | None = None,
) -> None:
    """Write one record exactly as the runner lays it out."""
    spec = SPECS[model]
    key = store.key(spec, suite, version, seed)
    summary = {
        "record": key.stem, "model": model, "family": spec.family, "spec": spec.to_dict(), "spec_hash": key.spec_hash,
        "suite": suite, "suite_version": version, "suite_options": {"images": 64}, "seed": seed, "preset": "test",
        "world": "shapes", "resolution": 16, "metrics": metrics, "wall_s": 1.0,
        "protocol": {"commit": commit, "packages": packages or PACKAGES, "python": "3.11.7", "device": device},
    }
    store.write(key, [{"item": 0}], summary, artifacts or {})


def geneval(overall: float) -> dict:
    """GenEval metrics whose task scores are overall + task index / 100 (so each bar is identifiable)."""
    return {"geneval_overall": overall, "geneval_images": 24} | {
        f"geneval_{t}": overall + i / 100 for i, t in enumerate(GENEVAL_TASKS)
    }


def fid(value: float, kid: float) -> dict:
    return {"fid_evalclip": value, "fid_evalclip_lo": value - 1.0, "fid_evalclip_hi": value + 2.0, "kid_evalclip": kid,
            "kid_evalclip_std": 0.0001, "fid_images": 64, "fid_feature_hash": "feat0", "fid_features": "eval-clip",
            "fid_reference": "shapes test [0, 64)", "fid_evalclip_floor": 1.25, "kid_evalclip_floor": 0.0002,
            "fid_feature_accuracy": 0.97}


def legacy_fid(value: float, kid: float) -> dict:
    """A fid record as written before metric names carried the feature network."""
    return {"fid": value, "kid": kid, "kid_std": 0.0001, "fid_images": 64, "fid_feature_hash": "feat0",
            "fid_features": "eval-clip", "fid_reference": "shapes test [0, 64)", "fid_floor": 1.25,
            "kid_floor": 0.0002, "fid_feature_accuracy": 0.97}


def uniform_store(root: Path) -> RecordStore:
    """Three models, two seeds, every suite, one commit / device / package set."""
    store = RecordStore(root / "records")
    for seed in (0, 1):
        record(store, "ground-truth", "geneval", seed, geneval(1.0))
        record(store, "ground-truth", "fid", seed, fid(0.5, 0.0))
        for model, base in (("ntm", 0.5), ("consistency-1", 0.25)):
            record(store, model, "geneval", seed, geneval(base + 0.1 * seed))
            record(store, model, "fid", seed, fid(10.0 + 2 * seed + 10 * (model == "consistency-1"), 0.00123))
            record(store, model, "clipscore", seed, {"clipscore": 25.0 + seed, "clipscore_feature_hash": "clip0"})
        record(store, "ntm", "speed", seed, {"img_per_s": 100.0 + 200 * seed, "nll_per_s": 40.0, "nfe": 8,
                                             "speed_images": 16})
        record(store, "consistency-1", "speed", seed, {"img_per_s": 2500.0, "nll_per_s": None, "nfe": 1,
                                                       "speed_images": 16})
    return store


def test_new_columns_are_means_over_seeds_with_their_std(tmp_path):
    uniform_store(tmp_path)
    frame = write_tables(tmp_path).set_index("model")
    ntm = frame.loc["ntm"]
    assert ntm["seeds"] == 2
    assert ntm["fid_evalclip"] == pytest.approx(11.0) and ntm["fid_evalclip_std"] == pytest.approx(math.sqrt(2))
    # two seeds' intervals [9, 12] and [11, 14]: the mean's half-widths shrink by sqrt(2)
    assert ntm["fid_evalclip_lo"] == pytest.approx(11 - 1 / math.sqrt(2))
    assert ntm["fid_evalclip_hi"] == pytest.approx(11 + 2 / math.sqrt(2))
    assert ntm["kid_evalclip"] == pytest.approx(0.00123) and ntm["kid_evalclip_std"] == pytest.approx(0.0)
    assert "fid" not in frame.columns and "kid" not in frame.columns
    assert ntm["clipscore"] == pytest.approx(25.5) and ntm["img_per_s"] == pytest.approx(200.0)
    assert ntm["img_per_s_std"] == pytest.approx(200 / math.sqrt(2)) and ntm["nll_per_s"] == pytest.approx(40.0)
    assert math.isnan(frame.loc["consistency-1", "nll_per_s"])  # no likelihood: n/a, never 0
    assert math.isnan(frame.loc["ground-truth", "img_per_s"])
    csv = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"fid_evalclip", "fid_evalclip_lo", "fid_evalclip_hi", "kid_evalclip", "clipscore", "img_per_s",
            "nll_per_s"} <= set(csv)
    md = (tmp_path / "summary.md").read_text()
    header = md.splitlines()[0]
    assert all(f" {c} " in header for c in ("fid_evalclip", "kid_evalclip", "clipscore", "img_per_s", "nll_per_s"))
    assert " fid_evalclip_lo " not in header  # folded into the fid_evalclip cell
    assert "11.000 ± 1.414 [10.29, 12.41]" in md and "0.00123 ± 0.00000" in md and "200 ± 141.4" in md and "2,500" in md
    assert r"img\_per\_s" in (tmp_path / "summary.tex").read_text()
    compact = (tmp_path / "summary.compact.tex").read_text()
    # best per column in bold, the ground truth never: ntm has the lower FID and the higher GenEval-style score
    assert r"fid\_evalclip $\downarrow$" in compact and r"\textbf{11.000}" in compact and r"\textbf{0.550}" in compact
    assert r"\textbf{2,500}" in compact and r"\textbf{1.000}" not in compact
    assert write_tables(tmp_path).equals(frame.reset_index())  # rebuilt from records alone, identically


def test_protocol_lists_distinct_values_and_no_warning_when_uniform(tmp_path):
    uniform_store(tmp_path)
    write_tables(tmp_path)
    info = json.loads((tmp_path / "protocol.json").read_text())
    assert info["warnings"] == []
    assert info["suites"]["fid"]["versions"] == ["1"] and info["suites"]["fid"]["images_per_record"] == [64]
    assert info["suites"]["geneval"]["images_per_record"] == [24] and info["suites"]["speed"]["records"] == 4
    assert info["packages"] == {"numpy": ["2.4.6"], "torch": ["2.14.1"]}
    assert info["commits"] == ["abc123"] and info["devices"] == ["cpu"] and info["worlds"] == ["shapes@16"]
    assert info["feature_networks"] == {"clipscore_feature_hash": ["clip0"], "fid_feature_hash": ["feat0"]}
    assert info["reference_sets"] == {"fid_reference": ["shapes test [0, 64)"]}
    assert info["reference_floors"]["fid_evalclip_floor"] == [1.25] and info["seeds"] == [0, 1]
    # both rulers measured as rulers: the eval-CLIP's retrieval accuracy and the parser on ground truth
    assert info["ruler_accuracy"] == {
        "fid_feature_accuracy": [0.97], "parser (geneval_overall on ground-truth renders)": [1.0]
    }
    md = (tmp_path / "summary.md").read_text()
    protocol = md[md.index("## Protocol"):]
    for text in ("fid v1 (64 images per record, 6 records)", "geneval v1", "speed v1", "torch 2.14.1",
                 "commit: abc123", "device: cpu", "fid_feature_hash feat0", "shapes@16", "ruler accuracy"):
        assert text in protocol, text
    assert not any(line.startswith("warning:") for line in md.splitlines())


def test_protocol_warns_when_records_mix_commits_devices_and_versions(tmp_path):
    store = uniform_store(tmp_path)
    record(store, "ntm", "nll", 0, {"nll_bpd": 3.9, "nll_images": 64}, commit="def456", device="cuda",
           packages=PACKAGES | {"torch": "2.13.0"})
    write_tables(tmp_path)
    info = json.loads((tmp_path / "protocol.json").read_text())
    assert info["commits"] == ["abc123", "def456"] and info["devices"] == ["cpu", "cuda"]
    assert info["packages"]["torch"] == ["2.13.0", "2.14.1"] and info["packages"]["numpy"] == ["2.4.6"]
    assert info["warnings"] == [
        "records mix commits: abc123 (20 records), def456 (1 record)",
        "records mix torch versions: 2.13.0 (1 record), 2.14.1 (20 records)",
        "records mix devices: cpu (20 records), cuda (1 record)",
    ]
    warnings = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {w}" for w in info["warnings"]]


def test_protocol_warns_on_mixed_suite_versions_and_feature_networks(tmp_path):
    store = uniform_store(tmp_path)
    record(store, "ntm", "fid", 2, fid(9.0, 0.001) | {"fid_feature_hash": "feat1"}, version="2")
    write_tables(tmp_path)
    warnings = json.loads((tmp_path / "protocol.json").read_text())["warnings"]
    assert "records mix fid suite versions: 1 (6 records), 2 (1 record)" in warnings
    assert "records mix fid_feature_hash: feat0 (6 records), feat1 (1 record)" in warnings


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something was drawn
    return pixels


def test_write_tables_writes_the_plots_and_sample_grids_as_pngs(tmp_path):
    store = uniform_store(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    prompts = np.array(["a photo of a red circle", "a photo of two blue squares"])
    record(store, "ntm", "geneval", 0, geneval(0.5), artifacts={"images": images, "prompts": prompts})
    write_tables(tmp_path)
    for name in ("plots/quality_vs_nfe.png", "plots/geneval_per_category.png", "samples/ntm.png"):
        assert_png(tmp_path / name)


def test_plots_are_skipped_and_stale_ones_removed_without_their_metrics(tmp_path):
    uniform_store(tmp_path)
    write_tables(tmp_path)
    assert (tmp_path / "plots" / "quality_vs_nfe.png").is_file()
    for path in (tmp_path / "records").glob("*/*"):
        if not path.name.startswith("speed."):
            path.unlink()
    write_tables(tmp_path)
    assert not (tmp_path / "plots" / "quality_vs_nfe.png").exists()
    assert not (tmp_path / "plots" / "geneval_per_category.png").exists()


def test_quality_vs_nfe_places_one_labelled_point_per_model_on_a_log_axis(tmp_path):
    frame = summary_frame(uniform_store(tmp_path))
    fig = quality_vs_nfe_figure(frame)
    geneval_ax, fid_ax = fig.axes
    for ax, metric in ((geneval_ax, "geneval_overall"), (fid_ax, "fid_evalclip")):
        assert ax.get_xscale() == "log" and metric.split("_")[0] in ax.get_ylabel().lower()
        labels = {t.get_text(): t for t in ax.texts}
        assert set(labels) == {"ntm", "consistency-1", "ground-truth"}
        for model, nfe in (("ntm", 8), ("consistency-1", 1)):
            value = frame.set_index("model").loc[model, metric]
            assert labels[model].xy == pytest.approx((nfe, value))
        # the reference (NFE 0) is a horizontal line at its value, not a point
        truth = frame.set_index("model").loc["ground-truth", metric]
        assert any(np.allclose(line.get_ydata(), truth) for line in ax.get_lines())
    only_geneval = frame.drop(columns=["fid_evalclip", "fid_evalclip_std"])
    assert len(quality_vs_nfe_figure(only_geneval).axes) == 1
    no_quality = frame.drop(columns=["geneval_overall", "geneval_overall_std", "fid_evalclip", "fid_evalclip_std"])
    assert quality_vs_nfe_figure(no_quality) is None


def test_geneval_per_category_draws_six_bars_per_model_at_their_scores(tmp_path):
    frame = summary_frame(uniform_store(tmp_path))
    fig = geneval_per_category_figure(frame, GENEVAL_TASKS)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [t.replace("_", " ") for t in GENEVAL_TASKS]
    bars = ax.patches
    assert len(bars) == 3 * 6
    heights = sorted(round(b.get_height(), 6) for b in bars)
    # per seed: 1.0 / 0.5, 0.6 / 0.25, 0.35 -> means 1.0, 0.55, 0.3, plus i / 100 for task i
    expected = sorted(round(base + i / 100, 6) for base in (1.0, 0.55, 0.3) for i in range(6))
    assert heights == pytest.approx(expected)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(frame["model"])


def test_sample_grid_shows_each_prompt():
    images = np.zeros((3, 3, 8, 8), dtype=np.uint8)
    prompts = ["a photo of a red circle", "a photo of a green square above a blue triangle", "three circles"]
    fig = grid_figure(images, prompts, columns=2, title="m")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [prompt_label(p) for p in prompts]
    shown = ["a red circle", "a green square above a blue triangle", "three circles"]  # "a photo of " dropped
    assert [t.replace("\n", " ") for t in titles] == shown


def test_a_retrained_model_shows_its_newest_spec_only_and_the_old_records_are_kept(tmp_path):
    store = RecordStore(tmp_path / "records")
    record(store, "ntm", "geneval", 0, geneval(0.5))
    old = dict(SPECS)
    SPECS["ntm"] = GeneratorSpec("ntm", "ntm", 4, 8, 1_000_000, "w1-retrained")
    try:
        record(store, "ntm", "geneval", 0, geneval(0.1))
    finally:
        SPECS.clear()
        SPECS.update(old)
    # the runner stamps `written_at`; the newer spec wins even if file times say otherwise
    for path in (tmp_path / "records" / "ntm").glob("*.summary.json"):
        summary = json.loads(path.read_text())
        newer = summary["metrics"]["geneval_overall"] == 0.1
        summary["written_at"] = "2026-01-02" if newer else "2026-01-01"
        path.write_text(json.dumps(summary))
        if newer:
            os.utime(path, (0, 0))  # an old file time (as after a copy) must not outrank written_at
    frame = write_tables(tmp_path).set_index("model")
    assert frame.loc["ntm", "seeds"] == 1 and frame.loc["ntm", "geneval_overall"] == pytest.approx(0.1)
    assert "geneval_overall_std" not in frame.columns  # not averaged as if the two specs were two seeds
    warnings = json.loads((tmp_path / "protocol.json").read_text())["warnings"]
    assert any("ntm has records of an older spec" in w for w in warnings)
    assert len(list((tmp_path / "records" / "ntm").glob("*.summary.json"))) == 2  # nothing deleted
