"""Interruption: training checkpoints resume to the bit, NaN losses stop training, SIGKILLed runs lose nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from baselines.base import BuildContext, stable_hash
from ntm.train import weights_recipe
from ntm.checkpoint import is_saved, save_pretrained
from ntm.train import TrainConfig, checkpointing, fit
from tests.conftest import TINY_PRESET

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    """Stands in for a kill: raised from inside the loss at a chosen step."""


def tiny_run(config: TrainConfig, stop_at: int | None = None, nan_at: int | None = None) -> tuple[nn.Module, float]:
    """A seeded MLP regression whose noise comes from a torch.Generator, as the real trainers' does."""
    torch.manual_seed(config.seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
    gen = torch.Generator().manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        if step == stop_at:
            raise Stop
        x = torch.randn(8, 4, generator=gen)
        loss = (model(x) - x.flip(1) + 0.1 * torch.rand(8, 4)).square().mean()  # global RNG too
        return loss * float("nan") if step == nan_at else loss

    ema, stats = fit(model, step_loss, config, progress=False, state={"noise": gen})
    return ema, stats.final_loss


def flat(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in module.state_dict().values()])


def test_an_interrupted_fit_resumes_to_the_same_bits(tmp_path, one_thread):
    config = TrainConfig(steps=20, batch_size=8, warmup=5, ema_decay=0.9, checkpoint_every=3)
    reference, reference_loss = tiny_run(config)
    with checkpointing(tmp_path / "partial"):
        with pytest.raises(Stop):
            tiny_run(config, stop_at=10)
    saved = torch.load(tmp_path / "partial" / "fit-0.pt", weights_only=True)
    assert saved["step"] == 9 and len(saved["losses"]) == 9  # the last multiple of 3 before the stop
    torch.manual_seed(12345)  # a restarted process has another global RNG state: the checkpoint restores it
    with checkpointing(tmp_path / "partial"):
        resumed, resumed_loss = tiny_run(config)
    assert torch.equal(flat(resumed), flat(reference)) and resumed_loss == reference_loss


def test_a_non_finite_loss_stops_training_names_the_step_and_keeps_the_last_checkpoint(tmp_path, one_thread):
    config = TrainConfig(steps=20, batch_size=8, checkpoint_every=3)
    with checkpointing(tmp_path / "partial"), pytest.raises(FloatingPointError) as err:
        tiny_run(config, nan_at=7)
    message = str(err.value)
    assert "the loss is nan at step 7" in message and "last good training checkpoint (step 6)" in message
    assert str(tmp_path / "partial" / "fit-0.pt") in message and "Lower lr" in message
    assert torch.load(tmp_path / "partial" / "fit-0.pt", weights_only=True)["step"] == 6
    with pytest.raises(FloatingPointError, match="at step 1; training stopped and no training checkpoint was written"):
        tiny_run(config, nan_at=1)


def context(root: Path) -> BuildContext:
    return BuildContext(world=None, device=torch.device("cpu"), checkpoint_root=root, backbone={}, train={},
                        progress=False)


def test_ctx_checkpoint_keeps_the_partial_folder_on_failure_and_removes_it_once_saved(tmp_path, one_thread):
    config = TrainConfig(steps=12, batch_size=8, checkpoint_every=4)
    ctx = context(tmp_path)
    recipe = {"train": config.__dict__}

    def failing(directory: Path) -> None:
        tiny_run(config, nan_at=9)

    with pytest.raises(FloatingPointError, match="step 9.*step 8"):
        ctx.checkpoint("mlp", recipe, failing)
    [partial] = tmp_path.glob("mlp-*.partial")
    assert (partial / "fit-0.pt").is_file() and not is_saved(partial.with_suffix(""))

    def training(directory: Path) -> None:
        ema, _ = tiny_run(config)
        save_pretrained(directory, ema.state_dict(), {"kind": "mlp"})

    directory = ctx.checkpoint("mlp", recipe, training)
    assert is_saved(directory) and sorted(p.name for p in tmp_path.iterdir()) == [directory.name]


