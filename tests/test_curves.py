"""Learning curves: training snapshots are the EMA weights of their step, and the curves command scores them."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from baselines.base import BuildContext
from baselines.registry import build
from benchmarks.curves import learning_curves, own_folder, snapshot_steps, wants_curves
from benchmarks.presets import load_preset
from benchmarks.runner import evaluate
from benchmarks.worlds import get_world
from ntm.checkpoint import snapshots_of, using_snapshot
from ntm.train import TrainConfig


def context(root, steps: int, snapshot_every: int = 0, recipe: str = "flow_matching") -> BuildContext:
    """`recipe` trains `steps` steps with snapshots; the other (the student's teacher) a fixed 2."""
    train = {"flow_matching": {"steps": 2, "batch_size": 4}, "consistency": {"steps": 2, "batch_size": 4}}
    train[recipe] = {"steps": steps, "batch_size": 4, "snapshot_every": snapshot_every}
    return BuildContext(get_world("shapes", 16), torch.device("cpu"), root, {"size": "tiny", "patch": 4}, train, progress=False)


def test_snapshots_leave_the_recipe_hash_alone():
    assert TrainConfig(snapshot_every=5).weights_recipe() == TrainConfig().weights_recipe()
    with pytest.raises(ValueError, match="snapshot_every"):
        TrainConfig(snapshot_every=-1)


def sample(generator) -> torch.Tensor:
    return generator.sample(["a red circle", "two blue squares"], [3, 4])


@pytest.mark.parametrize(("model", "recipe"), [("fm-teacher-4", "flow_matching"), ("consistency", "consistency")])
def test_a_snapshot_is_the_ema_of_its_step(model, recipe, tmp_path, one_thread):
    """A 4-step run's step-2 snapshot samples exactly as a 2-step run's final weights (constant lr: the
    first two steps are the same), its step-4 snapshot as its own final weights; a step without one is a
    clear error naming the steps there are."""
    full = build(model, context(tmp_path / "full", 4, 2, recipe))
    short = build(model, context(tmp_path / "short", 2, 0, recipe))
    folder = own_folder(tmp_path / "full", full.spec.weights_hash)
    assert folder is not None and folder.name.startswith(f"{recipe}-")
    assert snapshot_steps(folder) == [2, 4]
    assert not (tmp_path / "full" / f"{folder.name}.partial").exists()
    with using_snapshot(recipe, 4):
        last = build(model, context(tmp_path / "full", 4, 2, recipe))
    with using_snapshot(recipe, 2):
        early = build(model, context(tmp_path / "full", 4, 2, recipe))
    assert torch.equal(sample(last), sample(full))
    assert torch.equal(sample(early), sample(short))
    assert not torch.equal(sample(early), sample(full))
    assert early.spec.weights_hash != full.spec.weights_hash  # its records are told apart
    with using_snapshot(recipe, 3), pytest.raises(FileNotFoundError, match="snapshots at steps: 2, 4"):
        build(model, context(tmp_path / "full", 4, 2, recipe))


def test_learning_curves_end_to_end(preset_file, tmp_path, one_thread):
    p = load_preset(preset_file)
    p = dataclasses.replace(
        p, models=("ground-truth", "fm-teacher-4"), suites=("geneval",),
        train=p.train | {"flow_matching": p.train["flow_matching"] | {"steps": 4, "snapshot_every": 2}},
    )
    assert wants_curves(p) and not wants_curves(load_preset(preset_file))
    out = tmp_path / "out"
    evaluate(p, out, progress=False)
    path, skipped = learning_curves(p, out)
    assert skipped == ["ground-truth"]
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["step"], r["total_steps"]) for r in rows] == [("fm-teacher-4", "2", "4"), ("fm-teacher-4", "4", "4")]
    assert (out / "curves" / "step-2" / "records").is_dir() and (out / "plots" / "learning_curves.png").is_file()
    assert all(r["geneval_overall"] != "" and r["geneval_overall_lo"] != "" for r in rows)
    assert snapshots_of(next((out / "checkpoints").glob("flow_matching-*[!.lock]"))).is_dir()
    again, _ = learning_curves(p, out)  # finished points are found, not recomputed
    assert again.read_text() == path.read_text()


def test_cpu_reference_has_every_family_at_one_budget_with_snapshots():
    p = load_preset("cpu-reference")
    families = {"fm-teacher", "fm-teacher-4", "ntm", "ntm-8", "ntm-scratch", "consistency", "progressive", "add"}
    assert families <= set(p.models)
    students = [p.train[k] for k in ("ntm", "consistency", "distilled", "adversarial")]
    assert len({(t["steps"], t["batch_size"]) for t in students}) == 1  # one budget for every method taught by the teacher
    assert wants_curves(p)
    for key, table in p.train.items():
        if key != "ntm_denoiser":  # ntm-fast's weights are two networks: no single curve
            every = table.get("snapshot_every", 0)
            assert every > 0 and table["steps"] % every == 0, key


def test_scaling_study_scores_on_a_validation_draw_not_the_evaluation_sets():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("scaling_study", Path(__file__).parents[1] / "scripts" / "scaling_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    base = load_preset("cpu-reference")
    v = study.validation(base, ("geneval", "fid"))
    assert v.models == ("fm-teacher",) and v.audit is None
    assert v.suite_options["geneval"]["prompt_seed"] != base.suite_options.get("geneval", {}).get("prompt_seed", 0)
    assert set(v.seeds).isdisjoint(base.seeds)
    evaluation_end = 2 * base.suite_options["fid"]["images"]  # reference set and floor set
    assert v.suite_options["fid"]["first_index"] >= evaluation_end
    assert {a["resolution"] for a in study.ARMS.values()} == {16, 32} and {a["patch"] for a in study.ARMS.values()} == {2, 4}
