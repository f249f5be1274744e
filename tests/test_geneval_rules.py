from pathlib import Path

import pytest

from benchmarks.geneval_rules import (
    TAGS,
    Detection,
    load_geneval_metadata,
    relative_position,
    score,
    validate_metadata,
)

GENEVAL_METADATA = Path(__file__).resolve().parents[1] / "benchmarks/data/geneval/evaluation_metadata.jsonl"


def det(cls, color=None, box=(0, 0, 4, 4)):
    x0, y0, x1, y1 = box
    return Detection(cls, color, tuple(float(v) for v in box), int((x1 - x0) * (y1 - y0)))


def row(tag, include, exclude=None, prompt="a photo"):
    meta = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        meta["exclude"] = exclude
    return meta


@pytest.mark.parametrize(
    "box_a, box_b, expected",
    [
        ((0, 0, 10, 10), (20, 0, 30, 10), {"left of"}),
        ((20, 0, 30, 10), (0, 0, 10, 10), {"right of"}),
        ((0, 0, 10, 10), (0, 20, 10, 30), {"above"}),
        ((0, 20, 10, 30), (0, 0, 10, 10), {"below"}),
        # offset (-20, -20) shrinks to (-18, -18); / 28.28 -> -0.64 on both axes
        ((0, 0, 10, 10), (20, 20, 30, 30), {"left of", "above"}),
        # offset (-20, -5) shrinks to (-18, -3); / 20.6 -> (-0.87, -0.15)
        ((0, 0, 10, 10), (20, 5, 30, 15), {"left of"}),
        # offset (-1, 0) lies within 0.1 x (10 + 10) = 2 px: no relation
        ((0, 0, 10, 10), (1, 0, 11, 10), set()),
        # offset (-13, -9) shrinks to (-11, -7); / 15.81 -> (-0.70, -0.44): unshrunk, -0.57 would be "above"
        ((0, 0, 10, 10), (13, 9, 23, 19), {"left of"}),
        # offset (-3, 0) shrinks to (-1, 0), divided by the unshrunk length 3 -> -0.33
        ((0, 0, 10, 10), (3, 0, 13, 10), set()),
    ],
)
def test_relative_position_follows_genevals_rule(box_a, box_b, expected):
    assert relative_position(box_a, box_b) == expected


def test_single_object_present_and_missing():
    meta = row("single_object", [{"class": "circle", "count": 1}])
    assert score([det("circle", "red")], meta) == (True, "correct")
    ok, reason = score([det("square", "red")], meta)
    assert not ok and reason == "expected 1 circle, found 0"


def test_two_object_needs_both_classes():
    meta = row("two_object", [{"class": "circle", "count": 1}, {"class": "square", "count": 1}])
    assert score([det("circle"), det("square", box=(8, 8, 12, 12))], meta)[0]
    ok, reason = score([det("circle"), det("circle", box=(8, 8, 12, 12))], meta)
    assert not ok and reason == "expected 1 square, found 0"


@pytest.mark.parametrize(
    "n_found, correct, reason",
    [
        (2, False, "expected 3 triangle, found 2"),
        (3, True, "correct"),
        (4, False, "expected fewer than 4 triangle, found 4"),
    ],
)
def test_counting_needs_exactly_n(n_found, correct, reason):
    meta = row("counting", [{"class": "triangle", "count": 3}], [{"class": "triangle", "count": 4}])
    dets = [det("triangle", box=(6 * i, 0, 6 * i + 4, 4)) for i in range(n_found)] + [det("circle")]
    assert score(dets, meta) == (correct, reason)


def test_colour_must_match_and_reason_lists_found_colours():
    meta = row("colors", [{"class": "square", "count": 1, "color": "blue"}])
    ok, reason = score([det("square", "red"), det("square", "green", box=(8, 0, 12, 4))], meta)
    assert not ok
    assert "expected 1 blue square, found 0 blue" in reason and "1 red" in reason and "1 green" in reason
    assert score([det("square", "red"), det("square", "blue", box=(8, 0, 12, 4))], meta) == (True, "correct")
    ok, reason = score([det("circle", "blue")], meta)
    assert not ok and reason == "expected 1 square, found 0"


def test_color_attr_fails_when_colours_are_swapped():
    meta = row(
        "color_attr",
        [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}],
    )
    right = [det("circle", "red"), det("square", "blue", box=(8, 0, 12, 4))]
    swapped = [det("circle", "blue"), det("square", "red", box=(8, 0, 12, 4))]
    assert score(right, meta) == (True, "correct")
    ok, reason = score(swapped, meta)
    assert not ok and "expected 1 red circle" in reason and "expected 1 blue square" in reason


def test_position_relative_to_the_first_include_item():
    # GenEval: "a photo of a circle left of a square" -> include[1] is the circle, relative to include[0]
    meta = row(
        "position",
        [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
    )
    square = det("square", "red", box=(20, 0, 30, 10))
    assert score([square, det("circle", "blue", box=(0, 0, 10, 10))], meta) == (True, "correct")
    ok, reason = score([square, det("circle", "blue", box=(40, 0, 50, 10))], meta)
    assert not ok and reason == "expected circle left of square, found circle right of square"
    ok, reason = score([square, det("circle", "blue", box=(21, 0, 31, 10))], meta)
    assert not ok and reason == "expected circle left of square, found circle no clear relation to square"
    ok, reason = score([det("circle", "blue", box=(0, 0, 10, 10))], meta)
    assert not ok and reason == "expected 1 square, found 0; no square to place circle left of"


def test_scores_a_real_geneval_row():
    meta = {
        "tag": "position",
        "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a dog right of a teddy bear",
    }
    assert score([det("teddy bear", box=(0, 0, 10, 10)), det("dog", box=(30, 2, 40, 12))], meta)[0]
    assert not score([det("teddy bear", box=(30, 2, 40, 12)), det("dog", box=(0, 0, 10, 10))], meta)[0]


def test_loads_all_553_geneval_rows_with_six_tags():
    rows = load_geneval_metadata(GENEVAL_METADATA)
    assert len(rows) == 553
    assert {r["tag"] for r in rows} == set(TAGS)
    counting = [r for r in rows if r["tag"] == "counting"]
    assert all(r["exclude"][0]["count"] == r["include"][0]["count"] + 1 for r in counting)


def test_loader_names_the_bad_line(tmp_path):
    good = '{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}'
    path = tmp_path / "meta.jsonl"
    path.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"meta.jsonl:4:"):
        load_geneval_metadata(path)
    path.write_text(good.replace('"count": 1', '"count": 0') + "\n")
    with pytest.raises(ValueError, match=r"meta.jsonl:1: .*count"):
        load_geneval_metadata(path)
    path.write_text(f"{good}\n\n{good}\n")
    assert len(load_geneval_metadata(path)) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"tag": "nope", "include": [{"class": "cat", "count": 1}], "prompt": "p"},
        {"tag": "single_object", "include": [], "prompt": "p"},
        {"tag": "single_object", "include": [{"class": "cat", "count": 1, "size": 3}], "prompt": "p"},
        {"tag": "position", "include": [{"class": "cat", "count": 1, "position": ["left of", 0]}], "prompt": "p"},
        {
            "tag": "position",
            "include": [{"class": "a", "count": 1}, {"class": "b", "count": 1, "position": ["near", 0]}],
            "prompt": "p",
        },
    ],
)
def test_validate_metadata_rejects_malformed_rows(bad):
    with pytest.raises(ValueError):
        validate_metadata(bad)
