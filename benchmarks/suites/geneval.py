"""GenEval-style compositional accuracy (Ghosh et al., 2023), scored by the world's detector.

Prompts come from the world's grammar in GenEval's six task kinds; each image is read back into
objects by the world's detector (the exact scene parser for shapes) and judged by GenEval's rules,
with a human-readable reason per image. Overall = mean of the per-task accuracies.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def suite_prompts(world, options: GenevalOptions) -> list[dict]:
    """The GenEval-style metadata rows the suite samples on `world` (the same for every run seed)."""
    if not world.categories:
        raise NotApplicable(f"world {world.name!r} has no GenEval-style prompts")
    return world.prompts(options.prompts_per_category, seed=options.prompt_seed)


def suite_items(entries: Sequence[dict], images_per_prompt: int, seed: int) -> tuple[list[tuple[int, dict]], list[int]]:
    """(prompt index, row) for every image, `images_per_prompt` consecutive ones per row, and each image's seed:
    image k of prompt p is item p * images_per_prompt + k, seeded `item_seed(seed, item)`."""
    items = [(p, e) for p, e in enumerate(entries) for _ in range(images_per_prompt)]
    return items, [item_seed(seed, i) for i in range(len(items))]


class GenevalSuite(Suite):
    """GenEval-style compositional accuracy, six tasks, scored by the world's detector."""

    name = "geneval"
    version = "1"
    Options = GenevalOptions

    def run(self, generator: Generator, world, seed: int, progress: bool = True) -> SuiteResult:
        o = self.options
        items, seeds = suite_items(suite_prompts(world, o), o.images_per_prompt, seed)
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