def test_checkpoint_every_leaves_recipe_hashes_as_they_were(tmp_path):
    """Cache folders are named by the recipe hash: adding the resume-only knob must not rename them."""
    before = {"steps": 3, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "warmup": 50, "ema_decay": 0.999,
              "grad_clip": 1.0, "cfg_dropout": 0.1, "seed": 0}  # TrainConfig's fields before checkpoint_every
    expected = f"r-{stable_hash({'train': before, 'w': 1})[:12]}"
    for every in (0, 7, 200):
        config = TrainConfig(steps=3, batch_size=8, checkpoint_every=every)
        assert "checkpoint_every" in config.__dict__  # what the trainers put in their recipes
        recipe = {"train": config.__dict__, "w": 1}
        saved = context(tmp_path).checkpoint("r", recipe, lambda d: save_pretrained(d, {}, {}))
        assert saved.name == expected
    # the lr schedule came later too: at its default it leaves the names alone, a cosine schedule renames
    constant = TrainConfig(steps=3, batch_size=8, schedule="constant", final_lr_ratio=0.5)
    cosine = TrainConfig(steps=3, batch_size=8, schedule="cosine")
    assert context(tmp_path).checkpoint("r", {"train": constant.__dict__, "w": 1}, lambda d: None).name == expected
    assert stable_hash(weights_recipe({"train": cosine.__dict__, "w": 1})) != stable_hash({"train": before, "w": 1})


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    config = TrainConfig(steps=110, warmup=10, lr=1.0, schedule="cosine", final_lr_ratio=0.1)
    factors = [config.lr_factor(s) for s in range(110)]
    assert factors[:10] == [pytest.approx((s + 1) / 10) for s in range(10)]
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.55) and factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert TrainConfig(steps=110, warmup=10).lr_factor(100) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_fit_reports_gradient_norms_after_warm_up(one_thread):
    """Loss (step + 1) w has gradient norm step + 1: after 4 warm-up steps the norms are 5..12."""
    model = nn.Linear(1, 1, bias=False)
    config = TrainConfig(steps=12, batch_size=8, warmup=4, checkpoint_every=0)
    _, stats = fit(model, lambda step: (step + 1.0) * model.weight.sum(), config, progress=False)
    assert stats.grad_norm_max == pytest.approx(12.0) and stats.grad_norm_median == pytest.approx(9.0)
    assert stats.grad_norm_max_step == 11


KILL_PRESET = (
    TINY_PRESET.replace('"fm-teacher-4", "ntm", "ntm-no-transporter"]', '"fm-teacher-4", "ntm"]')
    .replace("[train.flow_matching]\nsteps = 3\n", "[train.flow_matching]\nsteps = 24\ncheckpoint_every = 4\n")
    .replace("[train.ntm]\nsteps = 3\n", "[train.ntm]\nsteps = 16\ncheckpoint_every = 4\n")
)


