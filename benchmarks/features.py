"""The evaluation CLIP ("eval-CLIP") of a world: a small open_clip model trained contrastively on its captions.

CLIP (Radford et al., 2021) embeds images and captions in one space, trained with the symmetric
InfoNCE loss on the cosine similarities of a batch (open_clip's ClipLoss). Real CLIPs have never
seen our 16 px shape scenes, so each world gets its own: a ViT image tower sized to the world's
resolution (16 patches) and a text tower over the world's closed vocabulary (whole-word tokens),
randomly initialised from a seed and trained on the world's train split only. It shares no weights
or tokenizer with any generator. The built model ships as an open_clip `local-dir` folder
(open_clip_config.json + open_clip_model.safetensors) with report.json, its held-out retrieval accuracy.

Retrieval is scored by content, not by caption text: the grammar has captions that describe the
same images ("a circle and a square" / "a square and a circle", "a circle left of a square" /
"a square right of a circle"), and a one-shape image of a red circle is exactly described both by
"a photo of a circle" and "a photo of a red circle". A retrieved caption is a hit when it exactly
describes the image: the world's exact scene parser finds every object the caption asks for under
GenEval's rules (Ghosh et al., 2023) and no other object. Strict caption-text equality is reported
beside it, with the accuracy a perfect reader would get by guessing among the exact descriptions.

Relation warm-up: "X above Y" and "Y below X" mean the same, so no single word tells which shape is
on top; the text must combine word order with the relation word. Trained from scratch on mixed
batches, both towers stayed blind to direction in every run we made (up to 3000 steps): with "a circle
above a square" and "a circle below a square" embedded alike (cosine > 0.98), images get no signal to
tell them apart, and with direction-blind images the text gets none either. A warm-up on batches of
position scenes alone, one per meaning and without false negatives, breaks the tie (a curriculum,
Bengio et al., 2009); a position batch in every later step keeps it (without it, mixed training undid it in 200 steps).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from rich.progress import Progress
from safetensors.torch import save_file

from benchmarks.geneval_rules import score
from benchmarks.worlds import Batch, World, get_world

ASSETS = Path(__file__).resolve().parent / "assets"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
REPORT_FILE = "report.json"
SPECIAL_TOKENS = ("<pad>", "<sot>", "<eot>")  # ids 0, 1, 2; the text tower pools at <eot>
CONTEXT_LENGTH = 12  # the longest shapes caption has 10 words
PATCHES_PER_SIDE = 4
VISION = {"width": 64, "layers": 6, "head_width": 16, "pool_type": "avg"}
TEXT = {"width": 64, "heads": 2, "layers": 2}
EMBED_DIM = 64
DEFAULT_STEPS = 3000
BATCH_SIZE = 384
LEARNING_RATE = 1e-3
RELATION_TAG = "position"
RELATION_PROMPTS = 32  # position prompts drawn per relation batch (shapes has 24: 12 meanings, 2 wordings each)
RELATION_STEPS = 4000
RELATION_LEARNING_RATE = 3e-4
WEIGHT_DECAY = 0.1
WARMUP_FRACTION = 0.05
MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned temperature at 100
EVAL_IMAGES = 256
FEATURE_CHUNK = 512


def asset_dir(world: str, resolution: int) -> Path:
    """The shipped eval-CLIP folder of (world, resolution)."""
    return ASSETS / f"eval-clip-{world}-{resolution}"


def build_command(world: str, resolution: int) -> str:
    """The CLI command that builds the eval-CLIP of (world, resolution) into its asset folder."""
    return f"ntm-bench assets build --world {world} --res {resolution}"


def model_config(resolution: int, vocab_size: int) -> dict:
    """open_clip model config: a 16-patch ViT (mean-pooled) and a causal word-level text tower pooled at <eot>."""
    if resolution % PATCHES_PER_SIDE:
        raise ValueError(f"eval-CLIP needs a resolution divisible by {PATCHES_PER_SIDE}, got {resolution}")
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {"image_size": resolution, "patch_size": resolution // PATCHES_PER_SIDE, **VISION},
        "text_cfg": {
            "context_length": CONTEXT_LENGTH, "vocab_size": vocab_size, **TEXT,
            "pad_id": 0, "eos_id": 2, "pool_type": "eos",
        },
    }


class WordTokenizer:
    """Whole-word tokens over a closed vocabulary: <sot> w1 .. wk <eot>, zero-padded to the context length."""

    def __init__(self, vocabulary: Sequence[str], context_length: int = CONTEXT_LENGTH) -> None:
        self.vocabulary = list(vocabulary)
        self.context_length = context_length
        self._ids = {word: i + len(SPECIAL_TOKENS) for i, word in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.vocabulary)

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        tokens = torch.zeros(len(captions), self.context_length, dtype=torch.long)
        for row, caption in enumerate(captions):
            words = caption.lower().split()
            unknown = [w for w in words if w not in self._ids]
            if unknown:
                raise ValueError(f"caption {caption!r} has words {unknown} outside the eval-CLIP vocabulary")
            if len(words) + 2 > self.context_length:
                raise ValueError(f"caption {caption!r} is longer than {self.context_length - 2} words")
            ids = [1, *(self._ids[w] for w in words), 2]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Pixels in 0..255 (N, C, H, W) -> float (x / 255 - mean) / std, with `mean` and `std` shaped (C, 1, 1)."""
    return (images.float() / 255 - mean) / std


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EvalClip:
    """An open_clip model with its tokenizer and pixel preprocessing; features are L2-normalised.

    `resolution` is the image size the image tower takes. A world eval-CLIP takes exactly that size;
    a general open_clip model (e.g. ViT-L/14) resizes other sizes to it (bicubic, antialiased).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenize: Callable[[list[str]], torch.Tensor],
        resolution: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_hash: str,
        report: dict,
        resize: bool,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenize = tokenize
        self.resolution = resolution
        self.weights_hash = weights_hash
        self.report = report
        self.resize = resize
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device)[:, None, None]
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device)[:, None, None]

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu") -> EvalClip:
        """Load an open_clip `local-dir` folder; a world eval-CLIP (with its vocabulary in the config) or any CLIP."""
        path = Path(path)
        weights = path / WEIGHTS_FILE
        if not (path / CONFIG_FILE).is_file() or not weights.is_file():
            raise FileNotFoundError(f"{path} is not an open_clip folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        config = json.loads((path / CONFIG_FILE).read_text())
        model = open_clip.create_model(f"local-dir:{path}", device="cpu")
        report = json.loads((path / REPORT_FILE).read_text()) if (path / REPORT_FILE).is_file() else {}
        weights_hash = file_sha256(weights)
        if report.get("weights_sha256", weights_hash) != weights_hash:
            raise ValueError(f"{path / REPORT_FILE} describes other weights than {weights}; rebuild the folder")
        preprocess = model.visual.preprocess_cfg
        size = preprocess["size"]
        size = size if isinstance(size, int) else size[0]
        world_clip = "eval_clip" in config
        if world_clip:
            vocabulary = config["eval_clip"]["vocabulary"]
            tokenize = WordTokenizer(vocabulary, config["model_cfg"]["text_cfg"]["context_length"])
        else:
            tokenize = open_clip.get_tokenizer(f"local-dir:{path}")
        return cls(
            model, tokenize, size, preprocess["mean"], preprocess["std"], weights_hash, report,
            resize=not world_clip, device=device,
        )

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float (N, 3, S, S) on the model's device."""
        x = images.to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.resolution, self.resolution):
            size = (self.resolution, self.resolution)
            x = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True).round().clamp(0, 255)
        return normalise(x, self._mean, self._std)

    def image_features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 (N, d) CPU features of uint8 (N, C, H, W) images (C = 1 or 3)."""
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if not self.resize and images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"this eval-CLIP takes {self.resolution}x{self.resolution} images, got {tuple(images.shape[-2:])}"
            )
        with torch.no_grad():
            parts = [
                self.model.encode_image(self._pixels(images[i : i + FEATURE_CHUNK]), normalize=True).float().cpu()
                for i in range(0, len(images), FEATURE_CHUNK)
            ]
        return torch.cat(parts) if parts else torch.zeros(0, self.model.text_projection.shape[-1])

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """L2-normalised float32 (N, d) CPU features of captions."""
        captions = list(captions)
        with torch.no_grad():
            parts = [
                self.model.encode_text(self.tokenize(captions[i : i + FEATURE_CHUNK]).to(self.device), normalize=True)
                .float()
                .cpu()
                for i in range(0, len(captions), FEATURE_CHUNK)
            ]
        return torch.cat(parts) if parts else torch.zeros(0, self.model.text_projection.shape[-1])


def load_eval_clip(world: str, resolution: int, device: str | torch.device = "cpu") -> EvalClip:
    """The shipped eval-CLIP of (world, resolution); FileNotFoundError naming the build command if absent."""
    folder = asset_dir(world, resolution)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"no eval-CLIP for world {world!r} at {resolution} px (looked in {folder}); "
            f"build it with `{build_command(world, resolution)}`"
        )
    return EvalClip.from_folder(folder, device)


def exactly_describes(detections: list, meta: dict) -> bool:
    """Whether a caption's GenEval row holds on the detections and names every detected object."""
    return score(detections, meta)[0] and len(detections) == sum(item["count"] for item in meta["include"])


