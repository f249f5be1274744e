"""GenEval's own folder layout: export samples for its scorer, import the scorer's per-image results.

Export (`write_geneval_layout`) writes what GenEval's `evaluation/evaluate_images.py` (djghosh13/geneval)
reads, one folder per prompt under OUT/<model>:

    OUT/<model>/generation.json            what wrote the folder: model spec, run seed, images per prompt, prompt set
    OUT/<model>/<index:05d>/metadata.jsonl the prompt's GenEval metadata row, one JSON object on one line, with
                                           exactly its own keys (the scorer reads it with json.load)
    OUT/<model>/<index:05d>/samples/<k:04d>.png  image k of that prompt (PNG, channels as the model draws them)
    OUT/<model>/<index:05d>/seeds.json     the prompt, its index and the seed of every image; written last, so its
                                           presence marks the folder complete

`index` is the prompt's position in its source (the suite's prompt list, or the line order of a metadata.jsonl),
also when `limit` keeps only some prompts, so a folder always names the same prompt. The scorer only visits
all-digit folders and `<digits>.png` files in `samples/`, so the two extra JSON files do not disturb it.

Prompts come from a preset's `geneval` suite (`preset_prompts`: the rows and item seeds the suite itself uses,
through `suites.geneval.suite_prompts` and `suite_items`) or from a GenEval-format metadata.jsonl
(`file_prompts`, read by `geneval_rules.load_geneval_metadata`, with the same seed scheme as `geneval-real`).
Image k of prompt p is item p * images_per_prompt + k and gets `item_seed(seed, item)`: with the suite's
images_per_prompt and seed the exported images are the very ones the `geneval` suite scores.

Import (`import_geneval_results`) reads the results file that scorer writes (pandas `to_json(orient="records",
lines=True)`): one JSON object per image with "filename", "tag", "prompt", "correct" (bool), "reason" (str),
"metadata" (the prompt's row as a JSON string) and "details" (detected boxes as a JSON string). It writes one
record of suite `geneval_official` for the model into OUT/records, with GenEval's `summary_scores.py`
aggregation: per task (tag) the fraction of correct images, `geneval_official_overall` their mean,
`geneval_official_prompts_correct` the fraction of prompts (grouped by metadata) with any correct image.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import Progress

from baselines.base import Generator, stable_hash
from benchmarks.geneval_rules import TAGS, load_geneval_metadata, read_jsonl
from benchmarks.records import RecordKey, RecordStore, atomic_write_text, ensure_writable, protocol
from benchmarks.suites.base import NotApplicable, sample_all
from benchmarks.suites.geneval import GenevalOptions, suite_items, suite_prompts
from ntm.checkpoint import atomic_write_bytes

LAYOUTS = ("geneval",)
SUITE = "geneval_official"
SUITE_VERSION = "1"
PREFIX = "geneval_official"
"""Metric-name prefix of imported scores: `geneval_official_overall`, `geneval_official_<tag>`, ..."""
SCORER = "djghosh13/geneval evaluation/evaluate_images.py"
MANIFEST = "generation.json"
SEEDS = "seeds.json"
DEFAULT_IMAGES_PER_PROMPT = 4  # GenEval's own n_samples
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_TAG = re.compile(r"[A-Za-z0-9_]+")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


@dataclass(frozen=True)
class PromptSet:
    """The prompts to export: (index in the source, GenEval metadata row) and the seeds of each row's images."""

    rows: list[tuple[int, dict]]
    seeds: dict[int, list[int]]
    seed: int
    images_per_prompt: int
    prompts_hash: str
    """stable_hash of every row of the source, in order (before `limit`): which prompt an index names."""
    source: dict[str, Any]


