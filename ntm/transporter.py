"""The NTM transporter f_T(x, t, c): a time-aware, text-conditioned invertible map x -> u.

Shallow TarFlow-style blocks (Zhai et al., 2024): each reads the image as a sequence of patches,
and a causal transformer over patches < i gives the affine parameters of patch i, so
z_i = (x_i - m_i) exp(-a_i) has a triangular Jacobian with log|det| = -sum_i a_i. Blocks
alternate their scan direction, so the composition is not triangular in any fixed order.
Zero-initialised output layers make f_T the identity before training. No gate ties it to t: the
density of x_1 never passes through f_T (u_1 = x_1 is only a condition), and the first steps, where
the posterior coefficient A is 0 and a step is an unconditional draw, need it most. (Checkpoints
written before `time_gate` existed read as `time_gate = True`: every parameter scaled by (1 - t).)

Within a patch the affine block treats the patch's values as independent given the earlier patches.
With `mix = True`, each block starts with an invertible linear map of every patch's values,
W(t, c) = L (diag(e^s) + U) with L unit lower- and U strictly upper-triangular, all set by (t, c)
through a zero-initialised layer (so W = I at initialisation): log|det| = N sum_j s_j. At high noise
the data within a patch are close to a correlated Gaussian, which such a map decorrelates exactly.

With `spline_bins` K > 0, an element-wise monotone rational-quadratic spline (ntm.spline), one per
channel with knots set by (t, c), runs before the affine blocks. An affine block is linear in its
own patch, so it cannot bend one pixel's value: on data whose pixels sit at a few levels (the
shapes world's channels are 0 or 255), the spline is what can close the gaps between levels, so a
predictor unsure which level a pixel takes still fits it with one narrow Gaussian in u-space. Its
parameters come from a zero-initialised layer, like the blocks'.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ntm.backbone import PAD, Mlp
from ntm.spline import rq_spline, spline_knots


@dataclass(frozen=True)
class TransporterConfig:
    """Everything needed to rebuild a transporter; saved beside its weights."""

    resolution: int
    channels: int
    patch: int
    width: int = 64
    blocks: int = 2
    layers: int = 1
    heads: int = 2
    vocab_size: int = 0
    max_log_scale: float = 3.0
    spline_bins: int = 0
    spline_bound: float = 3.0
    mix: bool = False
    time_gate: bool = False

    def __post_init__(self) -> None:
        if self.resolution % self.patch:
            raise ValueError(f"resolution {self.resolution} is not divisible by patch {self.patch}")
        if self.width % self.heads or self.width % 2:
            raise ValueError(f"width {self.width} must be even and divisible by heads {self.heads}")
        if min(self.channels, self.blocks, self.layers) < 1:
            raise ValueError("channels, blocks and layers must all be >= 1")
        if self.vocab_size < 0 or not self.max_log_scale > 0:
            raise ValueError("vocab_size must be >= 0 and max_log_scale > 0")
        if self.spline_bins < 0 or self.spline_bins == 1 or not self.spline_bound > 0:
            raise ValueError(
                f"spline_bins must be 0 (no spline) or >= 2 and spline_bound > 0, got {self.spline_bins}, {self.spline_bound}"
            )

    @property
    def grid(self) -> int:
        return self.resolution // self.patch

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch**2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransporterConfig:
        # configs saved before `time_gate` existed were gated by (1 - t)
        return cls(**({"time_gate": True} | d))


def time_features(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as in DDPM/DiT), in t's own dtype."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half
    )
    args = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _CausalLayer(nn.Module):
    """Pre-norm transformer layer with causal self-attention and an optional KV cache."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, 4.0)

    def forward(
        self, h: Tensor, cache: tuple[Tensor, Tensor] | None = None, pos: int = 0
    ) -> Tensor:
        """Causal pass over all of h, or (with `cache`) one step: h is position `pos` alone."""
        b, n, w = h.shape
        qkv = self.qkv(self.norm1(h)).view(b, n, 3, self.heads, w // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if cache is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys, values = cache
            keys[:, :, pos : pos + n] = k
            values[:, :, pos : pos + n] = v
            # one query at the newest position may see the whole cached prefix: no mask needed
            att = F.scaled_dot_product_attention(q, keys[:, :, : pos + n], values[:, :, : pos + n])
        h = h + self.proj(att.transpose(1, 2).reshape(b, n, w))
        return h + self.mlp(self.norm2(h))


class _FlowBlock(nn.Module):
    """One autoregressive affine block: z_i = (x_i - m_i(x_<i)) exp(-a_i(x_<i)) over patches."""

    def __init__(self, config: TransporterConfig, reverse: bool) -> None:
        super().__init__()
        w, d, n = config.width, config.patch_dim, config.grid**2
        self.reverse = reverse
        self.max_log_scale = config.max_log_scale
        self.start = nn.Parameter(torch.randn(w) * 0.02)
        self.pos = nn.Parameter(torch.randn(n, w) * 0.02)
        self.embed = nn.Linear(d, w)
        self.cond = nn.Linear(w, w)
        self.layers = nn.ModuleList(_CausalLayer(w, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, 2 * d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _affine(self, h: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
        """Shift m and soft-clamped log-scale a = M tanh(a / M), both times the gate."""
        m, a = self.out(self.norm(h)).chunk(2, dim=-1)
        a = self.max_log_scale * torch.tanh(a / self.max_log_scale)
        return gate * m, gate * a

    def forward(self, x: Tensor, cond: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
        """z and log|det dz/dx| = -sum_i a_i for patches x (B, N, D), in one parallel pass."""
        if self.reverse:
            x = x.flip(1)
        b = x.shape[0]
        h = torch.cat([self.start.expand(b, 1, -1), self.embed(x[:, :-1])], dim=1)
        h = h + self.pos + self.cond(cond)[:, None]
        for layer in self.layers:
            h = layer(h)
        m, a = self._affine(h, gate)
        z = (x - m) * torch.exp(-a)
        logdet = -a.sum(dim=(1, 2))
        return (z.flip(1) if self.reverse else z), logdet

    def inverse(self, z: Tensor, cond: Tensor, gate: Tensor) -> Tensor:
        """x_i = z_i exp(a_i) + m_i, patch by patch, reusing the prefix's cached keys and values."""
        if self.reverse:
            z = z.flip(1)
        b, n, _ = z.shape
        c = self.cond(cond)[:, None]
        w = self.start.shape[0]
        heads = self.layers[0].heads
        caches = [
            (z.new_empty(b, heads, n, w // heads), z.new_empty(b, heads, n, w // heads))
            for _ in self.layers
        ]
        patches: list[Tensor] = []
        for i in range(n):
            token = self.start.expand(b, 1, -1) if i == 0 else self.embed(patches[-1])
            h = token + self.pos[i] + c
            for layer, cache in zip(self.layers, caches):
                h = layer(h, cache, i)
            m, a = self._affine(h, gate)
            patches.append(z[:, i : i + 1] * torch.exp(a) + m)
        x = torch.cat(patches, dim=1)
        return x.flip(1) if self.reverse else x


class _MixBlock(nn.Module):
    """z_i = W(t, c) x_i for every patch i, W = L (diag(e^s) + U): an invertible (t, c)-set linear map within patches."""

    def __init__(self, config: TransporterConfig) -> None:
        super().__init__()
        d = config.patch_dim
        self.max_log_scale = config.max_log_scale
        self.out = nn.Linear(config.width, d * d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("strict_lower", torch.ones(d, d).tril(-1), persistent=False)

    def _factors(self, cond: Tensor, gate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unit lower L, upper R = diag(e^s) + U (B, D, D), and s (B, D)."""
        d = self.strict_lower.shape[0]
        raw = (gate.reshape(-1, 1) * self.out(cond)).view(-1, d, d)
        log_scale = self.max_log_scale * torch.tanh(raw.diagonal(dim1=1, dim2=2) / self.max_log_scale)
        eye = torch.eye(d, dtype=raw.dtype, device=raw.device)
        lower = eye + raw * self.strict_lower
        upper = torch.diag_embed(log_scale.exp()) + raw * self.strict_lower.T
        return lower, upper, log_scale

    def forward(self, x: Tensor, cond: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, N, D) and log|det dz/dx| = N sum_j s_j, for patches x (B, N, D)."""
        lower, upper, log_scale = self._factors(cond, gate)
        z = x @ (lower @ upper).transpose(1, 2)
        return z, x.shape[1] * log_scale.sum(1)

    def inverse(self, z: Tensor, cond: Tensor, gate: Tensor) -> Tensor:
        lower, upper, _ = self._factors(cond, gate)
        # z^T = L R x^T: two triangular solves
        y = torch.linalg.solve_triangular(lower, z.transpose(1, 2), upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, y, upper=True).transpose(1, 2)


class _SplineBlock(nn.Module):
    """y = spline_c(x) element-wise, one rational-quadratic spline per channel, knots from (t, c)."""

    def __init__(self, config: TransporterConfig) -> None:
        super().__init__()
        self.bins, self.bound, self.max_log_slope = config.spline_bins, config.spline_bound, config.max_log_scale
        self.out = nn.Linear(config.width, config.channels * (3 * self.bins - 1))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _knots(self, cond: Tensor, gate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        params = (gate.reshape(-1, 1) * self.out(cond)).unflatten(1, (-1, 3 * self.bins - 1))
        widths, heights, slopes = params.split([self.bins, self.bins, self.bins - 1], dim=-1)
        return spline_knots(widths, heights, slopes, self.bound, self.max_log_slope)

    def forward(self, x: Tensor, cond: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, C, H, W) and log|det dy/dx| (B,): the sum of the element-wise log-slopes."""
        y, log_slope = rq_spline(x.flatten(2), *self._knots(cond, gate), self.bound)
        return y.view_as(x), log_slope.sum(dim=(1, 2))

    def inverse(self, y: Tensor, cond: Tensor, gate: Tensor) -> Tensor:
        return rq_spline(y.flatten(2), *self._knots(cond, gate), self.bound, inverse=True)[0].view_as(y)


class Transporter(nn.Module):
    """f_T(x, t, c) -> (u, log|det du/dx|): an optional per-channel spline, then blocks of alternating direction,
    each an optional within-patch linear mix followed by a causal affine map over patches."""

    def __init__(self, config: TransporterConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.text = nn.Embedding(config.vocab_size, w) if config.vocab_size else None
        self.blocks = nn.ModuleList(
            _FlowBlock(config, reverse=k % 2 == 1) for k in range(config.blocks)
        )
        self.spline = _SplineBlock(config) if config.spline_bins else None
        self.mixes = nn.ModuleList(_MixBlock(config) for _ in range(config.blocks)) if config.mix else None

    def _condition(self, x: Tensor, t: Tensor, tokens: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-sample conditioning vector (time MLP + mean-pooled text) and the gate: (1 - t) with `time_gate`, else 1."""
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
        cond = self.time(time_features(t, self.config.width))
        if self.text is not None:
            if tokens is None:
                raise ValueError("this transporter is text-conditioned: pass tokens (B, L)")
            keep = (tokens != PAD).to(x.dtype)[..., None]
            cond = cond + (self.text(tokens) * keep).sum(1) / keep.sum(1).clamp_min(1)
        elif tokens is not None:
            raise ValueError("this transporter has vocab_size 0 and takes no tokens")
        gate = (1 - t) if self.config.time_gate else torch.ones_like(t)
        return F.silu(cond), gate[:, None, None]

    def patchify(self, x: Tensor) -> Tensor:
        b, ch, _, _ = x.shape
        p, g = self.config.patch, self.config.grid
        return x.reshape(b, ch, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, ch * p * p)

    def unpatchify(self, h: Tensor) -> Tensor:
        b = h.shape[0]
        p, g, ch = self.config.patch, self.config.grid, self.config.channels
        return h.reshape(b, g, g, ch, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """u = f_T(x, t, c) and log|det du/dx| (B,), the |det J| of p(x_s | x_t, c) (DESIGN)."""
        cond, gate = self._condition(x, t, tokens)
        logdet = x.new_zeros(x.shape[0])
        if self.spline is not None:
            x, logdet = self.spline(x, cond, gate)
        h = self.patchify(x)
        for k, block in enumerate(self.blocks):
            if self.mixes is not None:
                h, mix_logdet = self.mixes[k](h, cond, gate)
                logdet = logdet + mix_logdet
            h, block_logdet = block(h, cond, gate)
            logdet = logdet + block_logdet
        return self.unpatchify(h), logdet

    def inverse(self, u: Tensor, t: Tensor, tokens: Tensor | None = None) -> Tensor:
        """x = f_T^{-1}(u, t, c): blocks in reverse order, each autoregressive over patches."""
        cond, gate = self._condition(u, t, tokens)
        h = self.patchify(u)
        for k in reversed(range(len(self.blocks))):
            h = self.blocks[k].inverse(h, cond, gate)
            if self.mixes is not None:
                h = self.mixes[k].inverse(h, cond, gate)
        x = self.unpatchify(h)
        return x if self.spline is None else self.spline.inverse(x, cond, gate)
