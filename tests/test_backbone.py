import pytest
import torch

from ntm.backbone import SIZES, BackboneConfig, DiT, WordTokenizer, backbone_config, count_parameters
from tests.conftest import random_teacher


def config(**kw) -> BackboneConfig:
    return backbone_config("tiny", **({"resolution": 16, "in_channels": 3, "out_channels": 3, "patch": 4, "vocabulary": ("red", "circle")} | kw))


def test_untrained_backbone_outputs_zero_and_has_named_sizes():
    net = DiT(config())
    out = net(torch.randn(2, 3, 16, 16), torch.rand(2), net.encode_text(["red circle", ""]))
    assert out.shape == (2, 3, 16, 16)
    assert torch.count_nonzero(out) == 0  # adaLN-Zero output layer
    assert set(SIZES) == {"tiny", "small", "base"}
    with torch.device("meta"):
        sizes = [count_parameters(DiT(backbone_config(s, resolution=16, in_channels=3, out_channels=3, patch=4))) for s in SIZES]
    assert sizes == sorted(sizes)


def test_patchify_roundtrip_and_two_time_inputs():
    net = DiT(config(n_times=2, out_channels=6))
    x = torch.randn(3, 3, 16, 16)
    h = net.patchify(x)
    assert h.shape == (3, 16, 48)
    assert net(x, torch.rand(3, 2), net.encode_text(["red"] * 3)).shape == (3, 6, 16, 16)
    with pytest.raises(ValueError, match="2 time input"):
        net(x, torch.rand(3), net.encode_text(["red"] * 3))


def test_text_changes_the_output():
    model = random_teacher()
    x, t = torch.randn(1, 3, 8, 8), torch.full((1,), 0.5)
    a = model(x, t, model.encode_text(["a red circle"]))
    b = model(x, t, model.encode_text(["a circle"]))
    assert not torch.allclose(a, b)


def test_tokenizer():
    tok = WordTokenizer(("red", "circle"), max_len=4)
    ids = tok.encode(["Red circle", "", "blue"])
    assert ids.tolist() == [[1, 3, 4, 0], [1, 0, 0, 0], [1, 2, 0, 0]]
    with pytest.raises(ValueError, match="at most 3"):
        tok.encode(["red red red red"])


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="divisible"):
        config(patch=3)
    with pytest.raises(ValueError, match="available: tiny, small, base"):
        backbone_config("huge", resolution=16, in_channels=3, out_channels=3, patch=4)
    c = config()
    assert BackboneConfig.from_dict(c.to_dict()) == c
