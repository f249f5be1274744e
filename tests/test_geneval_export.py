"""GenEval's own folder layout: `generate --layout geneval` writes what its scorer reads, `import-geneval` records
what its scorer writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.geneval_export import geneval_official_metrics, import_geneval_results, imported_spec
from benchmarks.geneval_rules import TAGS, load_geneval_metadata
from benchmarks.presets import load_preset
from benchmarks.records import RecordKey, RecordStore
from benchmarks.suites import get_suite
from benchmarks.suites.geneval import suite_items, suite_prompts
from benchmarks.tables import _frame
from benchmarks.worlds import get_world
from cli import app

runner = CliRunner()


def _text(result) -> str:
    return " ".join(result.output.split())


def _generate(*args: str):
    return runner.invoke(app, ["generate", *args, "--no-progress"])


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset, its world, and its geneval suite's rows and per-prompt seeds (run seed 0)."""
    preset = load_preset("tiny")
    world = get_world(preset.world, preset.resolution)
    options = get_suite("geneval", preset.suite_options.get("geneval")).options
    entries = suite_prompts(world, options)
    items, seeds = suite_items(entries, options.images_per_prompt, 0)
    per_prompt: dict[int, list[int]] = {}
    for (p, _), s in zip(items, seeds):
        per_prompt.setdefault(p, []).append(s)
    return preset, world, entries, per_prompt


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    """The exact command of the issue, run once from an empty folder (default results/tiny lands there too)."""
    base = tmp_path_factory.mktemp("export")
    cwd = Path.cwd()
    os.chdir(base)
    try:
        result = _generate("--models", "ground-truth", "--preset", "tiny", "--limit", "2", "--layout", "geneval", "--out", "D")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return base / "D", result


def test_generate_writes_genevals_layout(exported, tiny):
    out, result = exported
    _, world, entries, per_prompt = tiny
    folder = out / "ground-truth"
    assert (folder / "00000" / "metadata.jsonl").is_file()
    assert (folder / "00000" / "samples" / "0000.png").is_file()
    assert "wrote D/ground-truth: 12 prompt folder(s), 48 images" in _text(result)
    prompts = sorted(p for p in folder.iterdir() if p.is_dir())
    # --limit 2: the first two prompts of each of the six tasks, under their index in the suite's list
    expected = [p for tag in TAGS for p in [i for i, e in enumerate(entries) if e["tag"] == tag][:2]]
    assert [int(p.name) for p in prompts] == sorted(expected)
    for p in prompts:
        index = int(p.name)
        row = entries[index]
        # metadata.jsonl round-trips: one line, exactly the prompt's row (GenEval reads it with json.load)
        text = (p / "metadata.jsonl").read_text()
        assert text.count("\n") == 1 and json.loads(text) == row and list(json.loads(text)) == list(row)
        assert load_geneval_metadata(p / "metadata.jsonl") == [row]
        # the seeds are the geneval suite's own item seeds, and recorded
        seeds = json.loads((p / "seeds.json").read_text())
        assert seeds["seeds"] == per_prompt[index] and seeds["prompt"] == row["prompt"] and seeds["seed"] == 0
        pngs = sorted(f.name for f in (p / "samples").iterdir())
        assert pngs == ["0000.png", "0001.png", "0002.png", "0003.png"]
        for k, name in enumerate(pngs):
            with Image.open(p / "samples" / name) as im:
                assert im.format == "PNG" and im.size == (world.resolution, world.resolution) and im.mode == "RGB"
                pixels = np.asarray(im)
            # ground-truth's image for (prompt, seed): the very image the geneval suite scores
            np.testing.assert_array_equal(pixels, world.render_caption(row["prompt"], per_prompt[index][k]).transpose(1, 2, 0))
    manifest = json.loads((folder / "generation.json").read_text())
    assert manifest["model"] == "ground-truth" and manifest["images_per_prompt"] == 4 and manifest["source"]["preset"] == "tiny"
    assert not list(out.rglob(".*"))  # no temporaries left


def test_generate_resumes_and_refuses_another_runs_folder(tmp_path, tiny):
    out, res = tmp_path / "D", tmp_path / "res"
    args = ["--models", "ground-truth", "--preset", "tiny", "--limit", "1", "--images-per-prompt", "2",
            "--out", str(out), "--results", str(res)]
    assert _generate(*args).exit_code == 0
    folder = out / "ground-truth"
    first = sorted(folder.rglob("*.png"))
    stamps = {f: f.stat().st_mtime_ns for f in first}
    again = _generate(*args)
    assert again.exit_code == 0 and "0 prompt folder(s), 0 images; 6 already complete" in _text(again)
    assert {f: f.stat().st_mtime_ns for f in folder.rglob("*.png")} == stamps
    # a folder an interrupted run left unfinished (no seeds.json, an image missing) is redone, alone
    unfinished = sorted(p for p in folder.iterdir() if p.is_dir())[2]
    (unfinished / "seeds.json").unlink()
    (unfinished / "samples" / "0001.png").unlink()
    resumed = _generate(*args)
    assert resumed.exit_code == 0 and "1 prompt folder(s), 2 images; 5 already complete" in _text(resumed)
    assert sorted(folder.rglob("*.png")) == first
    # a larger limit adds the new prompts and keeps the old ones
    more = _generate(*[a if a != "1" else "2" for a in args])
    assert more.exit_code == 0 and "6 prompt folder(s), 12 images; 6 already complete" in _text(more)
    # another run seed into the same folder would mix images: refused before sampling
    other = _generate(*args, "--seed", "3")
    assert other.exit_code == 2 and "holds images of another run (seed differ" in _text(other)


