"""OUT/run.log and the overall progress of `evaluate`: timestamped lines, appended across runs, ETA shown."""

from __future__ import annotations

import dataclasses
import io
import re
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import benchmarks.runner as runner
from baselines.base import Generator, GeneratorSpec
from baselines.registry import register
from benchmarks.presets import load_preset
from benchmarks.runlog import PieceClock, RunLog, append_line, duration
from benchmarks.runner import evaluate
from cli import app

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
HMS = r"\d+:\d\d:\d\d"


def cheap(preset_file: Path, seeds=(0, 1)):
    """The test preset with two seeds: ground-truth on geneval (1 prompt per task, 2 images) is 2 cheap pieces."""
    return dataclasses.replace(load_preset(preset_file), seeds=tuple(seeds))


def captured(monkeypatch) -> io.StringIO:
    """What the runner prints from now on."""
    buffer = io.StringIO()
    monkeypatch.setattr(runner, "console", Console(file=buffer, width=300, color_system=None))
    return buffer


def log_lines(out: Path) -> list[tuple[datetime, str]]:
    lines = []
    for line in (out / "run.log").read_text().splitlines():
        match = re.fullmatch(rf"({STAMP}) (.*)", line)
        assert match, line
        lines.append((datetime.fromisoformat(match[1]), match[2]))
    return lines


def record_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "records").rglob("*")) if p.is_file()}


def test_evaluate_shows_overall_progress_and_logs_every_line_then_appends_the_skips(preset_file, tmp_path, monkeypatch):
    out, preset = tmp_path / "out", cheap(preset_file)
    shown = captured(monkeypatch)
    assert len(evaluate(preset, out, models=["ground-truth"], suites=["geneval"], progress=True)) == 2
    text = shown.getvalue()
    assert "model 1 of 1: ground-truth (elapsed" in text
    assert re.search(rf"piece 1 of 2 \(ground-truth / geneval / seed 0\), elapsed {HMS}, ETA n/a", text)
    # the second piece's ETA: the mean of the one piece computed so far, times the one piece left
    assert re.search(rf"piece 2 of 2 \(ground-truth / geneval / seed 1\), elapsed {HMS}, ETA {HMS}", text)
    assert "ground-truth / geneval / seed 0: geneval_overall=1" in text  # the per-piece lines stay
    assert re.search(rf"done 2 of 2 pieces \(2 computed, 0 already recorded\) in {HMS}", text)

    first = log_lines(out)
    messages = [m for _, m in first]
    assert messages[0].startswith("run of preset test (pid ")
    assert "1 model(s) x 1 suite(s) x 2 seed(s) = 2 pieces" in messages[0]
    assert messages[1].startswith("model 1 of 1: ground-truth")
    assert messages[2].startswith("ground-truth: built in ")
    for line in text.splitlines():  # everything printed is in the log, in order
        assert line in messages, line
    assert [t for t, _ in first] == sorted(t for t, _ in first)
    records = record_bytes(out)
    assert records and not any("run.log" in name for name in records)

    shown = captured(monkeypatch)
    assert evaluate(preset, out, models=["ground-truth"], suites=["geneval"], progress=True) == []
    text = shown.getvalue()
    assert "ground-truth / geneval / seed 0: recorded, skipped" in text
    assert "ground-truth / geneval / seed 1: recorded, skipped" in text
    assert "done 2 of 2 pieces (0 computed, 2 already recorded)" in text and "piece 1 of 2" not in text

    second = log_lines(out)
    assert second[: len(first)] == first  # appended, never truncated
    added = [m for _, m in second[len(first):]]
    assert added[0].startswith("run of preset test") and added[-1].startswith("done 2 of 2 pieces (0 computed")
    assert "ground-truth / geneval / seed 1: recorded, skipped" in added
    assert record_bytes(out) == records  # the records are untouched


