"""CLIPScore (Hessel et al., 2021): image-prompt agreement of generated images, by a CLIP's cosine similarity.

Hessel et al. define CLIP-S(I, C) = w max(cos(E_I, E_C), 0) with w = 2.5. We follow torchmetrics'
CLIPScore (torchmetrics 1.9, functional/multimodal/clip_score.py): `_clip_score_update` L2-normalises
both embeddings and scores each pair 100 cos(E_I, E_C); `clip_score` (and `CLIPScore.compute`) then
averages the pairs and clamps the *mean* at 0. So `clipscore` = max(mean_i 100 cos_i, 0), which equals
Hessel's per-pair clamp (with w = 100) whenever every cosine is >= 0; rows keep each unclamped 100 cos_i.

Images are generated for the world's GenEval-style prompts (as the geneval suite draws them) and
scored by the world's eval-CLIP (benchmarks/features.py), or, for real images, by the open_clip
model in the local folder `clip_path` (e.g. ViT-L/14; nothing is downloaded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baselines.base import Generator
from benchmarks.features import CONFIG_FILE, WEIGHTS_FILE, EvalClip, load_eval_clip
from benchmarks.suites.base import NotApplicable, Suite, SuiteResult, item_seed, sample_all


@dataclass(frozen=True)
class ClipScoreOptions:
    prompts_per_category: int = 8
    images_per_prompt: int = 4
    prompt_seed: int = 0
    batch_size: int = 64
    clip_path: str | None = None


def clip_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[float, np.ndarray]:
    """(max(mean_i 100 cos_i, 0), per-pair 100 cos_i) of paired embeddings, as torchmetrics' CLIPScore."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"need paired (N, d) embeddings, got {tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    image = image_features / image_features.norm(p=2, dim=-1, keepdim=True)
    text = text_features / text_features.norm(p=2, dim=-1, keepdim=True)
    per_pair = 100 * (image * text).sum(dim=-1)
    return max(float(per_pair.mean()), 0.0), per_pair.double().numpy()


def load_clip_folder(clip_path: str) -> EvalClip:
    """The open_clip model in a local folder, on the GPU when there is one; a clear error if it is absent."""
    path = Path(clip_path).expanduser()
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"clipscore option clip_path={clip_path!r}: no open_clip model there. Point it at a local folder holding "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} of an open_clip ViT-L/14 (e.g. a copy of the hub repo "
            "laion/CLIP-ViT-L-14-laion2B-s32B-b82K); nothing is downloaded"
        )
    return EvalClip.from_folder(path, "cuda" if torch.cuda.is_available() else "cpu")


class ClipScoreSuite(Suite):
    """CLIPScore of generated images against their prompts (torchmetrics' convention), by the world's eval-CLIP."""

    name = "clipscore"
    version = "1"
    Options = ClipScoreOptions

    def run(self, generator: Generator, world, seed: int, progress: bool = True) -> SuiteResult:
        o = self.options
        entries = world.prompts(o.prompts_per_category, seed=o.prompt_seed)
        if not entries:
            raise NotApplicable(f"world {world.name!r} has no prompts to generate from")
        if o.clip_path is not None:
            clip, clip_name, accuracy = load_clip_folder(o.clip_path), str(o.clip_path), None
        else:
            try:
                clip = load_eval_clip(world.name, world.resolution)
            except FileNotFoundError as missing:
                raise NotApplicable(str(missing)) from None
            clip_name = f"eval-clip-{world.name}-{world.resolution}"
            accuracy = clip.report.get("accuracy")  # held-out retrieval top-1 among 256 captions
        items = [(p, e) for p, e in enumerate(entries) for _ in range(o.images_per_prompt)]
        prompts = [e["prompt"] for _, e in items]
        seeds = [item_seed(seed, i) for i in range(len(items))]
        images = sample_all(generator, prompts, seeds, o.batch_size, f"{generator.spec.name} clipscore", progress)
        score, per_item = clip_scores(clip.image_features(images), clip.text_features(prompts))
        rows = [
            {
                "item": i, "prompt_index": p, "tag": e["tag"], "prompt": e["prompt"], "seed": seeds[i],
                "clipscore": float(s),
            }
            for i, ((p, e), s) in enumerate(zip(items, per_item, strict=True))
        ]
        n = len(per_item)
        metrics = {
            "clipscore": score,
            "clipscore_sem": float(per_item.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "clipscore_feature_hash": clip.weights_hash,
            "clipscore_feature_accuracy": accuracy,
            "clipscore_model": clip_name,
            "clipscore_images": n,
        }
        return SuiteResult(rows, metrics)
