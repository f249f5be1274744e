"""A student's training interrupted mid-run resumes to the bit: loss state (target network,
discriminator, stage teacher), noise generator and counted teacher passes all come back."""

from __future__ import annotations

import pytest
import torch

import baselines.students as students
from baselines.base import BuildContext
from baselines.registry import build
from benchmarks.worlds import get_world


class Stop(Exception):
    pass


def context(root) -> BuildContext:
    budget = {"steps": 4, "batch_size": 4, "checkpoint_every": 1}
    return BuildContext(
        get_world("shapes", 16), torch.device("cpu"), root, {"size": "tiny", "patch": 4},
        {"flow_matching": {"steps": 2, "batch_size": 4}, "consistency": budget, "distilled": budget, "adversarial": budget},
        progress=False,
    )


@pytest.mark.parametrize("model", ["consistency", "progressive", "add"])
def test_interrupted_student_resumes_to_the_bit(model, tmp_path, monkeypatch, one_thread):
    whole = build(model, context(tmp_path / "whole"))
    original = students.training_batch

    def interrupted(world, step, *args, **kwargs):
        if step == 3:
            raise Stop
        return original(world, step, *args, **kwargs)

    monkeypatch.setattr(students, "training_batch", interrupted)
    with pytest.raises(Stop):
        build(model, context(tmp_path / "cut"))
    monkeypatch.setattr(students, "training_batch", original)
    resumed = build(model, context(tmp_path / "cut"))
    assert resumed.spec.weights_hash == whole.spec.weights_hash
    assert resumed.spec.training == whole.spec.training  # teacher passes counted across the restart too
