"""geneval-real: GenEval's box selection and ranked colour rule, the OWLv2 / open_clip plumbing on tiny random
models saved to disk, the suite end to end with painted images and a stub detector, and the missing-path errors."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines.base import Generator, GeneratorSpec
from benchmarks.detection import (
    CLIP_REPO,
    COLOR_TEMPLATES,
    COLORS,
    DETECTOR_REPO,
    QUERY_TEMPLATE,
    ColourClassifier,
    GenevalDetector,
    OwlDetector,
    ScoredBox,
    SelectionRule,
    clip_box,
    crop,
    load_object_names,
    select_boxes,
)
from benchmarks.geneval_rules import TAGS, Detection, load_geneval_metadata, score
from benchmarks.suites.geneval_real import METADATA, GenevalRealSuite, check_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32
CPU = torch.device("cpu")


def box(cls: str, score_: float, xyxy: tuple[float, float, float, float]) -> ScoredBox:
    return ScoredBox(cls, score_, tuple(float(v) for v in xyxy))


# --- GenEval's selection and rules --------------------------------------------------------------------------


def test_select_boxes_thresholds_then_caps_then_suppresses():
    a = box("cup", 0.9, (0, 0, 10, 10))
    b = box("cup", 0.8, (1, 0, 11, 10))  # IoU with a = 90 / 110 = 0.82
    c = box("cup", 0.7, (20, 20, 30, 30))
    d = box("cup", 0.3, (40, 40, 50, 50))  # not above the threshold 0.3
    e = box("car", 0.5, (0, 0, 5, 5))
    boxes = [c, e, a, d, b]
    assert select_boxes(boxes, 0.3, 16, 1.0) == [a, b, c, e]  # grouped by class, most confident first
    assert select_boxes(boxes, 0.3, 16, 0.5) == [a, c, e]
    # GenEval caps at max_objects before suppression: a and b survive the cap, b is suppressed, c never returns.
    assert select_boxes(boxes, 0.3, 2, 0.5) == [a, e]
    assert select_boxes(boxes, 0.75, 16, 1.0) == [a, b]


def test_counting_prompts_use_the_counting_threshold():
    rule = SelectionRule()
    assert (rule.threshold_for("counting"), rule.threshold_for("position")) == (0.9, 0.3)


def test_ranked_rule_checks_the_colour_of_the_most_confident_objects_only():
    meta = {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a red cup"}
    found = [Detection("cup", "blue", (0, 0, 4, 4), 16), Detection("cup", "red", (8, 8, 12, 12), 16)]
    assert score(found, meta) == (True, "correct")
    assert score(found, meta, ranked=True) == (False, "expected 1 red cup, found 0 red (colours: 1 blue)")


def test_clip_box_and_crop():
    assert clip_box((-3.0, 2.0, 40.0, 2.2), 32, 32) == (0.0, 2.0, 32.0, 3.0)
    image = np.arange(3 * 6 * 8, dtype=np.uint8).reshape(3, 6, 8)
    got = np.asarray(crop(image, (1.2, 2.0, 3.5, 4.0)))
    np.testing.assert_array_equal(got, image[:, 2:4, 1:4].transpose(1, 2, 0))


# --- tiny models on disk ------------------------------------------------------------------------------------


def save_tiny_owlv2(folder: Path) -> Path:
    """A 1-layer OWLv2 (32 px, 8 px patches) with a letter-level CLIP tokenizer, saved like the hub folder."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    folder.mkdir(parents=True)
    letters = list(string.ascii_lowercase)
    # OWLv2 treats a query whose first token id is 0 as padding, so id 0 is the pad token, as in CLIP's vocab.
    vocab = ["!"] + letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16, pad_token="!"
    )
    text = dict(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, pad_token_id=0, bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=SIZE,
                  patch_size=8)
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)).eval()
    model.save_pretrained(folder)
    Owlv2Processor(Owlv2ImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer).save_pretrained(folder)
    return folder


