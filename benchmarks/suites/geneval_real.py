"""GenEval at paper scale (Ghosh et al., 2023): its 553 prompts, real images, detector + CLIP colour + its rules.

Each metadata row's prompt is sampled `images_per_prompt` times (GenEval uses 4); each image is read by
OWLv2 and a CLIP colour classifier (`benchmarks.detection`, loaded from local folders) and judged by
GenEval's rules with confidence-ranked colour checks (`geneval_rules.score(..., ranked=True)`). Per-task
accuracy is the fraction of correct images of that task and `geneval_overall` their mean, as in GenEval's
`summary_scores.py`. The metrics are named `geneval_owlv2_*` (`geneval_owlv2_overall`, ...): the detector
is OWLv2, not GenEval's Mask2Former, so they are not GenEval's own numbers (`ntm-bench generate --layout
geneval` + `import-geneval` bring those in as `geneval_official_*`). The world is unused:
prompts come from the metadata file, and images are generated in batches and scored as they come, so only
a small grid of them is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.base import Generator
from benchmarks.detection import (
    CLIP_REPO,
    DETECTOR_REPO,
    QUERY_MODES,
    GenevalDetector,
    SelectionRule,
    clip_folder_problem,
    detector_folder_problem,
    load_detector,
)
from benchmarks.geneval_rules import TAGS, load_geneval_metadata, score

PREFIX = "geneval_owlv2"
"""Metric-name prefix: GenEval's prompts and rules, read by OWLv2 (not GenEval's own detector)."""
from benchmarks.suites.base import Suite, SuiteResult, in_batches, item_seed, sample_all

METADATA = Path(__file__).resolve().parents[1] / "data/geneval/evaluation_metadata.jsonl"
TABLE = "[suite_options.geneval-real]"


@dataclass(frozen=True)
class GenevalRealOptions:
    """`metadata_path` None means GenEval's 553 prompts shipped in benchmarks/data/geneval; `limit` keeps the
    first N prompts (smoke runs); the thresholds are `detection.SelectionRule`'s; `device` "auto" picks CUDA
    when present."""

    metadata_path: str | None = None
    images_per_prompt: int = 4
    detector_path: str | None = None
    clip_path: str | None = None
    batch_size: int = 8
    limit: int | None = None
    per_task_limit: int | None = None
    """Keep the first `per_task_limit` prompts of each task (`--limit`); None keeps all."""
    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    nms_iou: float = 1.0
    queries: str = "all"
    device: str = "auto"
    grid_per_category: int = 2

    def __post_init__(self) -> None:
        if self.queries not in QUERY_MODES:
            raise ValueError(f"queries must be one of {QUERY_MODES}, got {self.queries!r}")
        for name in ("images_per_prompt", "batch_size", "max_objects"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grid_per_category < 0:
            raise ValueError(f"grid_per_category must be >= 0, got {self.grid_per_category}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or unset, got {self.limit}")
        if self.per_task_limit is not None and self.per_task_limit < 1:
            raise ValueError(f"per_task_limit must be >= 1 or unset, got {self.per_task_limit}")
        for name in ("threshold", "counting_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


def check_inputs(options: Mapping[str, Any]) -> list[str]:
    """What stops suite geneval-real from running with `options` (its preset options), found without
    loading a model; each problem names what to download and the preset line to set."""
    problems = []
    metadata = options.get("metadata_path")
    if metadata is not None and not Path(metadata).is_file():
        problems.append(f"geneval-real: metadata_path {metadata} does not exist. Unset it to use GenEval's 553 prompts")
    wanted = (
        ("detector_path", DETECTOR_REPO, "the OWLv2 detector", "/local/owlv2", detector_folder_problem),
        ("clip_path", CLIP_REPO, "the open_clip ViT-L/14 colour model", "/local/clip-vit-l-14", clip_folder_problem),
    )
    for key, repo, what, example, folder_problem in wanted:
        fix = f"Download {repo} (`hf download {repo} --local-dir {example}`) and set {TABLE} {key} = \"{example}\""
        path = options.get(key)
        if path is None:
            problems.append(f"geneval-real: {key} is not set ({what}). {fix}")
        elif not Path(path).is_dir():
            problems.append(f"geneval-real: {key} {path} does not exist. {fix}")
        elif (problem := folder_problem(Path(path))) is not None:
            problems.append(f"geneval-real: {key}: {problem}. {fix}")
    return problems


class GenevalRealSuite(Suite):
    """GenEval on real images: 553 prompts x 4 images, OWLv2 + CLIP colour, GenEval's rules."""

    name = "geneval-real"
    version = "1"
    Options = GenevalRealOptions

    def load_detector(self) -> GenevalDetector:
        """The detection stage from the option folders; FileNotFoundError lists what is missing."""
        o = self.options
        problems = check_inputs(asdict(o))
        if problems:
            raise FileNotFoundError("\n".join(problems))
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if o.device == "auto" else o.device)
        rule = SelectionRule(o.threshold, o.counting_threshold, o.max_objects, o.nms_iou)
        return load_detector(o.detector_path, o.clip_path, device, rule, o.queries)

    def run(self, generator: Generator, world, seed: int, progress: bool = True) -> SuiteResult:
        o = self.options
        path = o.metadata_path or METADATA
        metas = load_geneval_metadata(path)[: o.limit]
        if o.per_task_limit is not None:
            kept, seen = [], {}
            for m in metas:
                seen[m["tag"]] = seen.get(m["tag"], 0) + 1
                if seen[m["tag"]] <= o.per_task_limit:
                    kept.append(m)
            metas = kept
        if not metas:
            raise ValueError(f"no GenEval prompts in {path}")
        detector = self.load_detector()
        items = [(p, meta) for p, meta in enumerate(metas) for _ in range(o.images_per_prompt)]
        seeds = [item_seed(seed, i) for i in range(len(items))]
        def evaluate(part: slice) -> list[tuple[dict, np.ndarray]]:
            """(row, image) per item of `part`: returned, not appended, so several processes can share the batches."""
            chunk = items[part]
            images = sample_all(generator, [m["prompt"] for _, m in chunk], seeds[part], len(chunk), "", False)
            scored = []
            for i, (p, meta), image, found in zip(
                range(part.start, part.stop), chunk, images, detector(images, [m for _, m in chunk]), strict=True
            ):
                correct, reason = score([d for d, _ in found], meta, ranked=True)
                row = {
                    "item": i, "prompt_index": p, "tag": meta["tag"], "prompt": meta["prompt"], "seed": seeds[i],
                    "correct": bool(correct), "reason": reason,
                    "detections": [asdict(d) | {"score": s} for d, s in found],
                }
                scored.append((row, image))
            return scored

        rows: list[dict] = []
        grid: dict[str, list[tuple[np.ndarray, str]]] = {}
        for part in in_batches(evaluate, len(items), o.batch_size, f"{generator.spec.name} geneval-real", progress):
            for row, image in part:
                rows.append(row)
                shown = grid.setdefault(row["tag"], [])
                if len(shown) < o.grid_per_category:
                    shown.append((image, row["prompt"]))
        tags = [t for t in TAGS if any(r["tag"] == t for r in rows)]
        per_task = {t: float(np.mean([r["correct"] for r in rows if r["tag"] == t])) for t in tags}
        by_prompt: dict[int, bool] = {}
        for r in rows:
            by_prompt[r["prompt_index"]] = by_prompt.get(r["prompt_index"], False) or r["correct"]
        metrics: dict[str, Any] = {f"{PREFIX}_{t}": acc for t, acc in per_task.items()}
        metrics[f"{PREFIX}_overall"] = float(np.mean(list(per_task.values())))
        metrics[f"{PREFIX}_prompts_correct"] = float(np.mean(list(by_prompt.values())))
        metrics[f"{PREFIX}_images"] = len(rows)
        shown = [pair for t in tags for pair in grid[t]]
        artifacts = (
            {"images": np.stack([im for im, _ in shown]), "prompts": np.array([pr for _, pr in shown])} if shown else {}
        )
        return SuiteResult(rows, metrics, artifacts)