def retrieval_accuracy(clip: EvalClip, world: World, batch: Batch) -> dict[str, Any]:
    """Image-to-caption top-1 retrieval among the batch's own captions.

    `accuracy`: the retrieved caption exactly describes the image (by the world's detector; text
    equality for worlds without one). `text_match_accuracy`: the retrieved caption's text equals the
    true one. `text_match_oracle`: the text-match accuracy of a reader that knows each scene exactly
    and picks uniformly among the batch captions that exactly describe it. `per_category`: `accuracy`
    by the true caption's GenEval task.
    """
    similarity = clip.image_features(batch.images) @ clip.text_features(batch.captions).T
    retrieved = similarity.argmax(dim=1).tolist()
    text_hits = [batch.captions[j] == batch.captions[i] for i, j in enumerate(retrieved)]
    result: dict[str, Any] = {"text_match_accuracy": float(np.mean(text_hits))}
    if world.categories:
        distinct = {c: m for c, m in zip(batch.captions, batch.metadata)}
        hits, oracle = [], []
        for image, j in zip(batch.images, retrieved):
            detections = world.detect(image)
            hits.append(exactly_describes(detections, batch.metadata[j]))
            oracle.append(1 / sum(exactly_describes(detections, m) for m in distinct.values()))
        tags = [m["tag"] for m in batch.metadata]
        result["per_category"] = {
            tag: float(np.mean([h for h, t in zip(hits, tags) if t == tag])) for tag in world.categories if tag in tags
        }
    else:
        hits, oracle = text_hits, [1.0] * len(text_hits)
    n = len(batch.captions)
    return {
        "accuracy": float(np.mean(hits)), **result, "text_match_oracle": float(np.mean(oracle)),
        "images": n, "batch": n, "distinct_captions": len(set(batch.captions)),
    }


