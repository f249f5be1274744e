"""The NTM rows that share `ntm`'s weights (ntm-8, ntm-eta*): specs that name their sampler, and bad options."""

import pytest

from baselines.ntm import NTMGenerator, at_steps
from ntm.model import NTM, NTMConfig
from ntm.predictor import predictor_config
from ntm.train import TrainConfig
from tests.conftest import random_teacher


def model(step_counts=()) -> NTM:
    return NTM(NTMConfig(predictor_config(random_teacher().net.config), step_counts=step_counts))


def test_rows_name_their_sampler_and_step_count():
    ancestral = NTMGenerator(model(), "ntm", 2.0, 2, "w", "teacher")
    eta = NTMGenerator(model(), "ntm-eta0.5", 2.0, 2, "w", "teacher", eta=0.5)
    eight = NTMGenerator(at_steps(model((4, 8)), 8), "ntm-8", 2.0, 2, "w", "teacher")
    assert ancestral.spec.settings["sampler"] == "ancestral" and "eta" not in ancestral.spec.settings
    assert eta.spec.settings | {} == ancestral.spec.settings | {"sampler": "eta", "eta": 0.5}
    assert (eight.spec.steps, eight.spec.nfe) == (8, 16) and eight.model.config.steps == 8
    assert len({ancestral.spec.hash, eta.spec.hash, eight.spec.hash}) == 3  # never one row's records for another
    assert at_steps(model(), None).config.steps == 4


def test_bad_ntm_row_options_name_the_fix():
    with pytest.raises(ValueError, match="trained over \\[4\\] steps, not 8: set sample_steps"):
        at_steps(model(), 8)
    with pytest.raises(ValueError, match="eta must lie in \\[0, 1\\]"):
        NTMGenerator(model(), "ntm-eta2", 2.0, 2, "w", "teacher", eta=2.0)
    with pytest.raises(ValueError, match="schedule = 'linear' must be one of"):
        TrainConfig(schedule="linear")


def test_the_audit_scores_ntm_8_apart_from_ntm_and_the_eta_rows_with_it():
    from benchmarks.audit.run import likelihood_identity

    ancestral = NTMGenerator(model((4, 8)), "ntm", 2.0, 2, "w", "teacher")
    eta = NTMGenerator(model((4, 8)), "ntm-eta0.5", 2.0, 2, "w", "teacher", eta=0.5)
    eight = NTMGenerator(at_steps(model((4, 8)), 8), "ntm-8", 2.0, 2, "w", "teacher")
    assert likelihood_identity(ancestral) == likelihood_identity(eta) != likelihood_identity(eight)
