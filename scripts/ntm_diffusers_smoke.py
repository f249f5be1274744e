"""The paper path (`ntm-diffusers`) end to end on a tiny config-built SD3 pipeline: a check of a GPU machine.

Builds a random-weight SD3 pipeline from configs (tests/tiny_pipelines.py: two CLIP encoders, T5, a two-level VAE,
a one-layer MMDiT), saves it to a folder, writes a caption folder of noisy flat-colour photos, then runs
`ntm-bench train ntm-diffusers` and the nll suite through the CLI's own code path: bf16 autocast and gradient
checkpointing on CUDA, float32 on CPU. The training prints its throughput (and peak memory on CUDA). Nothing is
downloaded. Weights are random, so the numbers say how fast the path runs, not how good a model is.

    python scripts/ntm_diffusers_smoke.py --device cuda --out /tmp/ntm-diffusers-smoke [--steps 50 --res 32]
Under torchrun (several GPUs): torchrun --standalone --nproc-per-node N scripts/ntm_diffusers_smoke.py ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ntm-diffusers-smoke"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--res", type=int, default=32, help="image side in px, at most 32 (latents are half of it)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from ntm import distributed

    distributed.init()
    out = args.out
    pipeline, photos, train_folder = out / "sd3", out / "photos", out / "train"
    if distributed.is_main() and not (pipeline / "model_index.json").is_file():
        from tests import tiny_pipelines

        tiny_pipelines.save_sd3(pipeline)
        rng = np.random.default_rng(0)
        words = ["a red circle", "a blue square", "two green circles", "a big yellow square"]
        for folder, split in ((photos, None), (train_folder, "train")):
            folder.mkdir(parents=True, exist_ok=True)
            rows = []
            for i in range(16):
                pixels = np.clip(rng.normal(15 * i + 20, 30, (args.res, args.res, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                rows.append({"file": f"{i}.png", "caption": words[i % 4]} | ({"split": split} if split else {}))
            (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    distributed.barrier()
    preset = out / "smoke.toml"
    if distributed.is_main():
        preset.write_text(f"""
description = "ntm-diffusers smoke run on a tiny random SD3 pipeline"
world = "folder"
resolution = {args.res}
device = "{args.device}"
seeds = [0]
models = ["ntm-diffusers"]
suites = ["nll"]
backbone = {{}}

[world_options]
path = "{photos}"

[train.ntm_diffusers]
steps = {args.steps}
batch_size = {args.batch_size}
warmup = 5
lr = 1e-4
checkpoint_every = 0

[model_options.ntm-diffusers]
init = "diffusers:{pipeline}"
data = "{train_folder}"
guidance = 2.0
bound_samples = 2
max_sequence_length = 16
transporter = {{ patch = 2, width = 64, blocks = 2, layers = 2, heads = 4, spline_bins = 8 }}

[suite_options.nll]
images = 8
batch_size = 8
""")
    distributed.barrier()
    from benchmarks.presets import load_preset
    from benchmarks.runner import train

    p = load_preset(preset)
    began = time.perf_counter()
    generator = train(p, out / "results", "ntm-diffusers", progress=False)
    trained = time.perf_counter() - began
    if not distributed.main_goes_on():
        return
    from benchmarks.suites import get_suite
    from benchmarks.worlds import get_world

    began = time.perf_counter()
    images = generator.sample(["a red circle"] * 8, list(range(8)))
    sampled = time.perf_counter() - began
    world = get_world("folder", args.res, path=str(photos))
    metrics = get_suite("nll", {"images": 8, "batch_size": 8}).run(generator, world, seed=0, progress=False).metrics
    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device.startswith("cuda") else "cpu",
        "train_wall_s": round(trained, 2), "train_steps": args.steps, "batch_size": args.batch_size,
        "sample_images_per_s": round(len(images) / sampled, 2), "nll_latent_bpd": metrics["nll_latent_bpd"],
        "nll_traj_latent_bpd": metrics["nll_traj_latent_bpd"], "training": dict(generator.spec.training),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    distributed.shutdown()


if __name__ == "__main__":
    main()