def _unique_captions(captions: Sequence[str]) -> list[int]:
    """Indices of each caption's first occurrence: a repeated caption would be a false negative in ClipLoss."""
    first: dict[str, int] = {}
    for i, caption in enumerate(captions):
        first.setdefault(caption, i)
    return sorted(first.values())


def _relation_batch(world: World, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Renders of the world's GenEval position prompts, one per meaning, each meaning in a random wording.

    A scene is dropped when a kept caption exactly describes it or its caption exactly describes a kept
    scene ("a circle above a square" / "a square below a circle"), so ClipLoss sees no false negative.
    """
    rows = [r for r in world.prompts(RELATION_PROMPTS, seed=int(rng.integers(2**31))) if r["tag"] == RELATION_TAG]
    images = [world.render_caption(r["prompt"], int(rng.integers(2**31))) for r in rows]
    detections = [world.detect(image) for image in images]
    kept: list[int] = []
    for i, row in enumerate(rows):
        if not any(exactly_describes(detections[i], rows[k]) or exactly_describes(detections[k], row) for k in kept):
            kept.append(i)
    return np.stack([images[i] for i in kept]), [rows[i]["prompt"] for i in kept]


def _learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return LEARNING_RATE * (step + 1) / warmup
    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def build_eval_clip(
    world: str,
    resolution: int,
    out_dir: str | Path | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    relation_steps: int = RELATION_STEPS,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the eval-CLIP of (world, resolution) from a seeded random init and write its folder; returns the report.

    Every update is an AdamW step on open_clip's ClipLoss. For worlds with GenEval's position task,
    `relation_steps` warm-up steps (lr RELATION_LEARNING_RATE, no weight decay) see only position
    scenes, one per meaning (`_relation_batch`). Then each of `steps` steps draws `batch_size` seeded
    train-split scenes, keeps one image per distinct caption, and adds the ClipLoss of a fresh position
    batch, which keeps the relation directions the warm-up found. The saved folder is then reloaded and
    scored on the first EVAL_IMAGES test-split scenes (`retrieval_accuracy`), into report.json.
    """
    if steps < 1 or batch_size < 2 or relation_steps < 0:
        raise ValueError(
            f"need steps >= 1, batch_size >= 2 and relation_steps >= 0; got {steps}, {batch_size}, {relation_steps}"
        )
    w = get_world(world, resolution)
    out = Path(out_dir) if out_dir is not None else asset_dir(world, resolution)
    tokenizer = WordTokenizer(w.vocabulary())
    config = model_config(resolution, tokenizer.vocab_size)
    name = f"eval-clip-{world}-{resolution}"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(Path(tmp) / f"{name}.json")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None)
    mean = std = [0.5, 0.5, 0.5]
    pixel_mean, pixel_std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    loss_fn = ClipLoss()

    def clip_loss(images: np.ndarray, captions: list[str]) -> torch.Tensor:
        pixels = normalise(torch.from_numpy(images), pixel_mean, pixel_std)
        image_f, text_f, logit_scale = model(pixels, tokenizer(captions))
        return loss_fn(image_f, text_f, logit_scale)

    def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    relations = RELATION_TAG in w.categories
    relation_steps = relation_steps if relations else 0
    scenes, relation_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    warmup = torch.optim.AdamW(model.parameters(), lr=RELATION_LEARNING_RATE, weight_decay=0.0)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=LEARNING_RATE
    )
    model.train()
    start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"training {name}", total=relation_steps + steps)
        for _ in range(relation_steps):
            update(warmup, clip_loss(*_relation_batch(w, relation_rng)))
            bar.update(task, advance=1)
        for step in range(steps):
            batch = w.batch(scenes.integers(0, 2**31, size=batch_size).tolist(), split="train")
            keep = _unique_captions(batch.captions)
            loss = clip_loss(batch.images[keep], [batch.captions[i] for i in keep])
            if relations:
                loss = loss + clip_loss(*_relation_batch(w, relation_rng))
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, steps)
            update(optimizer, loss)
            bar.update(task, advance=1)
    train_seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).unlink(missing_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    folder_config = {
        "model_cfg": config,
        "preprocess_cfg": {"mean": mean, "std": std, "size": resolution},
        "eval_clip": {"world": world, "resolution": resolution, "vocabulary": tokenizer.vocabulary},
    }
    (out / CONFIG_FILE).write_text(json.dumps(folder_config, indent=2) + "\n")
    clip = EvalClip.from_folder(out)
    retrieval = retrieval_accuracy(clip, w, w.batch(list(range(EVAL_IMAGES)), split="test"))
    report = {
        "world": world, "resolution": resolution, **retrieval,
        "accuracy_rule": "hit = the retrieved caption exactly describes the image (world parser + GenEval rules)",
        "steps": steps, "relation_steps": relation_steps, "seed": seed, "batch_size": batch_size,
        "train_seconds": round(train_seconds, 1), "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "weights_sha256": clip.weights_hash,
        "command": f"{build_command(world, resolution)} --steps {steps} --seed {seed}",
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
