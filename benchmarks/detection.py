"""GenEval's detection stage for real images: an open-vocabulary detector plus a CLIP colour classifier.

GenEval (Ghosh et al., 2023; `evaluation/evaluate_images.py` in djghosh13/geneval) reads each
image with a Mask2Former detector over the 80 COCO classes, then names the colour of each object that a
prompt gives a colour with a zero-shot CLIP ViT-L/14. Here the detector is OWLv2 (Minderer et al., 2023,
"Scaling Open-Vocabulary Object Detection"), queried with "a photo of a {class}", and both models are read
from local folders (nothing is downloaded). What follows GenEval and what differs:

- Box selection (`select_boxes`) is GenEval's: per class, keep scores above `threshold` (0.3, or
  `counting_threshold` 0.9 for counting prompts), the `max_objects` (16) most confident, then greedy
  suppression of boxes whose IoU with a kept one exceeds `nms_iou` (1.0, i.e. off, GenEval's
  `max_overlap` default; IoU here is of continuous boxes, GenEval's counts inclusive pixels). These
  values were tuned for Mask2Former's scores; OWLv2's sigmoid scores are on another scale, so they are
  options of the suite rather than constants.
- Vocabulary: GenEval's detector labels every object with one of its 80 classes. With `queries="all"`
  each OWLv2 box is labelled with its best class among GenEval's 80 object names (plus any class of the
  prompt outside them), which keeps that competition; `queries="prompt"` queries only the prompt's classes.
- Colour (`ColourClassifier`): GenEval's ten colour names and its three templates, averaged per colour as
  clip_benchmark's zero-shot classifier does, asked only of the `count` most confident objects of a class
  with a colour requirement. GenEval pastes the instance mask on a grey (#999) background before
  cropping to the box; OWLv2 has no masks, so the crop here is the plain box, background included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import nms

from benchmarks.geneval_rules import Detection

DETECTOR_REPO = "google/owlv2-base-patch16-ensemble"
CLIP_REPO = "laion/CLIP-ViT-L-14-laion2B-s32B-b82K"
OBJECT_NAMES = Path(__file__).resolve().parent / "data/geneval/object_names.txt"
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = (
    "a photo of a {color} {object}", "a photo of a {color}-colored {object}", "a photo of a {color} object"
)
QUERY_TEMPLATE = "a photo of a {}"
QUERY_MODES = ("all", "prompt")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ScoredBox:
    """One detector output: class name, confidence in [0, 1], and (x0, y0, x1, y1) in pixels."""

    cls: str
    score: float
    box: Box


@dataclass(frozen=True)
class SelectionRule:
    """GenEval's box selection thresholds (its `threshold`, `counting_threshold`, `max_objects`, `max_overlap`)."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    nms_iou: float = 1.0

    def threshold_for(self, tag: str) -> float:
        return self.counting_threshold if tag == "counting" else self.threshold


class BoxDetector(Protocol):
    def __call__(self, images: np.ndarray, queries: Sequence[Sequence[str]]) -> list[list[ScoredBox]]: ...


ColourModel = Callable[[np.ndarray, Sequence[Box], str], list[str]]
"""(uint8 image (3, H, W), boxes, class name) -> one colour name of `COLORS` per box."""


def load_object_names(path: str | Path = OBJECT_NAMES) -> tuple[str, ...]:
    """GenEval's 80 detector classes (COCO's), one per line."""
    return tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())


def select_boxes(boxes: Sequence[ScoredBox], threshold: float, max_objects: int, nms_iou: float) -> list[ScoredBox]:
    """GenEval's per-class selection: score > threshold, the `max_objects` best, then greedy suppression.

    The result is grouped by class in first-appearance order, most confident first within a class.
    Suppression drops a box whose IoU with a more confident kept box exceeds `nms_iou`; 1.0 keeps all.
    """
    kept: list[ScoredBox] = []
    for cls in dict.fromkeys(b.cls for b in boxes):
        found = sorted((b for b in boxes if b.cls == cls and b.score > threshold), key=lambda b: -b.score)
        found = found[:max_objects]
        if found and nms_iou < 1.0:
            order = nms(torch.tensor([b.box for b in found], dtype=torch.float64),
                        torch.tensor([b.score for b in found], dtype=torch.float64), nms_iou)
            found = [found[i] for i in order.tolist()]
        kept += found
    return kept


def clip_box(box: Sequence[float], height: int, width: int) -> Box:
    """`box` clipped to the image, at least one pixel wide and high."""
    x0 = min(max(float(box[0]), 0.0), width - 1.0)
    y0 = min(max(float(box[1]), 0.0), height - 1.0)
    x1 = min(max(float(box[2]), x0 + 1.0), float(width))
    y1 = min(max(float(box[3]), y0 + 1.0), float(height))
    return (x0, y0, x1, y1)


def crop(image: np.ndarray, box: Box) -> Image.Image:
    """The box of a uint8 (3, H, W) image as a PIL image; edges are rounded outwards to whole pixels."""
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    return Image.fromarray(np.ascontiguousarray(image[:, y0:y1, x0:x1].transpose(1, 2, 0)))


