import numpy as np
import pytest
from scipy import ndimage

from benchmarks.geneval_rules import score
from benchmarks.worlds import get_world
from benchmarks.worlds.check import add_noise, check_world
from benchmarks.worlds.shapes import BACKGROUND, PALETTE, shape_mask


@pytest.fixture(scope="module", params=[16, 32, 64])
def world(request):
    return get_world("shapes", request.param)


def blank(resolution):
    return np.broadcast_to(np.array(BACKGROUND, np.uint8)[:, None, None], (3, resolution, resolution)).copy()


def test_parser_is_exact_on_ground_truth(world):
    n = 300 if world.resolution < 64 else 100
    batch = world.batch(range(n), split="test")
    for image, meta in zip(batch.images, batch.metadata):
        detections = world.detect(image)
        assert score(detections, meta) == (True, "correct"), (meta["prompt"], detections)
        assert len(detections) == sum(item["count"] for item in meta["include"])


def test_parser_reads_hand_drawn_scene():
    w = get_world("shapes", 32)
    image = blank(32)
    shapes = [("circle", "red", 2, 3, 9), ("triangle", "black", 20, 1, 11), ("square", "yellow", 5, 20, 8)]
    for cls, color, x, y, s in shapes:
        image[:, y : y + s, x : x + s][:, shape_mask(cls, s, s)] = np.array(PALETTE[color], np.uint8)[:, None]
    found = {(d.cls, d.color, d.box, d.area) for d in w.detect(image)}
    assert found == {
        ("circle", "red", (2.0, 3.0, 11.0, 12.0), int(shape_mask("circle", 9, 9).sum())),
        ("triangle", "black", (20.0, 1.0, 31.0, 12.0), int(shape_mask("triangle", 11, 11).sum())),
        ("square", "yellow", (5.0, 20.0, 13.0, 28.0), 64),
    }


def test_parser_survives_moderate_noise_and_blur():
    w = get_world("shapes", 16)
    rng = np.random.default_rng(0)
    rows = w.prompts(20, seed=1)
    for i, row in enumerate(rows):
        image = w.render_caption(row["prompt"], seed=i)
        assert score(w.detect(add_noise(image, 24, rng)), row)[0], row["prompt"]
        blurred = np.stack([ndimage.gaussian_filter(c.astype(float), 0.6) for c in image])
        assert score(w.detect(np.rint(blurred).astype(np.uint8)), row)[0], row["prompt"]


def test_parser_never_crashes_on_arbitrary_images(world):
    r = world.resolution
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, r, r), dtype=np.uint8) for _ in range(10)]
    images += [np.full((3, r, r), v, np.uint8) for v in (0, 1, 127, 128, 254, 255)]
    images += [np.broadcast_to(np.array(rgb, np.uint8)[:, None, None], (3, r, r)).copy() for rgb in PALETTE.values()]
    images += [(rng.random((3, r, r)) < 0.5).astype(np.uint8) * 255, blank(r)]
    for image in images:
        detections = world.detect(image)
        assert all(d.area > 0 and d.box[2] > d.box[0] and d.box[3] > d.box[1] for d in detections)
    assert world.detect(blank(r)) == []
    full_red = np.broadcast_to(np.array(PALETTE["red"], np.uint8)[:, None, None], (3, r, r)).copy()
    assert [(d.cls, d.color) for d in world.detect(full_red)] == [("square", "red")]


def test_detect_rejects_wrong_image_shapes():
    w = get_world("shapes", 16)
    for bad in (np.zeros((16, 16, 3), np.uint8), np.zeros((3, 32, 32), np.uint8), np.zeros((1, 16, 16), np.uint8)):
        with pytest.raises(ValueError, match="expected a \\(3, 16, 16\\) image"):
            w.detect(bad)
    with pytest.raises(ValueError, match="uint8"):
        w.detect(np.zeros((3, 16, 16), np.float32))


def test_check_world_reports_full_accuracy_on_clean_scenes():
    result = check_world(get_world("shapes", 16), n=20, noise_levels=(0, 16))
    assert result["resolution"] == 16 and result["n"] == 20
    assert set(result["noise"]) == {"0", "16"}
    assert result["per_category"] == result["noise"]["0"]["per_category"]
    assert set(result["per_category"]) == set(get_world("shapes").categories)
    assert result["overall"] == 1.0 and result["noise"]["16"]["overall"] == 1.0
