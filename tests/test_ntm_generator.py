"""NTM behind the Generator interface: sampling protocol, likelihood reporting, registry rows."""

import numpy as np
import pytest
import torch

from baselines.base import BuildContext, to_model_space
from baselines.ntm import NTMGenerator, ntm_config
from benchmarks.presets import load_preset
from benchmarks.runner import evaluate
from benchmarks.tables import write_tables
from benchmarks.worlds import get_world
from ntm.model import NTM


def generator(transporter: bool, guidance: float = 2.0) -> NTMGenerator:
    world = get_world("shapes", 16)
    ctx = BuildContext(world, torch.device("cpu"), None, {"size": "tiny", "patch": 4, "transporter": {"width": 16, "blocks": 2}}, {})
    torch.manual_seed(0)
    model = NTM(ntm_config(ctx, transporter, steps=4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return NTMGenerator(model, "ntm-test", guidance, bound_samples=3, weights="w", init="scratch")


@pytest.mark.parametrize("transporter", [True, False])
def test_samples_are_per_seed_and_batch_invariant(transporter):
    gen = generator(transporter)
    prompts = ["a photo of a circle", "a photo of a red square", "a photo of two triangles", "a photo of a circle"]
    seeds = [3, 1, 4, 3]
    whole = gen.sample(prompts, seeds)
    parts = torch.cat([gen.sample(prompts[:1], seeds[:1]), gen.sample(prompts[1:], seeds[1:])])
    assert whole.dtype == torch.uint8 and whole.shape == (4, 3, 16, 16)
    torch.testing.assert_close(whole.int(), parts.int(), atol=1, rtol=0)  # float32 rounding at pixel edges only
    assert (whole != parts).float().mean() < 1e-3
    assert torch.equal(whole[0], whole[3])
    assert gen.spec.nfe == 8 and gen.spec.family == ("ntm" if transporter else "gaussian")


def test_likelihoods_name_their_estimator_and_target():
    gen = generator(True)
    x = to_model_space(torch.randint(0, 256, (3, 3, 16, 16)), torch.rand(3, 3, 16, 16, dtype=torch.float64))
    prompts, seeds = ["a photo of a circle"] * 3, [7, 8, 9]
    data = gen.log_likelihood(x, prompts, seeds)
    traj = gen.trajectory_log_likelihood(x, prompts, seeds)
    assert (data.estimator, data.target, traj.estimator, traj.target) == ("iwae", "data", "exact", "trajectory")
    assert torch.isfinite(data.nll_nats).all() and torch.isfinite(traj.nll_nats).all()
    again = gen.log_likelihood(x[1:], prompts[1:], seeds[1:])
    torch.testing.assert_close(data.nll_nats[1:], again.nll_nats, rtol=1e-6, atol=1e-3)


def test_ntm_rows_join_the_table(preset_file, tmp_path):
    out = tmp_path / "out"
    evaluate(load_preset(preset_file), out, models=["ntm", "ntm-no-transporter", "ntm-fast"], suites=["nll"], progress=False)
    frame = write_tables(out).set_index("model")
    for name in ("ntm", "ntm-no-transporter"):
        assert np.isfinite(frame.loc[name, "nll_bpd"]) and np.isfinite(frame.loc[name, "nll_traj_bpd"])
        assert frame.loc[name, "nll_estimator"] == "iwae"
    assert frame.loc["ntm", "family"] == "ntm" and frame.loc["ntm-no-transporter", "family"] == "gaussian"
    # the fast sampler's images are the denoiser's, not draws from the NTM density: no likelihood
    assert frame.loc["ntm-fast", "nll_estimator"] == "n/a" and not np.isfinite(frame.loc["ntm-fast", "nll_bpd"])
    assert frame.loc["ntm-fast", "nfe"] == frame.loc["ntm", "nfe"] + 1
    assert len(list((out / "checkpoints").glob("ntm_denoiser-*"))) == 1


def test_fast_sampler_never_inverts_the_transporter():
    from baselines.ntm import NTMFastGenerator
    from ntm.denoiser import Denoiser

    gen = generator(True)
    fast = NTMFastGenerator(gen.model, Denoiser.for_model(gen.model), "f", 2.0, "w", "scratch")

    def refuse(*args, **kwargs):
        raise AssertionError("the fast sampler must not invert f_T")

    gen.model.transporter.inverse = refuse
    images = fast.sample(["a photo of a circle", "a photo of two squares"], [1, 2])
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    assert fast.capabilities.likelihood is False
