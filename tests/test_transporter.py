import pytest
import torch
from torch.autograd.functional import jacobian

from ntm.transporter import Transporter, TransporterConfig

pytestmark = pytest.mark.usefixtures("one_thread")





# with the element-wise spline in front and a within-patch mix before each affine block, so every
# test below covers both
CONFIG = TransporterConfig(
    resolution=4, channels=3, patch=2, width=16, blocks=2, layers=2, heads=2, vocab_size=7, spline_bins=4, mix=True
)


def _model(
    config: TransporterConfig = CONFIG, perturb: float | None = 0.3, seed: int = 0
) -> Transporter:
    torch.manual_seed(seed)
    model = Transporter(config).double()
    if perturb is not None:
        # every parameter, the zero-initialised output layers included, so no block is the identity
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
            # a mix matrix with O(1) random off-diagonal entries over 12 values is badly conditioned
            # (|u| in the hundreds): keep its entries at the scale training reaches
            for mix in model.mixes or []:
                mix.out.weight.mul_(0.1)
                mix.out.bias.mul_(0.1)
    return model


def _inputs(b: int, config: TransporterConfig = CONFIG, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    r = config.resolution
    x = torch.randn(b, config.channels, r, r, generator=g, dtype=torch.float64)
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.05
    tokens = torch.randint(1, max(config.vocab_size, 2), (b, 5), generator=g)
    tokens[:, 3:] = 0
    return x, t, (tokens if config.vocab_size else None)


def test_inverse_round_trips_in_both_directions():
    model = _model()
    x, t, tokens = _inputs(4)
    with torch.no_grad():
        u, _ = model(x, t, tokens)
        assert (u - x).abs().max() > 0.1
        assert (model.inverse(u, t, tokens) - x).abs().max() < 1e-10
        # inverse is the KV-cached autoregressive pass: re-encoding it must give u back
        x_from_noise = model.inverse(x, t, tokens)
        assert (model(x_from_noise, t, tokens)[0] - x).abs().max() < 1e-10


def test_logdet_equals_brute_force_jacobian_and_jacobian_is_not_triangular():
    model = _model()
    x, t, tokens = _inputs(2)
    _, logdet = model(x, t, tokens)
    for i in range(2):
        def f(xi: torch.Tensor, i: int = i) -> torch.Tensor:
            return model(xi[None], t[i : i + 1], tokens[i : i + 1])[0].reshape(-1)

        jac = jacobian(f, x[i], vectorize=True).reshape(48, 48)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logabs - logdet[i]).item() < 1e-8
        assert abs(logdet[i]).item() > 0.5
        # in patch order, one block is block-triangular; alternating directions must fill both sides
        def g(p: torch.Tensor, i: int = i) -> torch.Tensor:
            u = model(model.unpatchify(p), t[i : i + 1], tokens[i : i + 1])[0]
            return model.patchify(u).reshape(-1)

        patch_jac = jacobian(g, model.patchify(x[i : i + 1]), vectorize=True).reshape(48, 48)
        assert patch_jac.triu(12).abs().max() > 1e-3 and patch_jac.tril(-12).abs().max() > 1e-3


def test_single_block_is_triangular_in_its_own_scan_order():
    for blocks in (1, 2):
        model = _model(TransporterConfig(**(CONFIG.to_dict() | {"blocks": blocks})))
        x, t, tokens = _inputs(1)
        block = model.blocks[-1]
        cond, gate = model._condition(x, t, tokens)
        p0 = model.patchify(x)
        jac = jacobian(lambda p: block(p, cond, gate)[0].reshape(-1), p0, vectorize=True)
        jac = jac.reshape(48, 48)
        # patch i sees only patches before it in the block's scan order (reversed for odd blocks)
        off = jac.triu(12) if blocks == 1 else jac.tril(-12)
        assert off.abs().max() == 0
        # within a patch the Jacobian is diagonal, exp(-a_i): its log-product is the block's logdet
        diag = torch.cat([jac[12 * k : 12 * k + 12, 12 * k : 12 * k + 12].diag() for k in range(4)])
        assert abs(diag.log().sum() - block(p0, cond, gate)[1][0]).item() < 1e-12


def test_zero_initialised_transporter_is_exactly_identity():
    model = _model(perturb=None)
    x, t, tokens = _inputs(3)
    u, logdet = model(x, t, tokens)
    assert torch.equal(u, x) and torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(model.inverse(x, t, tokens), x)