def test_generate_from_a_metadata_file(tmp_path, tiny):
    _, world, entries, _ = tiny
    rows = [e for tag in TAGS for e in [x for x in entries if x["tag"] == tag][:2]]
    prompts = tmp_path / "metadata.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "D"
    result = _generate("--models", "ground-truth", "--preset", "tiny", "--prompts", str(prompts), "--limit", "1",
                       "--images-per-prompt", "2", "--seed", "5", "--out", str(out), "--results", str(tmp_path / "res"))
    assert result.exit_code == 0, result.output
    folders = sorted(p for p in (out / "ground-truth").iterdir() if p.is_dir())
    assert [p.name for p in folders] == [f"{i:05d}" for i in range(0, 12, 2)]  # first row of each task, by line
    _, seeds = suite_items(rows, 2, 5)  # geneval-real's seed scheme over the file's rows
    for p in folders:
        index = int(p.name)
        assert load_geneval_metadata(p / "metadata.jsonl") == [rows[index]]
        assert json.loads((p / "seeds.json").read_text())["seeds"] == seeds[2 * index : 2 * index + 2]
        with Image.open(p / "samples" / "0001.png") as im:
            assert im.size == (16, 16)
    source = json.loads((out / "ground-truth" / "generation.json").read_text())["source"]
    assert source["metadata"] == str(prompts) and len(source["sha256"]) == 64


def _result(filename: str, tag: str, correct: bool, prompt: str = "p") -> dict:
    """A row as GenEval's evaluate_images.py writes it (pandas to_json, metadata and details as JSON strings)."""
    meta = {"tag": tag, "include": [{"class": "circle", "count": 1}], "prompt": prompt}
    return {"filename": filename, "tag": tag, "prompt": prompt, "correct": correct,
            "reason": "" if correct else "expected circle>=1, found 0", "metadata": json.dumps(meta), "details": "{}"}


def _write_results(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r).replace("/", "\\/") + "\n" for r in rows))  # pandas escapes slashes
    return path


HAND_MADE = [
    _result("x/m/00000/samples/0000.png", "single_object", True, "a"),
    _result("x/m/00000/samples/0001.png", "single_object", False, "a"),
    _result("x/m/00001/samples/0000.png", "single_object", True, "b"),
    _result("x/m/00002/samples/0000.png", "two_object", False, "c"),
    _result("x/m/00002/samples/0001.png", "two_object", False, "c"),
]


def test_import_geneval_gives_genevals_overall(tmp_path):
    results = _write_results(tmp_path / "results.jsonl", HAND_MADE)
    out = tmp_path / "res"
    summary = import_geneval_results(results, "sdxl-official", out)
    # by hand: single_object 2/3, two_object 0/2; overall the mean over the two tasks; prompts a, b correct of a, b, c
    [stored_summary] = RecordStore(out / "records").summaries()
    assert stored_summary == summary
    assert summary["metrics"] == {
        "geneval_official_single_object": pytest.approx(2 / 3), "geneval_official_two_object": 0.0,
        "geneval_official_overall": pytest.approx(1 / 3), "geneval_official_prompts_correct": pytest.approx(2 / 3),
        "geneval_official_images": 5,
    }
    assert summary["suite"] == "geneval_official" and summary["spec"] == imported_spec("sdxl-official")
    assert summary["model"] == "sdxl-official" and summary["family"] == "imported"
    stored = RecordStore(out / "records").rows(summary)
    assert [(r["prompt_index"], r["sample"], r["correct"]) for r in stored][:2] == [(0, 0, True), (0, 1, False)]
    assert stored[0]["metadata"]["include"] == [{"class": "circle", "count": 1}]
    frame = _frame([summary], RecordStore(out / "records").rows)  # the tables read it; steps, NFE and size unknown
    assert list(frame["model"]) == ["sdxl-official"] and frame["nfe"].isna().all()
    assert frame["geneval_official_overall"][0] == pytest.approx(1 / 3)
    # importing again replaces the record
    _write_results(results, HAND_MADE[:3])
    import_geneval_results(results, "sdxl-official", out)
    [summary] = RecordStore(out / "records").summaries()
    assert summary["metrics"]["geneval_official_overall"] == pytest.approx(2 / 3)
    # filenames outside a layout: the prompts are numbered by their metadata, in order of appearance
    _write_results(results, [dict(r, filename=f"img{i}.png") for i, r in enumerate(HAND_MADE)])
    summary = import_geneval_results(results, "sdxl-official", out)
    assert [r["prompt_index"] for r in RecordStore(out / "records").rows(summary)] == [0, 0, 1, 2, 2]


