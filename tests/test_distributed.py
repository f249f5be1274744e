"""Several processes (torchrun, gloo on CPU) give what one process gives: training and sharded evaluation.

The two-process halves run this file as a script under `python -m torch.distributed.run` (see `main`), each
rank writing what it saw into a folder; the tests compare that with the same work done in this process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ntm import distributed
from ntm.train import TrainConfig, checkpointing, fit

ROOT = Path(__file__).resolve().parents[1]

MICRO_PRESET = """
description = "distributed test: micro budgets, suites in several uneven batches"
world = "shapes"
resolution = 16
device = "cpu"
seeds = [0]
models = ["ground-truth", "fm-teacher-4", "ntm"]
suites = ["geneval", "nll"]

[backbone]
size = "tiny"
patch = 4
transporter = { width = 32, blocks = 2, spline_bins = 8 }

[train.flow_matching]
steps = 20
batch_size = 8
checkpoint_every = 8

[train.ntm]
steps = 10
batch_size = 4

[model_options.ntm]
guidance = 2.0
bound_samples = 2

[model_options.fm-teacher-4]
guidance = 2.0
likelihood = { steps = 2, probes = 1 }

[suite_options.geneval]
prompts_per_category = 1
images_per_prompt = 2
batch_size = 5

[suite_options.nll]
images = 6
batch_size = 4
"""

TOY = TrainConfig(steps=60, batch_size=8, lr=0.1, warmup=3, ema_decay=0.9, grad_clip=2.0, checkpoint_every=0)
"""Clipping bites in the first steps (large errors) and not at the end, so the final gradients compare as is."""


class Killed(Exception):
    """A run stopped part-way (as if killed), to be resumed from its training checkpoint."""


def toy_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step` of a linear regression, drawn whole from (seed, step), then this rank's share."""
    rng = np.random.default_rng([11, step])
    x = torch.from_numpy(rng.normal(size=(TOY.batch_size, 3)))
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]], dtype=torch.float64) + 3.0 + 0.1 * torch.from_numpy(rng.normal(size=(TOY.batch_size, 1)))
    return distributed.shard(x), distributed.shard(y)