def launch(preset: Path, out: Path, log: Path) -> subprocess.Popen:
    """`ntm-bench reproduce` in a fresh process, single-threaded (bit-identity across processes needs the same
    thread count)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cli", "reproduce", "--preset", str(preset), "--out", str(out), "--no-progress"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """SIGKILL `process` as soon as `ready()` holds; fails if it finished first."""
    deadline = time.monotonic() + 120
    while not ready():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within 120 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def contents(out: Path) -> dict[str, object]:
    """Every file under checkpoints/ and records/ (hidden ones too): weights by sha256, summaries minus the
    run's wall time and write time, other record files as bytes. Configs of checkpoints hold the training wall time and are
    compared without it."""
    found: dict[str, object] = {}
    for path in sorted(p for folder in ("checkpoints", "records") for p in (out / folder).rglob("*")):
        name = str(path.relative_to(out))
        if path.is_dir():
            found[name] = "dir"
        elif path.name.endswith(".summary.json"):
            found[name] = json.loads(path.read_text()) | {"wall_s": None, "written_at": None}
        elif path.name == "config.json":
            config = json.loads(path.read_text())
            config["metadata"]["stats"] |= {"wall_s": None, "samples_per_s": None}
            found[name] = config
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_sigkilled_reproduce_restarted_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    preset = tmp_path / "kill.toml"
    preset.write_text(KILL_PRESET)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    log = tmp_path / "log.txt"
    uninterrupted = launch(preset, reference, tmp_path / "reference.txt")
    checkpoints, records = interrupted / "checkpoints", interrupted / "records"

    run = launch(preset, interrupted, log)  # 1: mid-training of the teacher, right after a training checkpoint
    kill_when(run, lambda: any(checkpoints.glob("flow_matching-*.partial/fit-0.pt")), "a teacher checkpoint")
    assert not any(is_saved(p) for p in checkpoints.glob("flow_matching-*"))

    run = launch(preset, interrupted, log)  # 2: mid-training of the NTM (the teacher resumed and finished)
    kill_when(run, lambda: any(checkpoints.glob("ntm-*.partial/fit-0.pt")), "an NTM checkpoint")
    assert not any(is_saved(p) for p in checkpoints.glob("ntm-*"))
    # what a kill while writing the NTM's folder leaves: a hidden, half-written temporary
    [partial] = checkpoints.glob("ntm-*.partial")
    half = checkpoints / f".{partial.name.removesuffix('.partial')}.killed"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)

    run = launch(preset, interrupted, log)  # 3: mid-evaluation, after the first record
    kill_when(run, lambda: any(records.glob("*/*.summary.json")), "a record")
    assert uninterrupted.wait(timeout=180) == 0, (tmp_path / "reference.txt").read_text()
    expected = contents(reference)
    summaries = [n for n in expected if n.endswith(".summary.json")]
    assert len(summaries) == 6 and len(list(records.glob("*/*.summary.json"))) < 6
    # what a kill while writing a record leaves: a temporary beside a record not written yet
    missing = next(n for n in summaries if not (interrupted / n).exists())
    temporary = (interrupted / missing).with_name(f".{Path(missing).name}.killed")
    temporary.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_text('{"half": ')

    run = launch(preset, interrupted, log)  # 4: to the end
    assert run.wait(timeout=180) == 0, log.read_text()
    assert contents(interrupted) == expected
    assert not any(p.name.endswith((".partial", ".lock")) or p.name.startswith(".") for p in checkpoints.iterdir())


def test_a_resumed_ntm_training_keeps_its_teacher_pass_count(tmp_path, one_thread, monkeypatch):
    """The alignment teacher sits beside the NTM, not inside it: its count must travel in the checkpoint."""
    import dataclasses

    import baselines.ntm as ntm_adapter
    from benchmarks.presets import load_preset
    from benchmarks.runner import train

    path = tmp_path / "p.toml"
    path.write_text(TINY_PRESET.replace("[train.ntm]\nsteps = 3\nbatch_size = 4", "[train.ntm]\nsteps = 6\nbatch_size = 4\nwarmup = 2\ncheckpoint_every = 2"))
    preset = load_preset(path)
    options = {"init": "teacher", "align_steps": 6, "step_counts": [4, 8]}
    preset = dataclasses.replace(preset, model_options=preset.model_options | {"ntm": options})
    whole = train(preset, tmp_path / "whole", "ntm", progress=False).spec.training["teacher_nfe"]
    assert whole > 0
    real_batch, calls = ntm_adapter.training_batch, {"n": 0}

    def stop_at_five(world, step, *args):
        if step == 5 and calls["n"] == 0:
            calls["n"] += 1
            raise Stop
        return real_batch(world, step, *args)

    monkeypatch.setattr(ntm_adapter, "training_batch", stop_at_five)
    with pytest.raises(Stop):
        train(preset, tmp_path / "cut", "ntm", progress=False)
    resumed = train(preset, tmp_path / "cut", "ntm", progress=False).spec.training["teacher_nfe"]
    assert resumed == whole
    # the training log (per-step NLLs, the alignment's gradient share) and the gradient norms travel too
    from ntm.checkpoint import read_metadata

    metas = [read_metadata(next((tmp_path / run / "checkpoints").glob("ntm-*[!.lock]"))) for run in ("whole", "cut")]
    # (at step 0 the predictor is the teacher: the alignment and its gradient share are 0)
    assert metas[0]["log"] == metas[1]["log"] and metas[0]["log"][0]["align_grad_share"] == 0
    assert metas[0]["stats"]["grad_norm_max"] == metas[1]["stats"]["grad_norm_max"]
