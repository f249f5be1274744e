"""Tiny diffusers pipelines with random weights, written to disk the way the real checkpoints are laid out.

Each `save_*` builds one pipeline family from configs alone (no hub access) and calls `save_pretrained`,
so `baselines.pretrained` loads it back through exactly the code path it uses for the real folders.
Tokenizers are built from a letter-level vocabulary written here: CLIP's BPE from a vocab.json and a
merges.txt, T5's unigram from a list of pieces.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from safetensors.torch import save_file

LETTERS = list(string.ascii_lowercase)
TEXT_LENGTH = 16
"""The CLIP tokenizers' model_max_length: every prompt is padded to it, so it is kept short."""


def clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single letters (no merges), from a vocab.json and merges.txt written to `folder`."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in LETTERS + [c + "</w>" for c in LETTERS]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=TEXT_LENGTH
    )


def t5_tokenizer():
    """A T5 unigram tokenizer whose pieces are the letters, with and without the word-start mark."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in LETTERS] + [("\u2581" + c, -2.5) for c in LETTERS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=TEXT_LENGTH)


def clip_text(seed: int, hidden: int = 32, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=2 + 2 * len(LETTERS), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=TEXT_LENGTH, projection_dim=hidden, bos_token_id=0,
        eos_token_id=1, pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5_text(seed: int, hidden: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=4 + 2 * len(LETTERS), d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def vae(seed: int, latent_channels: int = 4, shift_factor: float | None = None):
    """A two-level VAE: latents are half the image's side (vae_scale_factor 2)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
        shift_factor=shift_factor,
    ).eval()


def unet(seed: int, cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=4, **extra,
    ).eval()


def save_lcm(folder: Path) -> Path:
    """An SD-1.5-layout latent-consistency pipeline (the U-Net takes the guidance embedding, as LCM-Dreamshaper's)."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    pipe = LatentConsistencyModelPipeline(
        vae=vae(0), text_encoder=clip_text(1), tokenizer=clip_tokenizer(folder.parent / "clip-vocab"),
        unet=unet(2, 32, time_cond_proj_dim=16), scheduler=LCMScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_sdxl(folder: Path) -> Path:
    """An SDXL-layout pipeline: two CLIP encoders and the text-time additional embedding."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = clip_tokenizer(folder.parent / "clip-vocab")
    pipe = StableDiffusionXLPipeline(
        vae=vae(0), text_encoder=clip_text(1), text_encoder_2=clip_text(2, projection=True), tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet(3, 64, addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=6 * 8 + 32),
        scheduler=EulerDiscreteScheduler(),
    )
    pipe.save_pretrained(folder)
    return folder


def save_sd3(folder: Path) -> Path:
    """An SD3-layout pipeline: two CLIP encoders with projections, a T5 encoder and an MMDiT."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = clip_tokenizer(folder.parent / "clip-vocab")
    torch.manual_seed(4)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64,
        pos_embed_max_size=16, qk_norm="rms_norm",
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae(0, shift_factor=0.1),
        text_encoder=clip_text(1, projection=True), tokenizer=tokenizer,
        text_encoder_2=clip_text(2, projection=True), tokenizer_2=tokenizer,
        text_encoder_3=t5_text(3, 64), tokenizer_3=t5_tokenizer(),
    )
    pipe.save_pretrained(folder)
    return folder


def save_flux(folder: Path) -> Path:
    """A FLUX.1-layout pipeline: CLIP pooled + T5 tokens into a double- and single-stream transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(4)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
    ).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(0, shift_factor=0.1), text_encoder=clip_text(1),
        tokenizer=clip_tokenizer(folder.parent / "clip-vocab"), text_encoder_2=t5_text(3, 32),
        tokenizer_2=t5_tokenizer(), transformer=transformer,
    )
    pipe.save_pretrained(folder)
    return folder


def save_lora(file: Path, unet_folder: Path, rank: int = 2, seed: int = 5) -> Path:
    """A LoRA on every attention projection of the U-Net in `unet_folder`, in diffusers' PEFT key layout."""
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(unet_folder, local_files_only=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-2] in ("attn1", "attn2", "to_out"):
            tensors[f"unet.{name}.lora_A.weight"] = 0.3 * torch.randn(rank, module.in_features, generator=gen)
            tensors[f"unet.{name}.lora_B.weight"] = 0.3 * torch.randn(module.out_features, rank, generator=gen)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, file)
    return file