def toy_fit(config: TrainConfig = TOY, noise: bool = False, fail_at: int | None = None) -> dict[str, torch.Tensor]:
    """fit a float64 linear model; with `noise`, targets get noise from a generator in fit's state."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    gen = torch.Generator().manual_seed(5)
    first_noise = []

    def step_loss(step: int) -> torch.Tensor:
        if step == fail_at:
            raise Killed(f"killed at step {step}")
        x, y = toy_batch(step)
        if noise:
            eps = torch.randn(y.shape, generator=gen, dtype=torch.float64)
            first_noise.append(eps)
            y = y + 0.5 * eps
        return (model(x) - y).square().mean()

    ema, stats = fit(model, step_loss, config, progress=False, state={"noise": gen} if noise else None)
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    out |= {f"ema.{k}": v.detach().clone() for k, v in ema.state_dict().items()}
    out |= {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()}
    out["final_loss"] = torch.tensor(stats.final_loss)
    if first_noise:
        out["first_noise"] = first_noise[0]
    return out


def toy_worker(out: Path) -> dict[str, object]:
    """What the two-process toy run records per rank (also run in one process for the reference)."""
    from baselines.training import training_batch
    from benchmarks.worlds import get_world

    plain = toy_fit()
    uninterrupted = toy_fit(TrainConfig(**(TOY.__dict__ | {"steps": 10})), noise=True)
    with checkpointing(out / "partial"):
        try:
            toy_fit(TrainConfig(**(TOY.__dict__ | {"steps": 10, "checkpoint_every": 4})), noise=True, fail_at=6)
        except Killed:
            pass
    with checkpointing(out / "partial"):
        resumed = toy_fit(TrainConfig(**(TOY.__dict__ | {"steps": 10, "checkpoint_every": 4})), noise=True)
    images, captions = training_batch(get_world("shapes", 16), 3, 8, 0, 0.5, torch.device("cpu"))
    return {
        "plain": plain, "uninterrupted": uninterrupted, "resumed": resumed, "images": images, "captions": captions,
        "batches": batches_worker(),
    }


def batches_worker() -> dict[str, object]:
    """in_batches: 4 uneven slices shared out, an in_batches nested in one, and side effects refused."""
    from benchmarks.suites.base import in_batches

    def outer(part: slice) -> dict[str, object]:
        inner = in_batches(lambda q: torch.arange(part.start, part.stop)[q] * 2, part.stop - part.start, 2, "", False)
        return {"slice": (part.start, part.stop), "values": torch.cat(inner), "rank": distributed.rank()}

    refused = ""
    if distributed.world_size() > 1:
        try:
            in_batches(lambda part: None, 4, 1, "side effects", False)
        except RuntimeError as err:
            refused = str(err)
    return {"outputs": in_batches(outer, 11, 3, "", False), "refused": refused}


def run_two(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """This file as a script on two gloo ranks (torchrun --standalone picks a free port)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def test_two_processes_train_like_one_and_resume_to_the_bit(tmp_path, one_thread):
    run_two(["toy", str(tmp_path)], timeout=120)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    single = toy_worker(tmp_path / "single")

    # both ranks hold the very same weights, EMA and (averaged) gradients
    for key, value in ranks[0]["plain"].items():
        assert torch.equal(value, ranks[1]["plain"][key]), key
    # ... and they are the one-process run's: gradients averaged (a sum doubles grad.*), batches shared out
    for key, value in single["plain"].items():
        torch.testing.assert_close(ranks[0]["plain"][key], value, rtol=0, atol=1e-6, msg=key)
    norm = torch.cat([ranks[0]["plain"]["grad.weight"].flatten(), ranks[0]["plain"]["grad.bias"]]).norm()
    assert 0.01 < norm < TOY.grad_clip / 2  # a gradient worth comparing, and not clipped (a summed one would be too)

    # the noise generator in fit's state runs a stream per rank, and a killed run resumes to the bit
    assert not torch.equal(ranks[0]["uninterrupted"]["first_noise"], ranks[1]["uninterrupted"]["first_noise"])
    assert torch.equal(ranks[0]["uninterrupted"]["first_noise"], torch.randn((4, 1), generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    for r in (0, 1):
        for key, value in ranks[r]["uninterrupted"].items():
            if key != "first_noise":
                assert torch.equal(ranks[r]["resumed"][key], value), (r, key)
                assert torch.equal(ranks[1 - r]["uninterrupted"][key], value), (r, key)

    # in_batches: rank r ran slices r, r + 2, ...; every rank got all outputs in order, nested calls ran whole
    for r in (0, 1):
        outputs = ranks[r]["batches"]["outputs"]
        assert [o["slice"] for o in outputs] == [o["slice"] for o in single["batches"]["outputs"]]
        assert [o["rank"] for o in outputs] == [0, 1, 0, 1]
        assert all(torch.equal(o["values"], e["values"]) for o, e in zip(outputs, single["batches"]["outputs"], strict=True))
        assert "returned None" in ranks[r]["batches"]["refused"]

    # training_batch: the same full draw, each rank its share [rank::2], rendered alike
    for r in (0, 1):
        torch.testing.assert_close(ranks[r]["images"], single["images"][r::2], rtol=0, atol=0)
        assert ranks[r]["captions"] == single["captions"][r::2]


def test_shard_needs_an_even_split_and_is_the_identity_in_one_process(monkeypatch):
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    items = list(range(6))
    assert distributed.shard(items) is items
    with monkeypatch.context() as m:  # rank 1 of 3 and of 4, without a process group
        m.setattr(distributed, "world_size", lambda: 3)
        m.setattr(distributed, "rank", lambda: 1)
        assert distributed.shard(items) == [1, 4]
        m.setattr(distributed, "world_size", lambda: 4)
        with pytest.raises(ValueError, match="a batch of 6 does not split evenly over 4 processes; make the batch_size"):
            distributed.shard(items)
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}] and distributed.broadcast(3) == 3
    assert not distributed.init()  # WORLD_SIZE unset: nothing to join
    g = torch.ones(2, requires_grad=True)
    (g * 3).sum().backward()
    distributed.average_gradients([g])
    assert g.grad.tolist() == [3.0, 3.0]


