import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.geneval_rules import TAGS, validate_metadata
from benchmarks.worlds import UnknownWorldError, available_worlds, get_world
from benchmarks.worlds.check import show_grid
from benchmarks.worlds.shapes import OPTIONS, TEST_BUCKETS, _row, parse_caption

GENEVAL_METADATA = Path(__file__).resolve().parents[1] / "benchmarks/data/geneval/evaluation_metadata.jsonl"


@pytest.fixture(scope="module")
def world():
    return get_world("shapes", 16)


def test_batch_is_deterministic_and_independent_of_batch_composition(world):
    a = world.batch([5, 17, 3, 1000])
    b = world.batch([5, 17, 3, 1000])
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions and a.metadata == b.metadata
    single = world.batch([3])
    np.testing.assert_array_equal(single.images[0], a.images[2])
    assert single.captions[0] == a.captions[2]


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_batch_shapes_and_palette(resolution):
    w = get_world("shapes", resolution)
    batch = w.batch(range(20), split="test")
    assert batch.images.shape == (20, 3, resolution, resolution) and batch.images.dtype == np.uint8
    assert set(np.unique(batch.images)) <= {0, 255}  # hard palette pixels, no anti-aliasing
    assert len(batch.captions) == len(batch.metadata) == 20


def test_train_and_test_share_no_image(world):
    train = world.batch(range(3000), "train")
    test = world.batch(range(600), "test")
    train_set = {img.tobytes() for img in train.images}
    assert not train_set & {img.tobytes() for img in test.images}
    assert all(zlib.crc32(img.tobytes()) % TEST_BUCKETS == 0 for img in test.images)
    assert train.captions[:50] != test.captions[:50]


def test_batch_draws_every_task_kind_about_uniformly(world):
    tags = [m["tag"] for m in world.batch(range(1200)).metadata]
    counts = [tags.count(t) for t in TAGS]
    assert min(counts) > 150, counts


def test_metadata_follows_genevals_schema(world):
    batch = world.batch(range(300))
    for caption, meta in zip(batch.captions, batch.metadata):
        validate_metadata(meta)
        assert meta["prompt"] == caption
        keys = ["tag", "include", "exclude", "prompt"] if "exclude" in meta else ["tag", "include", "prompt"]
        assert list(meta) == keys


def test_rows_have_the_same_structure_as_genevals_per_tag():
    def structure(r):
        return (
            tuple(r),
            tuple(tuple(item) for item in r["include"]),
            tuple(tuple(item) for item in r.get("exclude", [])),
            tuple(tuple(item["position"][1:]) for item in r["include"] if "position" in item),
        )

    geneval = {}
    for line in GENEVAL_METADATA.read_text().splitlines():
        r = json.loads(line)
        geneval.setdefault(r["tag"], set()).add(structure(r))
    for tag in TAGS:
        assert {structure(_row(tag, p)) for p in OPTIONS[tag]} <= geneval[tag], tag


def test_counting_captions_read_like_genevals():
    assert _row("counting", (3, "circle")) == {
        "tag": "counting",
        "include": [{"class": "circle", "count": 3}],
        "exclude": [{"class": "circle", "count": 4}],
        "prompt": "a photo of three circles",
    }
    assert _row("position", ("circle", "left of", "square"))["include"] == [
        {"class": "square", "count": 1},
        {"class": "circle", "count": 1, "position": ["left of", 0]},
    ]


def test_every_prompt_parses_back_to_its_row():
    for tag, options in OPTIONS.items():
        for params in options:
            meta = _row(tag, params)
            assert parse_caption(meta["prompt"]) == meta
    assert parse_caption("  A photo of a RED   circle ") == _row("colors", ("red", "circle"))


@pytest.mark.parametrize(
    "caption",
    [
        "a photo of a dog",
        "a photo of five circles",
        "a photo of a circle and a circle",
        "a photo of a red circle and a square",
        "a photo of a red circle left of a square",
        "a photo of a red circle and a red square",
        "a circle",
        "",
    ],
)
def test_render_caption_rejects_captions_outside_the_grammar(world, caption):
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        world.render_caption(caption, seed=0)


def test_render_caption_is_seeded_and_satisfies_the_caption(world):
    a = world.render_caption("a photo of four triangles", seed=7)
    np.testing.assert_array_equal(a, world.render_caption("a photo of four triangles", seed=7))
    assert a.shape == (3, 16, 16)
    assert [d.cls for d in world.detect(a)] == ["triangle"] * 4


def test_prompts_are_deterministic_distinct_and_balanced(world):
    rows = world.prompts(10, seed=3)
    assert rows == world.prompts(10, seed=3)
    assert rows != world.prompts(10, seed=4)
    assert [r["tag"] for r in rows] == [t for t in TAGS for _ in range(10)]
    for tag in TAGS:
        prompts = [r["prompt"] for r in rows if r["tag"] == tag]
        assert len(set(prompts)) == min(10, len(OPTIONS[tag]))
    single = [r["prompt"] for r in world.prompts(7)[:7]]
    assert set(single) == {"a photo of a circle", "a photo of a square", "a photo of a triangle"}
    for r in rows:
        validate_metadata(r)


def test_vocabulary_covers_every_caption(world):
    vocab = set(world.vocabulary())
    words = {w for c in world.batch(range(500)).captions for w in c.split()}
    words |= {w for r in world.prompts(50) for w in r["prompt"].split()}
    assert words <= vocab
    assert all(w == w.lower() for w in vocab)


def test_batch_rejects_unknown_split_and_negative_index(world):
    with pytest.raises(ValueError, match="available: train, test"):
        world.batch([0], split="val")
    with pytest.raises(ValueError, match=">= 0"):
        world.batch([-1])


def test_registry_lists_valid_names_and_resolutions():
    assert {"digits", "shapes"} <= set(available_worlds()) and available_worlds() == sorted(available_worlds())
    with pytest.raises(UnknownWorldError, match=f"unknown world 'foo'; available: {', '.join(available_worlds())}"):
        get_world("foo")
    with pytest.raises(KeyError):
        get_world("foo")
    with pytest.raises(ValueError, match="16, 32, 64"):
        get_world("shapes", 24)
    assert get_world("shapes").resolution == 16


def test_show_grid_writes_a_png(tmp_path, world):
    out = show_grid(world, 6, tmp_path / "grid.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