def test_import_geneval_command_rebuilds_the_tables_of_an_unknown_model(tmp_path):
    results = _write_results(tmp_path / "results.jsonl", HAND_MADE)
    out = tmp_path / "res"
    result = runner.invoke(app, ["import-geneval", str(results), "--model", "sdxl-official", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "geneval_official_overall=0.3333 over 5 images" in _text(result)
    assert "sdxl-official" in (out / "summary.csv").read_text()


def test_import_geneval_command_joins_the_exported_models_row(exported, tmp_path):
    out, _ = exported
    folder = out / "ground-truth"
    rows = [_result(str(p), json.loads((p.parents[1] / "metadata.jsonl").read_text())["tag"], True)
            for p in sorted(folder.glob("*/samples/*.png"))]
    rows[0]["correct"] = False  # one wrong image of 8 single_object ones: 1 - 1/8 there, 1 elsewhere
    results = _write_results(tmp_path / "results.jsonl", rows)
    res = tmp_path / "res"
    result = runner.invoke(app, ["import-geneval", str(results), "--model", "ground-truth", "--out", str(res)])
    assert result.exit_code == 0, result.output
    overall = (7 / 8 + 5) / 6
    assert f"geneval_official_overall={overall:.4g} over 48 images" in _text(result)
    [summary] = RecordStore(res / "records").summaries()
    manifest = json.loads((folder / "generation.json").read_text())
    assert summary["spec_hash"] == manifest["spec_hash"] and summary["family"] == "reference"
    assert summary["world"] == "shapes" and summary["resolution"] == 16 and summary["seed"] == 0
    first = RecordStore(res / "records").rows(summary)[0]
    assert first["seed"] == json.loads((folder / f"{first['prompt_index']:05d}" / "seeds.json").read_text())["seeds"][first["sample"]]
    table = (res / "summary.csv").read_text()
    assert "ground-truth" in table and "geneval_official_overall" in table
    # records of another spec of that model in the results folder: the images are not that row's
    other = tmp_path / "other"
    stale = dict(summary, spec_hash="f" * 64, record=f"ground-truth/geneval.v1.seed0.{'f' * 12}", suite="geneval")
    RecordStore(other / "records").write(RecordKey("ground-truth", "f" * 64, "geneval", "1", 0), [], stale, {})
    refused = runner.invoke(app, ["import-geneval", str(results), "--model", "ground-truth", "--out", str(other)])
    assert refused.exit_code == 2 and "retrained or reconfigured" in _text(refused)


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path):
    gen = ["generate", "--models", "ground-truth", "--preset", "tiny", "--out", str(tmp_path / "D"), "--results", str(tmp_path / "r")]
    bad_row = tmp_path / "bad.jsonl"
    bad_row.write_text(json.dumps(_result("a/00000/samples/0000.png", "counting", True)) + "\n{\"tag\": \"counting\"}\n")
    cases = [
        (gen + ["--layout", "coco"], "unknown layout 'coco'; valid: geneval"),
        (["generate", "--models", " ", "--out", str(tmp_path / "D")], "names no model"),
        (["generate", "--models", "nope", "--out", str(tmp_path / "D")], "unknown model 'nope'; available:"),
        (gen + ["--prompts", str(tmp_path / "none.jsonl")], f"prompts file {tmp_path / 'none.jsonl'} does not exist"),
        (["import-geneval", str(tmp_path / "results.jsonl"), "--model", "m", "--out", str(tmp_path / "o")],
         f"GenEval results file {tmp_path / 'results.jsonl'} does not exist"),
        (["import-geneval", str(bad_row), "--model", "m", "--out", str(tmp_path / "o")],
         f"{bad_row}:2: bad GenEval result row: correct None is not true or false"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in _text(result), (args, result.output)
    assert "ground-truth" in _text(runner.invoke(app, cases[1][0]))
    assert not (tmp_path / "D").exists() and not (tmp_path / "o").exists()


def test_metrics_aggregate_per_task_then_over_tasks():
    rows = [{"tag": "counting", "correct": c, "prompt": str(i)} for i, c in enumerate([True] * 9 + [False])]
    rows += [{"tag": "position", "correct": False, "prompt": "q"}]
    metrics = geneval_official_metrics(rows)
    assert metrics["geneval_official_overall"] == pytest.approx((0.9 + 0.0) / 2)  # not the image mean 9/11
    assert list(metrics)[:2] == ["geneval_official_counting", "geneval_official_position"]
