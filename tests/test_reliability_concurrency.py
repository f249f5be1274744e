"""Concurrency: runs sharing a results folder train each model once and write each record once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from baselines.base import GeneratorSpec
from benchmarks.presets import load_preset
from benchmarks.records import RecordStore
from benchmarks.runner import evaluate
from ntm.checkpoint import save_pretrained
from ntm.locking import exclusive
from tests.test_reliability_resume import ROOT, context, contents


def test_exclusive_lock_serialises_holders_and_leaves_no_lock_file(tmp_path):
    """Threads doing a read-sleep-write increment under the lock lose no update (each flock is its own fd)."""
    counter, lock = tmp_path / "counter", tmp_path / "counter.lock"
    counter.write_text("0")
    waits = []

    def bump() -> None:
        for _ in range(5):
            with exclusive(lock, on_wait=lambda: waits.append(1)):
                value = int(counter.read_text())
                time.sleep(0.002)
                counter.write_text(str(value + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "20" and waits and not lock.exists()


def test_a_second_run_waits_for_the_training_and_then_finds_it_cached(tmp_path, capsys):
    ctx = context(tmp_path)
    inside, release, trained = threading.Event(), threading.Event(), []

    def first(directory: Path) -> None:
        inside.set()
        release.wait(10)
        trained.append("first")
        save_pretrained(directory, {"w": torch.ones(2)}, {"kind": "test"})

    def second(directory: Path) -> None:
        trained.append("second")

    results = {}
    a = threading.Thread(target=lambda: results.setdefault("a", ctx.checkpoint("m", {"x": 1}, first)))
    a.start()
    inside.wait(10)
    b = threading.Thread(target=lambda: results.setdefault("b", ctx.checkpoint("m", {"x": 1}, second)))
    b.start()
    deadline = time.monotonic() + 10
    while "waiting for it" not in capsys.readouterr().err:
        assert time.monotonic() < deadline and b.is_alive()
        time.sleep(0.01)
    release.set()
    a.join(10), b.join(10)
    assert trained == ["first"] and results["a"] == results["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [results["a"].name]


def test_a_record_written_meanwhile_by_another_run_is_kept(tmp_path):
    store = RecordStore(tmp_path)
    key = store.key(GeneratorSpec("m", "test", 1, 1, 0, "w"), "geneval", "1", 0)
    assert store.write(key, [{"item": 0}], {"record": key.stem, "by": "first"}, {}, replace=False)
    assert not store.write(key, [{"item": 1}], {"record": key.stem, "by": "second"}, {}, replace=False)
    assert [s["by"] for s in store.summaries()] == ["first"] and store.rows({"record": key.stem}) == [{"item": 0}]


EVALUATE = """
import sys
from pathlib import Path
from benchmarks.presets import load_preset
from benchmarks.runner import evaluate
evaluate(load_preset(sys.argv[1]), Path(sys.argv[2]), models=sys.argv[3].split(","), progress=False)
"""
"""The runner in a fresh process (`ntm-bench eval` without the tables: two processes writing the same table
files at once is a separate matter, see docs/errors.md)."""


def test_two_processes_on_one_results_folder_end_as_one_run(preset_file, tmp_path, one_thread):
    text = preset_file.read_text()
    preset_file.write_text(text.replace("[train.flow_matching]\nsteps = 3", "[train.flow_matching]\nsteps = 10"))
    models = ["ground-truth", "fm-teacher-4"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shared = tmp_path / "shared"
    command = [sys.executable, "-c", EVALUATE, str(preset_file), str(shared), ",".join(models)]
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    alone = tmp_path / "alone"
    evaluate(load_preset(preset_file), alone, models=models, progress=False)
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert contents(shared) == contents(alone)
    pieces = [line for text in outputs for line in text.splitlines() if " / seed 0: " in line]
    assert len([line for line in pieces if "recorded" not in line]) == 4  # each piece written by exactly one run