class OwlDetector:
    """OWLv2 (Minderer et al., 2023) from a local folder: every predicted box with its best query."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        self.processor = Owlv2Processor.from_pretrained(str(path), local_files_only=True)
        self.model = Owlv2ForObjectDetection.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images: np.ndarray, queries: Sequence[Sequence[str]]) -> list[list[ScoredBox]]:
        """All boxes (one per image patch) for uint8 images (N, 3, H, W), each labelled with the class of
        its image's `queries` that scores highest; scores are OWLv2's sigmoid class scores.

        One forward pass asks every image about the union of the queries; a class not among an image's
        own queries is masked out of that image's logits before the best class is taken.
        """
        n, _, height, width = images.shape
        vocabulary = sorted(set().union(*map(set, queries)))
        texts = [QUERY_TEMPLATE.format(c) for c in vocabulary]
        inputs = self.processor(
            text=[texts] * n, images=list(torch.from_numpy(images)), truncation=True, return_tensors="pt"
        )
        outputs = self.model(**inputs.to(self.device))
        allowed = torch.tensor([[c in set(q) for c in vocabulary] for q in queries], device=outputs.logits.device)
        outputs.logits = outputs.logits.masked_fill(~allowed[:, None, :], float("-inf"))
        results = self.processor.image_processor.post_process_object_detection(
            outputs, threshold=-1.0, target_sizes=[(height, width)] * n
        )
        return [
            [
                ScoredBox(vocabulary[label], score, clip_box(box, height, width))
                for score, label, box in zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist())
            ]
            for r in results
        ]


class ColourClassifier:
    """GenEval's CLIP colour check: zero-shot classification of a crop among `COLORS` with an open_clip model.

    Per object class, each colour's text embedding is the renormalised mean of the unit embeddings of
    `COLOR_TEMPLATES`; a crop takes the colour whose embedding has the largest cosine with its image embedding.
    """

    def __init__(self, path: str | Path, device: torch.device) -> None:
        import open_clip

        name = f"local-dir:{path}"
        self.model, _, self.transform = open_clip.create_model_and_transforms(name, device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.device = device
        self._weights: dict[str, Tensor] = {}

    @torch.no_grad()
    def colour_weights(self, cls: str) -> Tensor:
        """(D, len(COLORS)) unit text embeddings of the colours of `cls`, cached per class."""
        if cls not in self._weights:
            columns = []
            for color in COLORS:
                tokens = self.tokenizer([t.format(color=color, object=cls) for t in COLOR_TEMPLATES]).to(self.device)
                mean = F.normalize(self.model.encode_text(tokens).float(), dim=-1).mean(dim=0)
                columns.append(mean / mean.norm())
            self._weights[cls] = torch.stack(columns, dim=1)
        return self._weights[cls]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: Sequence[Box], cls: str) -> list[str]:
        if not boxes:
            return []
        pixels = torch.stack([self.transform(crop(image, box)) for box in boxes]).to(self.device)
        features = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        return [COLORS[i] for i in (features @ self.colour_weights(cls)).argmax(dim=1).tolist()]


class GenevalDetector:
    """Images and GenEval metadata rows in, `Detection`s (in confidence order per class) and scores out."""

    def __init__(
        self,
        detector: BoxDetector,
        colours: ColourModel,
        rule: SelectionRule = SelectionRule(),
        queries: str = "all",
        object_names: Sequence[str] | None = None,
    ) -> None:
        if queries not in QUERY_MODES:
            raise ValueError(f"queries must be one of {QUERY_MODES}, got {queries!r}")
        self.detector, self.colours, self.rule, self.queries = detector, colours, rule, queries
        self.object_names = tuple(load_object_names() if object_names is None else object_names)

    def queries_for(self, meta: dict) -> list[str]:
        """The class names the detector is asked about for one metadata row."""
        named = [item["class"] for item in meta["include"] + meta.get("exclude", [])]
        base = list(self.object_names) if self.queries == "all" else []
        return list(dict.fromkeys(base + named))

    def __call__(self, images: np.ndarray, metas: Sequence[dict]) -> list[list[tuple[Detection, float]]]:
        """Per image, (detection, detector score) pairs; colour is set on the objects GenEval checks."""
        raw = self.detector(images, [self.queries_for(m) for m in metas])
        out = []
        for image, meta, boxes in zip(images, metas, raw, strict=True):
            kept = select_boxes(boxes, self.rule.threshold_for(meta["tag"]), self.rule.max_objects, self.rule.nms_iou)
            colours: dict[int, str] = {}
            for item in meta["include"]:
                if "color" in item:
                    top = [i for i, b in enumerate(kept) if b.cls == item["class"]][: item["count"]]
                    colours.update(zip(top, self.colours(image, [kept[i].box for i in top], item["class"])))
            out.append([(to_detection(b, colours.get(i)), b.score) for i, b in enumerate(kept)])
        return out


def to_detection(box: ScoredBox, color: str | None) -> Detection:
    x0, y0, x1, y1 = box.box
    return Detection(box.cls, color, box.box, int(round((x1 - x0) * (y1 - y0))))


def load_detector(
    detector_path: str | Path, clip_path: str | Path, device: torch.device, rule: SelectionRule, queries: str
) -> GenevalDetector:
    """OWLv2 and the open_clip colour model from local folders, assembled into GenEval's detection stage."""
    return GenevalDetector(OwlDetector(detector_path, device), ColourClassifier(clip_path, device), rule, queries)


def detector_folder_problem(path: Path) -> str | None:
    """Why `path` is no transformers OWLv2 folder, or None; reads config.json only."""
    config = path / "config.json"
    if not config.is_file():
        return f"{path} has no config.json"
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type != "owlv2":
        return f"{path}/config.json has model_type {model_type!r}, not 'owlv2'"
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not any((path / f).is_file() for f in weights):
        return f"{path} has no model weights (model.safetensors or pytorch_model.bin)"
    return None


def clip_folder_problem(path: Path) -> str | None:
    """Why `path` is no open_clip local-dir folder with weights, or None."""
    if not (path / "open_clip_config.json").is_file():
        return f"{path} has no open_clip_config.json"
    if not any(p.suffix in (".safetensors", ".bin", ".pth") for p in path.iterdir()):
        return f"{path} has no weights file (.safetensors, .bin or .pth)"
    return None