def save_tiny_open_clip(folder: Path) -> Path:
    """A 1-layer open_clip CLIP (CLIP's 49408-token BPE vocabulary) as a local-dir folder."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": SIZE, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    torch.manual_seed(1)
    save_file(open_clip.CLIP(**cfg).state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("geneval-real")
    return {"detector": save_tiny_owlv2(root / "owlv2"), "clip": save_tiny_open_clip(root / "clip")}


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)


def test_owl_detector_masks_each_images_queries_to_match_the_unmasked_reference(folders):
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    detector = OwlDetector(folders["detector"], CPU)
    images = random_images(2)
    got = detector(images, [["cat"], ["dog", "cat"]])
    # Reference: HF's own forward on both queries; image 0 may only be a cat, image 1 takes the better class.
    processor = Owlv2Processor.from_pretrained(folders["detector"], local_files_only=True)
    model = Owlv2ForObjectDetection.from_pretrained(folders["detector"], local_files_only=True).eval()
    texts = [QUERY_TEMPLATE.format("cat"), QUERY_TEMPLATE.format("dog")]
    with torch.no_grad():
        out = model(**processor(text=[texts, texts], images=list(torch.from_numpy(images)), return_tensors="pt"))
    probs = out.logits.sigmoid()
    expected_boxes = processor.image_processor.post_process_object_detection(
        out, threshold=-1.0, target_sizes=[(SIZE, SIZE)] * 2
    )
    assert len(got[0]) == len(got[1]) == out.logits.shape[1] == (SIZE // 8) ** 2
    assert {b.cls for b in got[0]} == {"cat"}
    np.testing.assert_allclose([b.score for b in got[0]], probs[0, :, 0].numpy(), rtol=1e-5)
    best, label = out.logits[1].max(dim=1)
    np.testing.assert_allclose([b.score for b in got[1]], best.sigmoid().numpy(), rtol=1e-5)
    assert [b.cls for b in got[1]] == [("cat", "dog")[i] for i in label.tolist()]
    for b, ref in zip(got[1], expected_boxes[1]["boxes"].tolist(), strict=True):
        assert b.box == clip_box(ref, SIZE, SIZE)
        assert 0 <= b.box[0] < b.box[2] <= SIZE and 0 <= b.box[1] < b.box[3] <= SIZE


def test_colour_classifier_is_genevals_zero_shot_rule(folders):
    import open_clip
    from safetensors.torch import load_file

    classifier = ColourClassifier(folders["clip"], CPU)
    saved = load_file(str(folders["clip"] / "open_clip_model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in classifier.model.state_dict().items())  # weights were read
    image = random_images(1, seed=3)[0]
    boxes = [(0.0, 0.0, 16.0, 16.0), (4.0, 10.0, 30.0, 20.0), (0.0, 0.0, 32.0, 32.0)]
    got = classifier(image, boxes, "fire hydrant")
    # Reference: all 30 prompts in one batch, unit-normalised, averaged per colour, renormalised; cosine argmax.
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folders['clip']}")
    prompts = [t.format(color=c, object="fire hydrant") for c in COLORS for t in COLOR_TEMPLATES]
    with torch.no_grad():
        text = F.normalize(classifier.model.encode_text(tokenizer(prompts)), dim=-1).view(len(COLORS), 3, -1).mean(1)
        pixels = torch.stack([classifier.transform(crop(image, b)) for b in boxes])
        cosine = F.normalize(classifier.model.encode_image(pixels), dim=-1) @ F.normalize(text, dim=-1).T
    assert got == [COLORS[i] for i in cosine.argmax(dim=1).tolist()]
    assert classifier(image, [], "cup") == []


# --- the suite ----------------------------------------------------------------------------------------------


class Painter(Generator):
    """Paints each prompt's scene: coloured rectangles on black, the scene's index in pixel (0, 0)."""

    def __init__(self, scenes: list[dict]) -> None:
        self.spec = GeneratorSpec("painter", "test", 1, 1, 0, "none")
        self.scenes = {s["prompt"]: (i, s) for i, s in enumerate(scenes)}
        self.calls = 0

    def sample(self, prompts, seeds, steps=None):
        self.calls += 1
        images = torch.zeros(len(prompts), 3, SIZE, SIZE, dtype=torch.uint8)
        for image, prompt in zip(images, prompts):
            index, scene = self.scenes[prompt]
            for _, rgb, (x0, y0, x1, y1), _ in scene["objects"]:
                image[:, y0:y1, x0:x1] = torch.tensor(rgb, dtype=torch.uint8)[:, None, None]
            image[0, 0, 0] = index
        return images


PALETTE = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}
# prompt, tag, include, exclude, objects (class, colour, box, detector score)
SCENES = [
    {"prompt": "a photo of two red circles", "tag": "counting",
     "include": [{"class": "circle", "count": 2, "color": "red"}], "exclude": [{"class": "circle", "count": 3}],
     "objects": [("circle", PALETTE["red"], (2, 2, 10, 10), 0.97), ("circle", PALETTE["red"], (20, 20, 28, 28), 0.95),
                 ("circle", PALETTE["blue"], (12, 2, 18, 8), 0.5)]},  # below the counting threshold 0.9
    {"prompt": "a photo of a blue circle", "tag": "colors",
     "include": [{"class": "circle", "count": 1, "color": "blue"}],
     "objects": [("circle", PALETTE["red"], (8, 8, 20, 20), 0.8)]},
    {"prompt": "a photo of a square left of a circle", "tag": "position",
     "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]}],
     "objects": [("square", PALETTE["green"], (1, 10, 9, 18), 0.6), ("circle", PALETTE["red"], (22, 10, 30, 18), 0.7)]},
    {"prompt": "a photo of a red square", "tag": "color_attr",
     "include": [{"class": "square", "count": 1, "color": "red"}],
     "objects": [("square", PALETTE["blue"], (2, 2, 12, 12), 0.8), ("square", PALETTE["red"], (16, 16, 30, 30), 0.6)]},
    {"prompt": "a photo of two circles", "tag": "counting",
     "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "circle", "count": 3}],
     "objects": [("circle", PALETTE["green"], (2, 2, 10, 10), 0.95),
                 ("circle", PALETTE["green"], (20, 2, 28, 10), 0.5)]},
]


class SceneDetector:
    """Stub detector: the boxes of the painted scene named by pixel (0, 0), plus an unqueried class."""

    def __init__(self) -> None:
        self.queries: list[list[str]] = []

    def __call__(self, images, queries):
        self.queries += queries
        out = []
        for image in images:
            scene = SCENES[int(image[0, 0, 0])]
            out.append([ScoredBox(c, s, tuple(map(float, b))) for c, _, b, s in scene["objects"]])
        return out


def palette_colour(image, boxes, cls):
    """Stub colour model: the palette colour nearest the crop's mean."""
    names = list(PALETTE)
    means = [np.asarray(crop(image, b), dtype=float).reshape(-1, 3).mean(0) for b in boxes]
    return [names[int(np.argmin([np.linalg.norm(m - PALETTE[n]) for n in names]))] for m in means]