def _prompt_set(
    entries: Sequence[dict], images_per_prompt: int, seed: int, limit: int | None, source: dict[str, Any]
) -> PromptSet:
    if images_per_prompt < 1:
        raise ValueError(f"images per prompt must be >= 1, got {images_per_prompt}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 prompt per task, got {limit}")
    if not entries:
        raise ValueError(f"no GenEval prompts in {source}")
    items, seeds = suite_items(entries, images_per_prompt, seed)
    by_prompt: dict[int, list[int]] = {}
    for (p, _), s in zip(items, seeds, strict=True):
        by_prompt.setdefault(p, []).append(s)
    taken: dict[str, int] = {}
    rows = []
    for p, row in enumerate(entries):
        if limit is None or taken.get(row["tag"], 0) < limit:
            taken[row["tag"]] = taken.get(row["tag"], 0) + 1
            rows.append((p, row))
    return PromptSet(
        rows, {p: by_prompt[p] for p, _ in rows}, seed, images_per_prompt, stable_hash(list(entries)), source
    )


def preset_prompts(
    preset: Any, world: Any, images_per_prompt: int | None = None, seed: int | None = None, limit: int | None = None
) -> PromptSet:
    """The prompts of `preset`'s `geneval` suite on `world` (its [suite_options.geneval]); default images per
    prompt the suite's, default seed the preset's first; `limit` keeps the first N prompts of each task."""
    from benchmarks.suites import get_suite

    options: GenevalOptions = get_suite("geneval", preset.suite_options.get("geneval")).options
    try:
        entries = suite_prompts(world, options)
    except NotApplicable as reason:
        raise ValueError(f"preset {preset.name!r}: {reason}; pass --prompts with a GenEval metadata.jsonl") from None
    seed = preset.seeds[0] if seed is None else seed
    source = {"preset": preset.name, "world": world.name, "resolution": world.resolution,
              "prompts_per_category": options.prompts_per_category, "prompt_seed": options.prompt_seed}
    return _prompt_set(entries, images_per_prompt or options.images_per_prompt, seed, limit, source)