def test_legacy_gated_transporter_is_identity_at_t_one_and_new_one_is_not():
    legacy = {k: v for k, v in CONFIG.to_dict().items() if k != "time_gate"}
    assert TransporterConfig.from_dict(legacy).time_gate and not CONFIG.time_gate
    gated = _model(TransporterConfig.from_dict(legacy))
    x, t, tokens = _inputs(3)
    ones = torch.ones_like(t)
    u, logdet = gated(x, ones, tokens)
    assert torch.equal(u, x) and (logdet == 0).all()
    assert torch.equal(gated.inverse(x, ones, tokens), x)
    assert not torch.equal(gated(x, t, tokens)[0], x)
    # without the gate the same weights act at high noise as they do anywhere
    free = _model()
    u, logdet = free(x, ones * 0.99, tokens)
    assert (u - x).abs().max() > 0.1 and logdet.abs().min() > 0.5
    torch.testing.assert_close(free.inverse(u, ones * 0.99, tokens), x, rtol=0, atol=1e-10)


def test_mix_couples_the_values_inside_a_patch():
    """One affine block alone is diagonal within each patch; with the mix in front every value of a patch moves every other."""
    for mix in (False, True):
        config = TransporterConfig(**(CONFIG.to_dict() | {"spline_bins": 0, "blocks": 1, "mix": mix}))
        model = _model(config)
        x, t, tokens = _inputs(1, config)

        def patches(p: torch.Tensor) -> torch.Tensor:
            return model.patchify(model(model.unpatchify(p), t, tokens)[0]).reshape(-1)

        jac = jacobian(patches, model.patchify(x), vectorize=True).reshape(48, 48)
        first = jac[:12, :12]
        off_diagonal = first[~torch.eye(12, dtype=torch.bool)].abs()
        assert (off_diagonal.min() > 1e-6) if mix else (off_diagonal.max() == 0), mix
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0 and abs(logabs - model(x, t, tokens)[1][0]).item() < 1e-9


def test_conditioning_on_text_and_time_changes_u():
    model = _model()
    x, t, tokens = _inputs(3)
    with torch.no_grad():
        u = model(x, t, tokens)[0]
        other = tokens.clone()
        other[:, 0] = (other[:, 0] % 6) + 1
        assert (model(x, t, other)[0] - u).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        assert (model(x, t * 0.5, tokens)[0] - u).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        # padding is ignored: more pad tokens at the end change nothing
        padded = torch.cat([tokens, torch.zeros_like(tokens)], dim=1)
        torch.testing.assert_close(model(x, t, padded)[0], u, rtol=0, atol=1e-14)
    with pytest.raises(ValueError):
        model(x, t)


def test_forward_and_inverse_do_not_depend_on_batch_size():
    model = _model()
    x, t, tokens = _inputs(5)
    with torch.no_grad():
        u, logdet = model(x, t, tokens)
        back = model.inverse(u, t, tokens)
        for i in range(5):
            s = slice(i, i + 1)
            # batched and single triangular solves (the mix) round differently at the 1e-12 level
            u_i, logdet_i = model(x[s], t[s], tokens[s])
            torch.testing.assert_close(u_i, u[s], rtol=0, atol=1e-10)
            torch.testing.assert_close(logdet_i, logdet[s], rtol=0, atol=1e-10)
            back_i = model.inverse(u[s], t[s], tokens[s])
            torch.testing.assert_close(back_i, back[s], rtol=0, atol=1e-10)


def test_unconditional_float32_and_config_round_trip():
    config = TransporterConfig(resolution=8, channels=1, patch=4, width=8, heads=2)
    assert TransporterConfig.from_dict(config.to_dict()) == config
    torch.manual_seed(0)
    model = Transporter(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        x = torch.randn(2, 1, 8, 8)
        u, logdet = model(x, torch.tensor(0.3))
        assert u.dtype == logdet.dtype == torch.float32 and logdet.shape == (2,)
        assert (model.inverse(u, torch.tensor(0.3)) - x).abs().max() < 1e-4
    with pytest.raises(ValueError):
        model(x, torch.tensor(0.3), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        TransporterConfig(resolution=8, channels=1, patch=3)
    with pytest.raises(ValueError, match="spline_bins"):
        TransporterConfig(resolution=8, channels=1, patch=4, spline_bins=1)


def test_spline_bends_single_pixels_where_affine_blocks_cannot():
    """Without the spline, f_T is affine in any one pixel (the others held fixed); with it, it is not."""
    for bins, bent in ((0, False), (4, True)):
        model = _model(TransporterConfig(**(CONFIG.to_dict() | {"spline_bins": bins})))
        x, t, tokens = _inputs(1)
        values = torch.linspace(-2, 2, 9, dtype=torch.float64)
        outputs = []
        for v in values:
            probe = x.clone()
            probe[0, 1, 2, 3] = v
            with torch.no_grad():
                outputs.append(model(probe, t, tokens)[0][0, 1, 2, 3])
        second_difference = torch.stack(outputs).diff(n=2).abs().max()
        assert (second_difference > 1e-6) == bent, (bins, second_difference)
