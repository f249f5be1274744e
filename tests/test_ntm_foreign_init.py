"""NTM initialised from a velocity network that is not this project's backbone: a diffusers SD3 transformer
(random weights, built locally: nothing is downloaded) behind a ten-line adapter."""

import copy

import pytest
import torch
from torch import Tensor, nn

from ntm.model import NTM, NTMConfig
from ntm.schedule import posterior
from ntm.transporter import TransporterConfig

pytestmark = pytest.mark.usefixtures("one_thread")

diffusers = pytest.importorskip("diffusers")

WORDS = ["<pad>", "a", "red", "blue", "circle", "square"]


class SD3Velocity(nn.Module):
    """(x, t, tokens) -> v for an SD3 transformer: SD3 reads sigma = t in [0, 1] as timestep 1000 t and
    predicts eps - x0, the same rectified-flow convention as this project's teacher."""

    def __init__(self) -> None:
        super().__init__()
        self.net = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=3, out_channels=3, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
            pos_embed_max_size=8,
        )
        self.words = nn.Embedding(len(WORDS), 16)

    def encode_text(self, prompts: list[str]) -> Tensor:
        ids = [[WORDS.index(w) for w in p.split()] + [0] * (4 - len(p.split())) for p in prompts]
        return torch.tensor(ids)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        text = self.words(tokens).to(x.dtype)
        t = t.to(x.dtype).reshape(-1).expand(x.shape[0])
        return self.net(x, encoder_hidden_states=text, pooled_projections=text.mean(1), timestep=1000 * t).sample


def _model(transporter: bool) -> tuple[NTM, SD3Velocity]:
    torch.manual_seed(0)
    velocity = SD3Velocity()
    f_t = TransporterConfig(resolution=8, channels=3, patch=4, width=16, spline_bins=4) if transporter else None
    return NTM.from_velocity(velocity, NTMConfig(predictor=None, transporter=f_t), channels=3), velocity


def test_each_step_at_init_is_the_foreign_networks_posterior_step():
    model, velocity = _model(transporter=False)
    frozen = copy.deepcopy(velocity).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([1.0, 0.8, 0.5, 0.2], dtype=torch.float64)
    s = t * torch.rand(4, generator=g, dtype=torch.float64) + 0.001
    tokens = model.encode_text(["a red circle", "blue square", "a circle", ""])
    with torch.no_grad():
        mu, log_sigma = model.predictor(u, t, s, tokens)
        A, B, C = (c.float()[:, None, None, None] for c in posterior(s, t))
        x0_hat = u - t.float()[:, None, None, None] * frozen(u, t, tokens)
        assert x0_hat.abs().max() > 0.1
        torch.testing.assert_close(mu, A * u + B * x0_hat, rtol=0, atol=1e-6)
        torch.testing.assert_close(log_sigma, C.log().expand_as(log_sigma), rtol=0, atol=1e-6)
        x0 = torch.randn(4, 3, 8, 8, generator=g)
        assert model.alignment_loss(frozen, x0, tokens, torch.Generator().manual_seed(0)).max() < 1e-10


def test_it_trains_samples_and_scores_like_any_ntm():
    model, velocity = _model(transporter=True)
    frozen = copy.deepcopy(velocity).requires_grad_(False)
    tokens = model.encode_text(["a red circle", "blue square"])
    x0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        loss = model.loss(x0, tokens, g).mean() + model.alignment_loss(frozen, x0, tokens, g).mean()
        opt.zero_grad()
        loss.float().backward()
        opt.step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    # the wrapped network, the delta head and the transporter all learn
    assert any(k.startswith("predictor.velocity.net.") for k in moved)
    assert {"predictor.out.weight", "transporter.spline.out.weight"} <= moved
    with torch.no_grad():
        noises = torch.randn(5, 2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
        assert torch.isfinite(model.sample(noises, tokens)).all()
        bound = model.data_bound(x0, tokens, samples=2)
        assert torch.isfinite(bound.iwae_nats).all() and (bound.iwae_nats >= bound.elbo_nats - 1e-9).all()


def test_a_foreign_ntm_cannot_be_rebuilt_from_its_config_and_says_how():
    model, _ = _model(transporter=False)
    with pytest.raises(ValueError, match="from_velocity"):
        NTM.from_config(model.to_config())
    with pytest.raises(ValueError, match="predictor = None"):
        NTM.from_velocity(SD3Velocity(), NTMConfig(predictor=None, data_variance=1.0), channels=3)
    with pytest.raises(ValueError, match="encode_text"):
        NTM.from_velocity(nn.Linear(2, 2), NTMConfig(predictor=None), channels=3)
    with pytest.raises(ValueError, match="not both or neither"):
        NTM(NTMConfig(predictor=None))
