"""Transporter screening: NTM variants trained from the tiny teacher, scored by held-out per-step NLL.

Each run trains one NTM variant for --steps optimiser steps (tiny budget otherwise: batch 16, lr 1e-3,
alignment to the teacher over 500 steps, EMA 0.999) with separate learning rates for predictor and
transporter, then reports the exact per-step trajectory NLL (nats, 2 forward chains per image) and an
IWAE(4) bound on 128 held-out renders, for the EMA and the raw weights, into OUT/NAME.json.
Usage: python scripts/transporter_screen.py --name t --teacher results/tiny/checkpoints/flow_matching-<hash>
Numbers in the issue notes came from this script on 2 CPU cores (one run at a time).
"""
import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path
import torch
from torch import nn
from benchmarks.presets import load_preset
from benchmarks.runner import build_context
from baselines.ntm import ntm_config
from baselines.training import training_batch, per_sample_noise
from baselines.base import to_model_space
from ntm.model import NTM, alignment_weight
from ntm.teacher import FlowMatchingTeacher
from ntm.train import ema_decay

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--teacher", required=True, help="a flow_matching checkpoint folder of the tiny preset")
p.add_argument("--out", default="runs/transporter_screen")
p.add_argument("--transporter", type=int, default=1)
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--tlr", type=float, default=1.0)
p.add_argument("--clip", default="global")
p.add_argument("--mode", default="end_to_end")
p.add_argument("--mls", type=float, default=3.0)
p.add_argument("--blocks", type=int, default=2)
p.add_argument("--layers", type=int, default=1)
p.add_argument("--width", type=int, default=64)
p.add_argument("--patch", type=int, default=0)
p.add_argument("--spline", type=int, default=0, help="spline_bins of the transporter (0: none)")
p.add_argument("--spline_bound", type=float, default=3.0)
p.add_argument("--align", type=int, default=500)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--tmin_fixed", type=float, default=0.0)
p.add_argument("--eval_tmins", default="0.02", help="comma-separated t_0 values to score at (EMA weights; raw at the first)")
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
preset = load_preset("tiny")
ctx = build_context(preset, a.out, "cpu", progress=False)
cfg = ntm_config(ctx, bool(a.transporter), 4, None)
if cfg.transporter is not None:
    tc = dataclasses.replace(cfg.transporter, max_log_scale=a.mls, blocks=a.blocks, layers=a.layers, width=a.width, spline_bins=a.spline, spline_bound=a.spline_bound, **({"patch": a.patch} if a.patch else {}))
    cfg = dataclasses.replace(cfg, transporter=tc)
cfg = dataclasses.replace(cfg, mode=a.mode)
if a.tmin_fixed:
    import ntm.model as nm
    nm.sample_t_min = lambda n, generator=None, high=0.05, dtype=torch.float64: torch.full((n,), a.tmin_fixed, dtype=dtype)
teacher = FlowMatchingTeacher.from_pretrained(a.teacher, "cpu").requires_grad_(False)
torch.manual_seed(0)
model = NTM.from_teacher(teacher, cfg)
gen = torch.Generator().manual_seed(0)
pp = list(model.predictor.parameters()); tp = [] if model.transporter is None else list(model.transporter.parameters())
groups = [{"params": pp, "lr": a.lr}] + ([{"params": tp, "lr": a.lr * a.tlr}] if tp else [])
opt = torch.optim.AdamW(groups, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
ema = copy.deepcopy(model).eval().requires_grad_(False)
t0 = time.time(); hist = []
for step in range(a.steps):
    x0, caps = training_batch(ctx.world, step, 16, 0, 0.1, ctx.device)
    tok = model.encode_text(caps)
    loss = model.loss(x0, tok, gen).mean()
    w = alignment_weight(step, a.align)
    if w > 0:
        loss = loss + w * model.alignment_loss(teacher, x0, tok, gen).mean()
    opt.zero_grad(); loss.float().backward()
    if a.clip == "global":
        gn = nn.utils.clip_grad_norm_(pp + tp, 1.0); gt = torch.tensor(0.)
    else:
        gn = nn.utils.clip_grad_norm_(pp, 1.0); gt = nn.utils.clip_grad_norm_(tp, 1.0) if tp else torch.tensor(0.)
    opt.step(); sched.step()
    with torch.no_grad():
        d = ema_decay(step, 0.999)
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)
    hist.append(loss.item())
    if step % 250 == 0 or step == a.steps - 1:
        print(f"{a.name} step {step} loss {sum(hist[-50:])/len(hist[-50:]):.4f} gn {float(gn):.2f} gt {float(gt):.2f} {time.time()-t0:.0f}s", flush=True)
train_s = time.time() - t0
# evaluation: 128 held-out images, exact trajectory NLL per step (2 draws) + IWAE(4)
n = 128
batch = ctx.world.batch(list(range(n)), split="test")
noise = torch.stack([torch.rand(batch.images.shape[1:], generator=torch.Generator().manual_seed(1000 + i), dtype=torch.float64) for i in range(n)])
x = to_model_space(batch.images, noise)
D = x[0].numel()
res = {}
model.eval()
tmins = [float(v) for v in a.eval_tmins.split(",")]
for m, tag, grid_tmins in ((ema, "ema", tmins), (model, "raw", tmins[:1])):
    for t_min in grid_tmins:
        with torch.no_grad():
            tok = m.encode_text(batch.captions)
            times = m.times(t_min)
            steps_nll = []
            for r in range(2):
                nz = per_sample_noise([5000 * r + i for i in range(n)], (4, *x.shape[1:]), "cpu").transpose(0, 1)
                traj, _ = m.chain_from(x, times, nz)
                lp, per = m.trajectory_log_prob(traj, times, tok)
                steps_nll.append(-per)
            per = torch.stack(steps_nll).mean(0)  # (n, K)
            bound = m.data_bound(x, tok, 4, list(range(n)), t_min=t_min)
        key = tag if t_min == tmins[0] else f"{tag}@{t_min}"
        res[key] = {"t_min": t_min, "per_step_nats": per.mean(0).tolist(),
                    "traj_bpd": float(per.sum(1).mean() / (D * math.log(2))),
                    "iwae_bpd": float((-bound.iwae_nats).mean() / (D * math.log(2))),
                    "iwae_nats_per_img": (-bound.iwae_nats).tolist()}
out = {"name": a.name, "args": vars(a), "train_s": train_s, **res}
Path(a.out).mkdir(parents=True, exist_ok=True)
(Path(a.out) / f"{a.name}.json").write_text(json.dumps(out))
torch.save(ema.state_dict(), Path(a.out) / f"{a.name}.ema.pt")
for tag in res:
    print(a.name, tag, "train_s", round(train_s), "per_step", [round(v, 1) for v in res[tag]["per_step_nats"]],
          "sum", round(sum(res[tag]["per_step_nats"]), 1), "iwae_bpd_cont", round(res[tag]["iwae_bpd"], 4))
