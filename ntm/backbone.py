"""The shared backbone: a text-conditioned DiT over patches (Peebles & Xie, 2023).

Every generator in this project reuses it, so comparison tables compare methods, not networks.
Text conditioning joins the caption's tokens to the image tokens in one attention sequence
(in-context conditioning, as SD3's MMDiT does, without the separate streams); the time inputs and
the pooled caption modulate every block through adaLN-Zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD, BOS, UNK = 0, 1, 2
_SPECIAL = ("<pad>", "<bos>", "<unk>")


class WordTokenizer:
    """Whitespace word tokenizer over a closed vocabulary; id 1 (<bos>) leads every sequence.

    The empty prompt encodes to <bos> alone: it is the null condition for classifier-free guidance.
    """

    def __init__(self, vocabulary: tuple[str, ...], max_len: int) -> None:
        self.vocabulary = vocabulary
        self.max_len = max_len
        self._ids = {w: i + len(_SPECIAL) for i, w in enumerate(vocabulary)}

    def __len__(self) -> int:
        return len(self._ids) + len(_SPECIAL)

    def encode(self, prompts: list[str]) -> Tensor:
        rows = []
        for prompt in prompts:
            words = prompt.lower().split()
            if len(words) + 1 > self.max_len:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words)} words; this model reads at most "
                    f"{self.max_len - 1}. Shorten the prompt or train with a larger max_text_len."
                )
            ids = [BOS] + [self._ids.get(w, UNK) for w in words]
            rows.append(ids + [PAD] * (self.max_len - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to rebuild a backbone; saved beside its weights."""

    resolution: int
    in_channels: int
    out_channels: int
    patch: int
    width: int
    depth: int
    heads: int
    text_depth: int
    vocabulary: tuple[str, ...] = field(default_factory=tuple)
    max_text_len: int = 16
    mlp_ratio: float = 4.0
    n_times: int = 1

    def __post_init__(self) -> None:
        if self.resolution % self.patch:
            raise ValueError(f"resolution {self.resolution} is not divisible by patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    @property
    def vocab_size(self) -> int:
        """Token ids in use: the vocabulary plus <pad>, <bos>, <unk>."""
        return len(self.vocabulary) + len(_SPECIAL)

    def to_dict(self) -> dict:
        return asdict(self) | {"vocabulary": list(self.vocabulary)}

    @classmethod
    def from_dict(cls, d: dict) -> BackboneConfig:
        return cls(**(d | {"vocabulary": tuple(d["vocabulary"])}))


# Named sizes, DiT-style. Parameter counts at 16 px, patch 4, RGB: tiny ~0.9M, small ~14M, base ~86M.
SIZES: dict[str, dict] = {
    "tiny": dict(width=128, depth=4, heads=4, text_depth=1),
    "small": dict(width=384, depth=8, heads=6, text_depth=2),
    "base": dict(width=768, depth=12, heads=12, text_depth=4),
}


def backbone_config(size: str, **kwargs) -> BackboneConfig:
    """The named size `size` with the data-dependent fields (resolution, channels, ...) filled in."""
    if size not in SIZES:
        raise ValueError(f"unknown backbone size {size!r}; available: {', '.join(SIZES)}")
    return BackboneConfig(**(SIZES[size] | kwargs))


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of continuous times t in [0, 1] (scaled by 1000, as in DDPM/DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding of a grid x grid patch layout, (grid^2, dim)."""
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    parts = [f(pos.reshape(-1, 1) * omega) for pos in (yy, xx) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class Mlp(nn.Sequential):
    def __init__(self, width: int, ratio: float) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


class TextEncoder(nn.Module):
    """A small pre-norm transformer over word tokens; returns tokens and the <bos> summary."""

    def __init__(self, vocab_size: int, max_len: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        h = self.norm(self.layers(h, src_key_padding_mask=tokens == PAD))
        return h, h[:, 0]


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP block with adaLN-Zero modulation (DiT, Sec. 3.2)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, mask)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DiT(nn.Module):
    """Text-conditioned DiT: (x, times, tokens) -> (B, out_channels, H, W).

    `times` is (B,) or (B, n_times); each time gets its own embedding MLP, so the NTM predictor can
    read both ends (t, s) of a step with the same network the flow-matching teacher uses.
    The output layer is zero-initialised (adaLN-Zero), so an untrained backbone outputs 0.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.tokenizer = WordTokenizer(c.vocabulary, c.max_text_len)
        self.grid = c.resolution // c.patch
        self.patch_embed = nn.Linear(c.in_channels * c.patch**2, c.width)
        self.register_buffer("pos", sincos_2d(self.grid, c.width), persistent=False)
        self.time_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(256, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
            for _ in range(c.n_times)
        )
        self.text = TextEncoder(c.vocab_size, c.max_text_len, c.width, c.text_depth, c.heads)
        self.text_proj = nn.Linear(c.width, c.width)
        self.blocks = nn.ModuleList(DiTBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(c.width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(c.width, 2 * c.width))
        self.out = nn.Linear(c.width, c.out_channels * c.patch**2)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """Token ids for `prompts` on this network's device; the `cond` every sampler passes through."""
        return self.tokenizer.encode(prompts).to(self.patch_embed.weight.device)

    def patchify(self, x: Tensor) -> Tensor:
        b, ch, _, _ = x.shape
        p, g = self.config.patch, self.grid
        return x.reshape(b, ch, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, ch * p * p)

    def unpatchify(self, h: Tensor) -> Tensor:
        b = h.shape[0]
        p, g, ch = self.config.patch, self.grid, self.config.out_channels
        return h.reshape(b, g, g, ch, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, g * p, g * p)

    def _embed(self, x: Tensor, times: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The blocks' inputs: joined [text; image] tokens, the modulation c and the attention mask."""
        times = times.reshape(x.shape[0], -1).to(x.dtype)
        if times.shape[1] != self.config.n_times:
            raise ValueError(f"expected {self.config.n_times} time input(s), got {times.shape[1]}")
        text, pooled = self.text(tokens)
        c = pooled + sum(
            mlp(timestep_embedding(times[:, i], 256).to(x.dtype)) for i, mlp in enumerate(self.time_mlps)
        )
        img = self.patch_embed(self.patchify(x)) + self.pos
        h = torch.cat([self.text_proj(text), img], dim=1)
        # Padding text tokens are never attended to; <bos> always is, so no row is fully masked.
        keep = torch.cat([tokens != PAD, torch.ones(img.shape[:2], dtype=torch.bool, device=x.device)], 1)
        return h, c, keep[:, None, None, :]

    def features(self, x: Tensor, times: Tensor, tokens: Tensor, blocks: Sequence[int]) -> list[Tensor]:
        """Image-token states (B, grid^2, width) after each block in `blocks` (0-based), in that order.

        The same pass as `forward`, read before the output layer; blocks after the last one asked
        for are not run. A frozen feature network for discriminators (ADD, Sauer et al., 2023, Sec. 3.2).
        """
        if not blocks or min(blocks) < 0 or max(blocks) >= len(self.blocks):
            raise ValueError(f"blocks must be indices in [0, {len(self.blocks)}), got {list(blocks)}")
        h, c, mask = self._embed(x, times, tokens)
        hidden = []
        for block in self.blocks[: max(blocks) + 1]:
            h = block(h, c, mask)
            hidden.append(h[:, tokens.shape[1] :])
        return [hidden[i] for i in blocks]

    def forward(self, x: Tensor, times: Tensor, tokens: Tensor) -> Tensor:
        h, c, mask = self._embed(x, times, tokens)
        for block in self.blocks:
            h = block(h, c, mask)
        shift, scale = self.final_ada(c)[:, None].chunk(2, dim=-1)
        h = self.final_norm(h[:, tokens.shape[1] :]) * (1 + scale) + shift
        return self.unpatchify(self.out(h))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