def file_prompts(
    path: str | Path, images_per_prompt: int | None = None, seed: int = 0, limit: int | None = None
) -> PromptSet:
    """The rows of a GenEval-format metadata.jsonl (validated by `load_geneval_metadata`: each needs GenEval's
    "tag", "prompt" and "include", since its scorer judges the images by them); `limit` as in `preset_prompts`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompts file {path} does not exist; pass a GenEval metadata.jsonl, e.g. "
            "benchmarks/data/geneval/evaluation_metadata.jsonl"
        )
    entries = load_geneval_metadata(path)
    source = {"metadata": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return _prompt_set(entries, images_per_prompt or DEFAULT_IMAGES_PER_PROMPT, seed, limit, source)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (C, H, W) image (C = 1 or 3) as PNG bytes; the same image always gives the same bytes."""
    array = np.ascontiguousarray(np.moveaxis(np.asarray(image), 0, -1))
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected a uint8 (C, H, W) image with 1 or 3 channels, got {array.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class LayoutReport:
    folder: Path
    written: int
    skipped: int
    images: int


def _seeds_record(index: int, meta: dict, seeds: list[int], prompts: PromptSet, spec_hash: str) -> dict:
    return {"index": index, "prompt": meta["prompt"], "seed": prompts.seed, "seeds": seeds, "spec_hash": spec_hash}


def _complete(folder: Path, expected: dict, meta: dict, images_per_prompt: int) -> bool:
    """Whether `folder` holds this prompt's finished images; ValueError if it holds another run's."""
    marker = folder / SEEDS
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text())
        written_meta = json.loads((folder / "metadata.jsonl").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if found != expected or written_meta != meta:
        raise ValueError(
            f"{folder} holds another run's images (prompt, seeds or model differ: {found.get('prompt')!r}, "
            f"seed {found.get('seed')}); write to a new --out folder or delete {folder.parent}"
        )
    return all((folder / "samples" / f"{k:04d}.png").is_file() for k in range(images_per_prompt))


def write_geneval_layout(
    generator: Generator,
    prompts: PromptSet,
    out_dir: str | Path,
    model_name: str,
    batch_size: int = 16,
    progress: bool = False,
    extra: dict[str, Any] | None = None,
) -> LayoutReport:
    """Sample `prompts` with `generator` into OUT/<model_name>/<index:05d>/ (module docstring); folders already
    complete are skipped, so an interrupted run picks up where it stopped.

    Every file is written atomically; a prompt folder's seeds.json goes last. A folder (or OUT/<model_name>)
    holding another model's, seed's or prompt set's images is an error before anything is sampled. `extra`
    goes into generation.json (e.g. the world and the protocol).
    """
    if not _MODEL_NAME.fullmatch(model_name):
        raise ValueError(f"model name {model_name!r} cannot name a folder; use letters, digits, '.', '_', '+', '-'")
    folder = Path(out_dir) / model_name
    ensure_writable(folder)
    spec = generator.spec
    manifest = {
        "model": model_name, "spec": spec.to_dict(), "spec_hash": spec.hash, "seed": prompts.seed,
        "images_per_prompt": prompts.images_per_prompt, "prompts_hash": prompts.prompts_hash,
        "source": prompts.source, "layout": "geneval", **(extra or {}),
    }
    same = ("spec_hash", "seed", "images_per_prompt", "prompts_hash")
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path} is not valid JSON ({err}); delete {folder} to write it again") from None
        differ = [k for k in same if old.get(k) != manifest[k]]
        if differ:
            raise ValueError(
                f"{folder} holds images of another run ({', '.join(differ)} differ: "
                + ", ".join(f"{k} {old.get(k)!r} now {manifest[k]!r}" for k in differ if k != "spec_hash")
                + f"); write to a new --out folder or delete {folder}"
            )
    pending = []
    for index, meta in prompts.rows:
        expected = _seeds_record(index, meta, prompts.seeds[index], prompts, spec.hash)
        if not _complete(folder / f"{index:05d}", expected, meta, prompts.images_per_prompt):
            pending.append((index, meta, expected))
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    per_chunk = max(1, batch_size // prompts.images_per_prompt)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{model_name} geneval layout", total=len(pending) * prompts.images_per_prompt)
        for start in range(0, len(pending), per_chunk):
            chunk = pending[start : start + per_chunk]
            texts = [meta["prompt"] for _, meta, _ in chunk for _ in range(prompts.images_per_prompt)]
            seeds = [s for index, _, _ in chunk for s in prompts.seeds[index]]
            images = sample_all(generator, texts, seeds, batch_size, "", False)
            for j, (index, meta, expected) in enumerate(chunk):
                target = folder / f"{index:05d}"
                for k in range(prompts.images_per_prompt):
                    image = images[j * prompts.images_per_prompt + k]
                    atomic_write_bytes(target / "samples" / f"{k:04d}.png", png_bytes(image))
                atomic_write_text(target / "metadata.jsonl", json.dumps(meta) + "\n")
                atomic_write_text(target / SEEDS, json.dumps(expected, indent=2) + "\n")
            bar.update(task, advance=len(texts))
    return LayoutReport(folder, len(pending), len(prompts.rows) - len(pending), len(pending) * prompts.images_per_prompt)


# --- import ------------------------------------------------------------------------------------------------


def read_geneval_results(path: str | Path) -> list[dict]:
    """The rows of GenEval's results.jsonl, each checked for a string "tag" and a boolean "correct"; the JSON
    strings in "metadata" and "details" are parsed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GenEval results file {path} does not exist; score the exported folder with GenEval's "
            "evaluation/evaluate_images.py (it writes results.jsonl) and pass that file"
        )
    rows = read_jsonl(path, _check_result, "GenEval result row")
    if not rows:
        raise ValueError(f"GenEval results file {path} holds no result rows")
    return rows


def _check_result(row: dict) -> None:
    """A GenEval result row has a task tag and a boolean `correct`; its JSON-string fields are parsed in place."""
    if not isinstance(row.get("tag"), str) or not _TAG.fullmatch(row["tag"]):
        raise ValueError(f"tag {row.get('tag')!r} is not a task name such as {TAGS[0]}")
    if not isinstance(row.get("correct"), bool):
        raise ValueError(f"correct {row.get('correct')!r} is not true or false")
    for key in ("metadata", "details"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])


def _prompt_key(row: dict) -> str:
    """Which prompt a result row scores: its metadata (GenEval's summary groups by it), else its prompt text."""
    return json.dumps(row.get("metadata", row.get("prompt")), sort_keys=True)


def geneval_official_metrics(rows: Sequence[dict]) -> dict[str, Any]:
    """GenEval's summary_scores.py: per tag the mean correctness of its images, overall the mean over tags."""
    tags = [t for t in TAGS if any(r["tag"] == t for r in rows)]
    tags += [t for t in dict.fromkeys(r["tag"] for r in rows) if t not in tags]
    per_task = {t: float(np.mean([r["correct"] for r in rows if r["tag"] == t])) for t in tags}
    by_prompt: dict[str, bool] = {}
    for r in rows:
        key = _prompt_key(r)
        by_prompt[key] = by_prompt.get(key, False) or r["correct"]
    metrics: dict[str, Any] = {f"{PREFIX}_{t}": acc for t, acc in per_task.items()}
    metrics[f"{PREFIX}_overall"] = float(np.mean(list(per_task.values())))
    metrics[f"{PREFIX}_prompts_correct"] = float(np.mean(list(by_prompt.values())))
    metrics[f"{PREFIX}_images"] = len(rows)
    return metrics


def _place(filename: Any) -> tuple[int | None, int | None]:
    """(prompt index, image index) of a layout path .../<index>/samples/<k>.png, else None for either."""
    if not isinstance(filename, str):
        return None, None
    parts = Path(filename.replace("\\", "/")).parts
    if len(parts) >= 3 and parts[-2] == "samples" and parts[-3].isdigit() and re.fullmatch(r"\d+\.png", parts[-1]):
        return int(parts[-3]), int(parts[-1][:-4])
    return None, None


def _find_layout(rows: Sequence[dict], results: Path, images: Path | None) -> Path | None:
    """The exported model folder (holding generation.json) the results' images lie in, if it is here."""
    if images is not None:
        if not (images / MANIFEST).is_file():
            raise FileNotFoundError(f"{images} holds no {MANIFEST}; pass the OUT/<model> folder `ntm-bench generate` wrote")
        return images
    found = set()
    for r in rows:
        if _place(r.get("filename"))[0] is None:
            continue
        model_dir = Path(r["filename"]).parents[2]
        for candidate in (model_dir, results.parent / model_dir):
            if (candidate / MANIFEST).is_file():
                found.add(candidate.resolve())
                break
    if len(found) > 1:
        raise ValueError(
            f"{results} scores images of several exported folders ({', '.join(map(str, sorted(found)))}); "
            "import one model's results at a time"
        )
    return found.pop() if found else None


def imported_spec(model: str) -> dict:
    """The spec of a row known only by its imported scores: nothing about its steps, NFE or size."""
    return {"name": model, "family": "imported", "steps": None, "nfe": None, "parameters": None,
            "weights_hash": None, "settings": {}, "training": {}}


def import_geneval_results(
    results_jsonl: str | Path, model: str, out_dir: str | Path, images: str | Path | None = None
) -> dict:
    """Record GenEval's per-image results for `model` in OUT/records (suite `geneval_official`); returns the summary.

    The record's spec (and seed, world, protocol) is the one in generation.json of the exported folder the results'
    filenames point to (or `images`, that folder) when it is here; else that of `model`'s newest records in OUT, so
    the scores join its row; else a bare spec of family "imported". A folder spec that differs from the records'
    is an error (the images came from another model than that row). Importing again replaces the record.

    Each row keeps the result's fields and gets `prompt_index` and `sample` from its filename (.../<index>/samples/
    <k>.png) and `seed` from that folder's seeds.json when it is here; if some filename is not such a path, prompts
    are numbered by their metadata in order of appearance instead (what the tables' bootstrap intervals group by).
    """
    results_jsonl = Path(results_jsonl)
    if not _MODEL_NAME.fullmatch(model):
        raise ValueError(f"model name {model!r} cannot name a record; use letters, digits, '.', '_', '+', '-'")
    rows = read_geneval_results(results_jsonl)
    out_dir = Path(out_dir)
    store = RecordStore(out_dir / "records")
    other = store.other_versions(SUITE, SUITE_VERSION)
    if other:
        raise ValueError(
            f"{store.root} holds {SUITE!r} records of another version ({', '.join(sorted(other))}), not v{SUITE_VERSION}; "
            "use a new --out folder"
        )
    layout = _find_layout(rows, results_jsonl, Path(images) if images is not None else None)
    manifest = json.loads((layout / MANIFEST).read_text()) if layout is not None else None
    current = [s for s in store.latest()[0] if s["model"] == model and s["suite"] != SUITE]  # not earlier imports
    spec, spec_hash = (manifest["spec"], manifest["spec_hash"]) if manifest else (None, None)
    if current:
        if spec_hash is not None and spec_hash != current[0]["spec_hash"]:
            raise ValueError(
                f"the images in {layout} were made by spec {spec_hash[:12]} but {store.root / model} holds records of "
                f"spec {current[0]['spec_hash'][:12]} (a retrained or reconfigured model); import under another --model "
                "name or into another --out folder"
            )
        spec, spec_hash = current[0]["spec"], current[0]["spec_hash"]
    if spec is None:
        spec = imported_spec(model)
        spec_hash = stable_hash(spec)
    ensure_writable(out_dir)
    places = [_place(r.get("filename")) for r in rows]
    if any(index is None for index, _ in places):  # not all in the layout: number the prompts by their metadata
        order: dict[str, int] = {}
        keys = [_prompt_key(r) for r in rows]
        places = [(order.setdefault(key, len(order)), None) for key in keys]
    seeds_cache: dict[int, list[int] | None] = {}
    records = []
    for i, (r, (index, k)) in enumerate(zip(rows, places, strict=True)):
        seed = None
        if layout is not None and k is not None:
            if index not in seeds_cache:
                marker = layout / f"{index:05d}" / SEEDS
                seeds_cache[index] = json.loads(marker.read_text())["seeds"] if marker.is_file() else None
            known = seeds_cache[index]
            seed = known[k] if known is not None and k < len(known) else None
        records.append({
            "item": i, "prompt_index": index, "sample": k, "seed": seed, "tag": r["tag"], "prompt": r.get("prompt"),
            "correct": r["correct"], "reason": r.get("reason"), "filename": r.get("filename"),
            "metadata": r.get("metadata"), "details": r.get("details"),
        })
    run_seed = int(manifest["seed"]) if manifest else 0
    key = RecordKey(model, spec_hash, SUITE, SUITE_VERSION, run_seed)
    source = manifest.get("source", {}) if manifest else {}
    summary = {
        "record": key.stem, "model": model, "family": spec["family"], "spec": spec, "spec_hash": spec_hash,
        "suite": SUITE, "suite_version": SUITE_VERSION, "suite_options": {"scorer": SCORER},
        "seed": run_seed, "preset": source.get("preset"),
        "world": (manifest or {}).get("world", source.get("world")),
        "resolution": (manifest or {}).get("resolution", source.get("resolution")),
        "metrics": geneval_official_metrics(rows), "wall_s": 0.0,
        "protocol": (manifest or {}).get("protocol") or protocol("unknown"),
        "imported_from": {
            "results_file": str(results_jsonl), "sha256": hashlib.sha256(results_jsonl.read_bytes()).hexdigest(),
            "images": str(layout) if layout is not None else None,
        },
        "written_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    store.write(key, records, summary, {}, replace=True)
    return summary