def test_reproduce_on_two_processes_records_what_one_process_records(tmp_path, one_thread):
    from benchmarks.presets import load_preset
    from benchmarks.records import RecordStore
    from benchmarks.runner import evaluate
    from ntm.checkpoint import weights_hash

    preset = tmp_path / "micro.toml"
    preset.write_text(MICRO_PRESET)
    two, one = tmp_path / "two", tmp_path / "one"
    done = run_two(["reproduce", str(preset), str(two)], timeout=240)
    assert done.stdout.count("| fm-teacher-4 |") == 1  # rank 0 alone prints the table

    # every model was trained by both ranks to the same weights; rank 1 kept no files of its own
    seen = [json.loads((two / f"trained.rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1] and {name.split("-")[0] for name in seen[0]} == {"flow_matching", "ntm"}
    checkpoints = two / "checkpoints"
    for name, digest in seen[0].items():
        assert weights_hash(checkpoints / name) == digest
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == sorted(seen[0])
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]

    # one process evaluates the same preset with those weights: every record is the same
    shutil.copytree(checkpoints, one / "checkpoints")
    evaluate(load_preset(preset), one, progress=False)
    assert not [p for p in (one / "checkpoints").iterdir() if p.name not in seen[0] and p.is_dir()]  # nothing retrained
    stores = RecordStore(two / "records"), RecordStore(one / "records")
    summaries = [{s["record"]: s for s in store.summaries()} for store in stores]
    assert sorted(summaries[0]) == sorted(summaries[1]) and len(summaries[0]) == 3 * 2
    for record, summary in summaries[0].items():
        other = summaries[1][record]
        assert_same(summary["metrics"], other["metrics"], record)
        assert {k: v for k, v in summary.items() if k not in ("wall_s", "written_at", "protocol", "metrics")} == {
            k: v for k, v in other.items() if k not in ("wall_s", "written_at", "protocol", "metrics")
        }
        assert_same(stores[0].rows(summary), stores[1].rows(other), record)
        artifacts = stores[0].artifacts(summary), stores[1].artifacts(other)
        assert artifacts[0].keys() == artifacts[1].keys()
        for key in artifacts[0]:
            assert np.array_equal(artifacts[0][key], artifacts[1][key]), (record, key)


def assert_same(a: object, b: object, where: str) -> None:
    """Equal JSON values, floats within 1e-6 (relative to their size)."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b)), (where, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def reproduce_worker(preset: str, out: str) -> int:
    """`ntm-bench reproduce` on this rank, noting the weights this rank trained for every model."""
    import baselines.base as base
    from cli import app
    from ntm.checkpoint import weights_hash

    trained: dict[str, str] = {}
    train_on_every_rank = base._train_on_every_rank

    def noting(directory: Path, train_fn):
        def train_and_note(folder: Path) -> None:
            train_fn(folder)
            trained[directory.name] = weights_hash(folder)  # rank 0: the folder; rank 1: its scratch copy

        train_on_every_rank(directory, train_and_note)

    base._train_on_every_rank = noting
    code = 0
    try:
        app(["reproduce", "--preset", preset, "--out", out, "--no-progress"])
    except SystemExit as exit_:
        code = exit_.code or 0
    (Path(out) / f"trained.rank{os.environ['RANK']}.json").write_text(json.dumps(trained, sort_keys=True))
    return int(code)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if argv[0] == "toy":
        out = Path(argv[1])
        distributed.init()
        try:
            result = toy_worker(out)
        finally:
            distributed.shutdown()
        torch.save(result, out / f"rank{os.environ['RANK']}.pt")
        return 0
    if argv[0] == "reproduce":
        return reproduce_worker(argv[1], argv[2])
    raise SystemExit(f"unknown worker {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
