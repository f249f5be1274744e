"""GenEval-style compositional accuracy (Ghosh et al., 2023), scored by the world's detector.

Prompts come from the world's grammar in GenEval's six task kinds; each image is read back into
objects by the world's detector (the exact scene parser for shapes) and judged by GenEval's rules,
with a human-readable reason per image. Overall = mean of the per-task accuracies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from baselines.base import Generator
from benchmarks.geneval_rules import score
from benchmarks.suites.base import NotApplicable, Suite, SuiteResult, item_seed, sample_all


@dataclass(frozen=True)
class GenevalOptions:
    prompts_per_category: int = 8
    images_per_prompt: int = 4
    prompt_seed: int = 0
    batch_size: int = 64
    grid_per_category: int = 4


class GenevalSuite(Suite):
    """GenEval-style compositional accuracy, six tasks, scored by the world's detector."""

    name = "geneval"
    version = "1"
    Options = GenevalOptions

    def run(self, generator: Generator, world, seed: int, progress: bool = True) -> SuiteResult:
        o = self.options
        if not world.categories:
            raise NotApplicable(f"world {world.name!r} has no GenEval-style prompts")
        entries = world.prompts(o.prompts_per_category, seed=o.prompt_seed)
        items = [(p, e) for p, e in enumerate(entries) for _ in range(o.images_per_prompt)]
        seeds = [item_seed(seed, i) for i in range(len(items))]
        images = sample_all(
            generator, [e["prompt"] for _, e in items], seeds, o.batch_size, f"{generator.spec.name} geneval", progress
        )
        rows = []
        for i, ((p, entry), image) in enumerate(zip(items, images, strict=True)):
            detections = world.detect(image)
            correct, reason = score(detections, entry)
            rows.append(
                {
                    "item": i, "prompt_index": p, "tag": entry["tag"], "prompt": entry["prompt"],
                    "seed": seeds[i], "correct": bool(correct), "reason": reason,
                    "detections": [asdict(d) for d in detections],
                }
            )
        per_task = {
            tag: float(np.mean([r["correct"] for r in rows if r["tag"] == tag])) for tag in world.categories
        }
        metrics = {f"geneval_{tag}": acc for tag, acc in per_task.items()}
        metrics["geneval_overall"] = float(np.mean(list(per_task.values())))
        metrics["geneval_images"] = len(rows)
        grid = [i for tag in world.categories for i in [r["item"] for r in rows if r["tag"] == tag][: o.grid_per_category]]
        artifacts = {"images": images[grid], "prompts": np.array([rows[i]["prompt"] for i in grid])}
        return SuiteResult(rows, metrics, artifacts)