def test_without_progress_the_progress_lines_are_not_shown_but_logged(preset_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shown = captured(monkeypatch)
    evaluate(cheap(preset_file, seeds=(0,)), out, models=["ground-truth"], suites=["geneval"], progress=False)
    text = shown.getvalue()
    assert "ground-truth / geneval / seed 0: geneval_overall=1" in text
    assert "piece 1 of 1" not in text and "model 1 of 1" not in text and "done 1 of 1" not in text
    messages = [m for _, m in log_lines(out)]
    assert any(m.startswith("piece 1 of 1 (ground-truth / geneval / seed 0), elapsed") for m in messages)
    assert "ground-truth / geneval / seed 0: geneval_overall=1" in messages[-2]
    assert messages[-1].startswith("done 1 of 1 pieces (1 computed, 0 already recorded)")


class FailsToBuild(Generator):
    @classmethod
    def from_context(cls, ctx, name):
        raise ValueError("test-runlog-bad: a bad option")


class Interrupted(Generator):
    """Ctrl-C while sampling."""

    def __init__(self, name: str) -> None:
        self.spec = GeneratorSpec(name, "test", 1, 1, 0, "none")

    @classmethod
    def from_context(cls, ctx, name):
        return cls(name)

    def sample(self, prompts, seeds, steps=None):
        raise KeyboardInterrupt


register("test-runlog-bad", FailsToBuild, "test double: a build that fails on a bad input")
register("test-runlog-interrupted", Interrupted, "test double: interrupted while sampling")


def test_a_run_stopped_by_a_bad_input_leaves_no_log_an_interrupted_one_says_so(preset_file, tmp_path, monkeypatch):
    captured(monkeypatch)
    preset, out = cheap(preset_file, seeds=(0,)), tmp_path / "out"
    with pytest.raises(ValueError, match="a bad option"):
        evaluate(preset, out, models=["test-runlog-bad"], suites=["geneval"], progress=True)
    assert not (out / "run.log").exists()  # nothing written on failure (docs/errors.md)
    with pytest.raises(KeyboardInterrupt):
        evaluate(preset, out, models=["test-runlog-interrupted"], suites=["geneval"], progress=True)
    messages = [m for _, m in log_lines(out)]
    assert messages[-2].startswith("piece 1 of 1 (test-runlog-interrupted / geneval / seed 0)")
    assert re.fullmatch(rf"interrupted after 0 of 1 pieces, elapsed {HMS}", messages[-1])


def test_piece_clock_eta_is_the_mean_computed_piece_times_the_pieces_left():
    now = [100.0]
    clock = PieceClock(6, clock=lambda: now[0])
    assert clock.eta() is None and clock.piece_line("a") == "piece 1 of 6 (a), elapsed 0:00:00, ETA n/a"
    clock.finished(None)  # recorded: done at once, not in the mean
    clock.finished(None)
    assert clock.eta() is None
    now[0] += 70  # a 40 s build and a 30 s piece
    clock.finished(30.0)
    clock.finished(10.0)
    assert clock.eta() == pytest.approx(20.0 * 2)
    assert clock.piece_line("b") == "piece 5 of 6 (b), elapsed 0:01:10, ETA 0:00:40"
    assert clock.summary_line() == "done 4 of 6 pieces (2 computed, 2 already recorded) in 0:01:10"
    assert duration(3725.4) == "1:02:05"


def test_held_lines_keep_their_times_and_multi_line_messages_are_stamped_per_line(tmp_path):
    log = RunLog(tmp_path)
    log.write("[dim]held[/dim]")
    assert not (tmp_path / "run.log").exists()
    log.start()
    log.write("two\nlines")
    append_line(tmp_path, "from elsewhere")
    assert [m for _, m in log_lines(tmp_path)] == ["held", "two", "lines", "from elsewhere"]
    RunLog(tmp_path, enabled=False).write("never")
    discarded = RunLog(tmp_path / "other")
    discarded.write("dropped")
    discarded.discard()
    discarded.start()
    assert not (tmp_path / "other").exists()


def test_eval_command_logs_its_tables_line(preset_file, tmp_path, monkeypatch):
    captured(monkeypatch)
    out = tmp_path / "out"
    args = ["eval", "--models", "ground-truth", "--suites", "geneval", "-p", str(preset_file), "--out", str(out),
            "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    messages = [m for _, m in log_lines(out)]
    assert messages[-2].startswith("done 1 of 1 pieces")
    assert messages[-1].startswith(f"wrote {out}") and "summary.csv" in messages[-1]  # the tables line
