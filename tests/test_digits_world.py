import numpy as np
import pytest

from benchmarks.worlds import get_world
from benchmarks.worlds.check import check_world, show_grid


@pytest.fixture(scope="module")
def world():
    return get_world("digits")


def test_batch_shapes_values_and_captions(world):
    batch = world.batch(range(10))
    assert batch.images.shape == (10, 1, 8, 8) and batch.images.dtype == np.uint8
    assert batch.images.max() == 255 and batch.images.min() == 0
    assert all(c.startswith("the digit ") and c[-1].isdigit() for c in batch.captions)
    assert batch.metadata == [{}] * 10
    assert (world.resolution, world.channels, world.categories) == (8, 1, ())


def test_batch_is_deterministic_and_wraps_around_the_split(world):
    n = world.split_size("train")
    a = world.batch([0, 3, n + 3])
    np.testing.assert_array_equal(a.images, world.batch([0, 3, n + 3]).images)
    np.testing.assert_array_equal(a.images[1], a.images[2])
    assert a.captions[1] == a.captions[2]


def test_train_and_test_are_disjoint_and_split_80_20(world):
    n_train, n_test = world.split_size("train"), world.split_size("test")
    assert n_train + n_test == 1797 and n_test == 359
    train = {img.tobytes() for img in world.batch(range(n_train)).images}
    test = {img.tobytes() for img in world.batch(range(n_test), "test").images}
    assert not train & test


def test_render_caption_returns_a_test_image_of_that_digit(world):
    image = world.render_caption("the digit 3", seed=1)
    assert image.shape == (1, 8, 8)
    test = world.batch(range(world.split_size("test")), "test")
    threes = [img for img, c in zip(test.images, test.captions) if c == "the digit 3"]
    assert any(np.array_equal(image, img) for img in threes)
    np.testing.assert_array_equal(image, world.render_caption("the digit 3", seed=1))
    with pytest.raises(ValueError, match="'the digit 12'"):
        world.render_caption("the digit 12", seed=0)


def test_no_geneval_for_digits(world):
    assert world.prompts(5) == []
    with pytest.raises(NotImplementedError, match="no object detector"):
        world.detect(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="no GenEval categories"):
        check_world(world, 5)


def test_vocabulary_and_resolution(world):
    assert set(world.vocabulary()) == {"the", "digit", *map(str, range(10))}
    with pytest.raises(ValueError, match="resolution 8"):
        get_world("digits", 16)


def test_show_grid_handles_one_channel(tmp_path, world):
    assert show_grid(world, 4, tmp_path / "digits.png").stat().st_size > 0
