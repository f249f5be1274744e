"""`ntm-bench diagnose`: per-step NLLs of the NTM rows and empty/fragmented sample counts of every row."""

import csv
import dataclasses

import numpy as np
import pytest

from benchmarks.diagnose import SAMPLE_COLUMNS, STEP_COLUMNS, diagnose
from benchmarks.presets import load_preset
from benchmarks.worlds import get_world

pytestmark = pytest.mark.usefixtures("one_thread")


def read(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_diagnose_writes_one_row_per_ntm_step_and_one_per_model(preset_file, tmp_path):
    preset = load_preset(preset_file)
    steps_csv, samples_csv = diagnose(preset, tmp_path, trajectories=4, samples=6, batch_size=4)
    steps, samples = read(steps_csv), read(samples_csv)
    assert list(steps[0]) == list(STEP_COLUMNS) and list(samples[0]) == list(SAMPLE_COLUMNS)
    # the NTM rows, 4 steps each from t = 1 down; the teacher and the ground truth have no steps here
    assert [(r["model"], int(r["step"])) for r in steps] == [(m, k) for m in ("ntm", "ntm-no-transporter") for k in (1, 2, 3, 4)]
    ntm = [r for r in steps if r["model"] == "ntm"]
    assert float(ntm[0]["t"]) == 1.0 and all(float(a["s"]) == float(b["t"]) for a, b in zip(ntm, ntm[1:]))
    gaussian = [r for r in steps if r["model"] == "ntm-no-transporter"]
    assert all(float(r["logdet_per_dim"]) == 0 for r in gaussian) and all(float(r["sigma_mean"]) > 0 for r in steps)
    by_model = {r["model"]: r for r in samples}
    assert set(by_model) == set(preset.models)
    # the parser reads every render: no empty ground-truth image and no specks
    assert float(by_model["ground-truth"]["empty_fraction"]) == 0 and float(by_model["ground-truth"]["fragments_per_image"]) == 0
    again = diagnose(preset, tmp_path, trajectories=4, samples=6, batch_size=4)
    assert read(again[0]) == steps and read(again[1]) == samples  # cached weights, seeded draws: the same numbers


def test_fragments_count_specks_the_parser_drops():
    world = get_world("shapes", 16)
    image = world.batch([0], split="test").images[0].copy()
    assert world.fragments(image) == 0 and world.detect(image)
    background = image[:, 0, 0].copy()
    blank = np.broadcast_to(background[:, None, None], image.shape).copy()
    specked = blank.copy()
    specked[:, 2, 2] = (255, 0, 0) if tuple(background) != (255, 0, 0) else (0, 0, 255)
    specked[:, 12, 12] = specked[:, 2, 2]
    assert world.detect(specked) == [] and world.fragments(specked) == 2 and world.fragments(blank) == 0


def test_shared_rows_take_their_models_options(preset_file):
    preset = load_preset(preset_file)
    preset = dataclasses.replace(preset, model_options=preset.model_options | {"ntm-8": {"guidance": 1.0}})
    # ntm-8 is ntm's weights: it takes ntm's options it accepts, then its own
    assert preset.options_for("ntm-8") == {"guidance": 1.0, "bound_samples": 2}
    assert preset.options_for("ntm-fast") == {"guidance": 2.0}
    assert preset.options_for("ntm-no-transporter") == {"bound_samples": 2}


def test_diagnose_command_rejects_an_empty_model_list(preset_file, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["diagnose", "--preset", str(preset_file), "--out", str(tmp_path), "--models", ","])
    assert result.exit_code == 2 and "names no model" in result.output
    assert not (tmp_path / "diagnostics").exists()