class StubSuite(GenevalRealSuite):
    def load_detector(self):
        return GenevalDetector(SceneDetector(), palette_colour, SelectionRule(), "prompt")


def write_metadata(path: Path, rows: list[dict]) -> Path:
    keys = ("tag", "include", "exclude", "prompt")
    path.write_text("".join(json.dumps({k: r[k] for k in keys if k in r}) + "\n" for r in rows))
    return path


def test_suite_applies_genevals_rules_to_known_detections(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", SCENES)
    suite = StubSuite({"metadata_path": str(metadata), "images_per_prompt": 2, "batch_size": 3})
    result = suite.run(Painter(SCENES), world=None, seed=0, progress=False)
    assert sorted(r["item"] for r in result.rows) == list(range(10))
    by_prompt = {}
    for r in result.rows:
        by_prompt.setdefault(r["prompt"], set()).add((r["correct"], r["reason"]))
    assert by_prompt == {
        "a photo of two red circles": {(True, "correct")},
        "a photo of a blue circle": {(False, "expected 1 blue circle, found 0 blue (colours: 1 red)")},
        "a photo of a square left of a circle": {(True, "correct")},
        # the more confident square is blue: GenEval's ranked colour check fails it
        "a photo of a red square": {(False, "expected 1 red square, found 0 red (colours: 1 blue)")},
        # 0.5 is under the counting threshold 0.9
        "a photo of two circles": {(False, "expected 2 circle, found 1")},
    }
    assert result.metrics == {
        "geneval_owlv2_counting": 0.5, "geneval_owlv2_colors": 0.0, "geneval_owlv2_position": 1.0,
        "geneval_owlv2_color_attr": 0.0, "geneval_owlv2_overall": 0.375, "geneval_owlv2_prompts_correct": 0.4,
        "geneval_owlv2_images": 10,
    }
    red = next(r for r in result.rows if r["prompt"] == "a photo of two red circles")
    # the blue circle scored 0.5 is dropped by the counting threshold; colours were asked of the two kept ones
    found = [(d["cls"], d["color"], d["score"]) for d in red["detections"]]
    assert found == [("circle", "red", 0.97), ("circle", "red", 0.95)]
    position = next(r for r in result.rows if r["prompt"] == "a photo of a square left of a circle")
    assert {d["color"] for d in position["detections"]} == {None}  # no colour asked, none classified
    assert result.artifacts["images"].shape == (8, 3, SIZE, SIZE)  # 2 per task, 4 tasks


def test_queries_are_genevals_80_names_or_the_prompts_classes():
    meta = {"tag": "counting", "include": [{"class": "circle", "count": 2}],
            "exclude": [{"class": "circle", "count": 3}], "prompt": "two circles"}
    names = load_object_names()
    assert len(names) == 80 and names[0] == "person"
    assert GenevalDetector(SceneDetector(), palette_colour, queries="prompt").queries_for(meta) == ["circle"]
    assert GenevalDetector(SceneDetector(), palette_colour, queries="all").queries_for(meta) == list(names) + ["circle"]


def test_suite_end_to_end_on_tiny_owlv2_and_open_clip(folders, tmp_path):
    shipped = load_geneval_metadata(METADATA)
    rows = [next(r for r in shipped if r["tag"] == tag) for tag in TAGS]
    metadata = write_metadata(tmp_path / "meta.jsonl", rows)
    options = {
        "metadata_path": str(metadata), "images_per_prompt": 1, "batch_size": 4,
        "detector_path": str(folders["detector"]), "clip_path": str(folders["clip"]),
        "threshold": 0.0, "counting_threshold": 0.0, "max_objects": 3, "device": "cpu",
    }

    class Noise(Painter):
        def sample(self, prompts, seeds, steps=None):
            return torch.from_numpy(np.stack([random_images(1, seed=s % 1000)[0] for s in seeds]))

    result = GenevalRealSuite(options).run(Noise([]), world=None, seed=0, progress=False)
    assert len(result.rows) == len(TAGS)
    m = result.metrics
    assert set(m) == {f"geneval_owlv2_{t}" for t in TAGS} | {
        "geneval_owlv2_overall", "geneval_owlv2_prompts_correct", "geneval_owlv2_images"}
    assert m["geneval_owlv2_overall"] == pytest.approx(np.mean([m[f"geneval_owlv2_{t}"] for t in TAGS]))
    names = set(load_object_names())
    for r, meta in zip(result.rows, rows, strict=True):
        assert isinstance(r["correct"], bool) and r["reason"]
        dets = r["detections"]
        assert dets, "threshold 0 keeps at least one box"
        coloured = {i["class"] for i in meta["include"] if "color" in i}
        for cls in {d["cls"] for d in dets}:
            scores = [d["score"] for d in dets if d["cls"] == cls]
            assert cls in names and len(scores) <= 3 and scores == sorted(scores, reverse=True)
        for d in dets:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            assert (d["color"] in COLORS) if d["color"] is not None else True
            assert d["color"] is None or d["cls"] in coloured
        judged = score([Detection(d["cls"], d["color"], tuple(d["box"]), d["area"]) for d in dets], meta, ranked=True)
        assert judged == (r["correct"], r["reason"])


# --- missing inputs -----------------------------------------------------------------------------------------


def test_check_inputs_names_downloads_and_the_preset_table(folders, tmp_path):
    problems = check_inputs({})
    assert len(problems) == 2
    assert DETECTOR_REPO in problems[0] and "detector_path" in problems[0]
    assert CLIP_REPO in problems[1] and "clip_path" in problems[1]
    assert all("[suite_options.geneval-real]" in p for p in problems)
    assert check_inputs({"detector_path": str(folders["detector"]), "clip_path": str(folders["clip"])}) == []
    (tmp_path / "empty").mkdir()
    wrong = check_inputs({"detector_path": str(folders["clip"]), "clip_path": str(tmp_path / "empty"),
                          "metadata_path": str(tmp_path / "none.jsonl")})
    assert len(wrong) == 3
    assert "none.jsonl does not exist" in wrong[0]
    assert "has no config.json" in wrong[1] and "open_clip_config.json" in wrong[2]
    assert "does not exist" in check_inputs({"detector_path": str(tmp_path / "nowhere")})[0]


def test_run_without_models_raises_before_generating():
    painter = Painter(SCENES)
    with pytest.raises(FileNotFoundError, match="google/owlv2-base-patch16-ensemble") as err:
        GenevalRealSuite({"limit": 2}).run(painter, world=None, seed=0, progress=False)
    assert "clip_path" in str(err.value) and "[suite_options.geneval-real]" in str(err.value)
    assert painter.calls == 0


def test_options_are_checked_on_construction():
    with pytest.raises(ValueError, match="queries"):
        GenevalRealSuite({"queries": "everything"})
    with pytest.raises(ValueError, match="threshold"):
        GenevalRealSuite({"threshold": 1.5})
    with pytest.raises(ValueError, match="unknown option"):
        GenevalRealSuite({"detector": "/x"})
