"""OOD sets and scores, conditional calibration and typicality, on hand-made arrays and the exact oracle."""

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from benchmarks.audit.conditional import ConditionalCalibration, conditional_calibration, mismatched_captions
from benchmarks.audit.ood import (
    IN_DISTRIBUTION, UNSEEN_COLOURS, OodResult, detection_verdict, ood_audit, ood_sets, png_bits_per_dim,
)
from benchmarks.audit.oracle import OracleGenerator
from benchmarks.audit.typicality import typicality
from benchmarks.geneval_rules import score
from benchmarks.worlds import get_world
from benchmarks.worlds.gaussian import GaussianWorld
from benchmarks.worlds.shapes import BACKGROUND, PALETTE


def test_ood_sets_have_the_world_shape_and_unseen_colours_are_unseen():
    world = get_world("shapes", 16)
    sets = ood_sets(world, 6, seed=0)
    assert list(sets) == [IN_DISTRIBUTION, "digits", "unseen colours", "uniform noise", "constant"]
    assert all(s.shape == (6, 3, 16, 16) and s.dtype == np.uint8 for s in sets.values())
    assert not set(UNSEEN_COLOURS) & (set(PALETTE.values()) | {BACKGROUND})
    recoloured, data = sets["unseen colours"], sets[IN_DISTRIBUTION]
    background = (data == np.array(BACKGROUND, np.uint8)[:, None, None, None].transpose(1, 0, 2, 3)).all(1)
    assert np.array_equal(background, (recoloured == data).all(1))  # every object pixel changed, nothing else
    colours = {tuple(c) for c in recoloured.transpose(0, 2, 3, 1).reshape(-1, 3).tolist()}
    assert colours <= set(UNSEEN_COLOURS) | {BACKGROUND}
    assert (sets["constant"] == sets["constant"][:, :, :1, :1]).all()
    digits = sets["digits"]
    assert (digits[:, 0] == digits[:, 2]).all() and (digits[:, :, ::2, ::2] == digits[:, :, 1::2, 1::2]).all()


def test_png_code_length_orders_constant_shapes_noise():
    sets = ood_sets(get_world("shapes", 16), 4, seed=0)
    constant, shapes, noise = (png_bits_per_dim(sets[k]).mean() for k in ("constant", IN_DISTRIBUTION, "uniform noise"))
    assert constant < shapes < noise and noise > 8  # noise is incompressible; PNG adds headers


def test_ood_result_aurocs_and_the_complexity_correction():
    data = np.array([3.0, 3.2, 3.4])
    # the constant images look more likely than data by raw NLL, but they compress to almost nothing
    result = OodResult("m", {IN_DISTRIBUTION: data, "constant": np.array([1.0, 1.1])},
                       {IN_DISTRIBUTION: np.array([1.0, 1.0, 1.0]), "constant": np.array([0.05, 0.05])})
    assert result.auroc("constant", corrected=False) == 0.0
    assert result.auroc("constant", corrected=True) == 0.0  # 0.95, 1.05 still below 2.0..2.4
    result.png_bpd["constant"] = np.array([-5.0, -5.0])
    assert result.auroc("constant", corrected=True) == 1.0
    assert [detection_verdict(a) for a in (0.95, 0.7, 0.5, 0.1)] == [
        "detects OOD", "weak detection", "chance", "inverted: OOD looks more likely"]


def test_ood_audit_with_the_oracle_on_its_own_world():
    """Under the exact density, noise and constants are far less likely than held-out draws: AUROC 1."""
    world = GaussianWorld(resolution=4)
    sets = ood_sets(world, 8, seed=0)
    assert "unseen colours" not in sets
    result = ood_audit(OracleGenerator(world), sets, seed=0)
    assert result.auroc("uniform noise", False) == 1.0 and result.auroc("constant", False) == 1.0
    assert len(result.rows()) == len(sets) + 2 * (len(sets) - 1)


def test_mismatched_captions_are_false_of_their_image():
    world = get_world("shapes", 16)
    batch = world.batch(range(6), "test")
    wrong = mismatched_captions(world, batch.images, batch.captions, 3, seed=0)
    rows = {row["prompt"]: row for row in world.prompts(8, seed=0)}
    for image, caption, captions in zip(batch.images, batch.captions, wrong):
        assert len(set(captions)) == 3 and caption not in captions
        assert not any(score(world.detect(image), rows[c])[0] for c in captions)


def test_conditional_calibration_counts_and_the_oracle_is_perfect():
    cal = ConditionalCalibration("m", np.array([1.0, 5.0, 2.0]), np.array([[2.0, 3.0], [4.0, 6.0], [3.0, 2.5]]))
    assert cal.accuracy == pytest.approx(2 / 3) and cal.chance == pytest.approx(1 / 3)
    # of the 18 (matched, mismatched) pairs the matched NLL is lower in 6 + 1 + 5, and ties (2 vs 2) in 1
    assert cal.auroc == pytest.approx(12.5 / 18)
    world = GaussianWorld(resolution=4)
    exact = conditional_calibration(OracleGenerator(world), world, images=8, mismatched=3, seed=0)
    assert exact.accuracy == 1.0 and exact.auroc == 1.0
    assert exact.rows()[0]["verdict"] == "prefers the matched caption"


class MeanSampler(OracleGenerator):
    """Exact likelihood, but samples are the rounded component mean: the most likely image, not a draw."""

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        means = [self.world.means[int(p.split()[1])] for p in prompts]
        return torch.from_numpy(np.floor(np.stack(means)).astype(np.uint8))


def test_typicality_passes_exact_sampling_and_flags_mode_seeking():
    world = GaussianWorld(resolution=4)
    exact = typicality(OracleGenerator(world), world, samples=40, seed=0)
    assert exact.verdict == "typical" and exact.p_value > 0.05
    modes = typicality(MeanSampler(world), world, samples=40, seed=0)
    assert modes.ks == 1.0 and modes.verdict == "atypical: samples more likely than data"
