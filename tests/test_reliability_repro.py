"""Reproducibility: the same command and seed give the same records to the bit; batch size does not matter."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile

import numpy as np
import pytest

from benchmarks.presets import load_preset
from benchmarks.records import RecordStore, npz_bytes
from benchmarks.runner import evaluate
from tests.test_reliability_resume import contents

MODELS = ["ground-truth", "fm-teacher-4", "ntm"]


def test_the_same_command_twice_gives_bit_identical_records_and_weights(preset_file, tmp_path, one_thread):
    preset = load_preset(preset_file)
    first, second = tmp_path / "first", tmp_path / "second"
    evaluate(preset, first, models=MODELS, progress=False)
    evaluate(preset, second, models=MODELS, progress=False)  # retrains every model from its recipe
    a, b = contents(first), contents(second)
    assert len([n for n in a if n.endswith(".summary.json")]) == 6 and any(n.endswith(".artifacts.npz") for n in a)
    assert a == b
    for summary in RecordStore(first / "records").summaries():
        protocol = summary["protocol"]
        assert set(protocol) == {"commit", "packages", "python", "device"} and protocol["device"] == "cpu"
        assert protocol["commit"] and protocol["packages"]["torch"] and protocol["packages"]["numpy"]


def test_records_do_not_depend_on_the_batch_size(preset_file, tmp_path, one_thread):
    preset = load_preset(preset_file)
    wide, narrow = tmp_path / "wide", tmp_path / "narrow"
    evaluate(preset, wide, models=MODELS, progress=False)
    shutil.copytree(wide / "checkpoints", narrow / "checkpoints")  # the same weights, evaluated in batches of 1
    options = {"geneval": preset.suite_options["geneval"] | {"batch_size": 1}, "nll": {"images": 4, "batch_size": 1}}
    evaluate(dataclasses.replace(preset, suite_options=options), narrow, models=MODELS, progress=False)
    store_wide, store_narrow = RecordStore(wide / "records"), RecordStore(narrow / "records")
    pairs = list(zip(store_wide.summaries(), store_narrow.summaries(), strict=True))
    assert len(pairs) == 6
    for w, n in pairs:
        assert (w["record"], w["spec_hash"]) == (n["record"], n["spec_hash"])
        assert n["suite_options"]["batch_size"] == 1 != w["suite_options"]["batch_size"]
        images_w, images_n = store_wide.artifacts(w).get("images"), store_narrow.artifacts(n).get("images")
        if images_w is not None:  # pixel values may differ by one level where float32 rounding straddles an edge
            assert np.abs(images_w.astype(int) - images_n.astype(int)).max() <= 1
            assert (images_w != images_n).mean() < 1e-3
        for key, value in w["metrics"].items():
            if isinstance(value, float):
                assert n["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-4), (w["record"], key)
            else:
                assert n["metrics"][key] == value, (w["record"], key)
        if w["model"] == "ground-truth":
            assert store_wide.rows(w) == store_narrow.rows(n)


def test_artifact_archives_are_byte_identical_for_equal_arrays(tmp_path):
    arrays = {"images": np.arange(48, dtype=np.uint8).reshape(1, 3, 4, 4), "prompts": np.array(["a", "bb"])}
    first = npz_bytes(arrays)
    assert npz_bytes(dict(reversed(list(arrays.items())))) == first  # no timestamp, no insertion order
    (tmp_path / "a.npz").write_bytes(first)
    with np.load(tmp_path / "a.npz") as loaded:
        assert loaded.files == ["images", "prompts"] and np.array_equal(loaded["images"], arrays["images"])
        assert loaded["prompts"].tolist() == ["a", "bb"]
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert {entry.date_time for entry in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
