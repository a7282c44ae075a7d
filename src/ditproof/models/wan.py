"""Building Wan2.2 pipelines: the exact A14B shape with random weights, and a tiny random one.

Both are real diffusers ``WanPipeline`` objects (``WanTransformer3DModel`` ×2,
``AutoencoderKLWan``, ``UMT5EncoderModel``, ``UniPCMultistepScheduler``), so they run through
the same generation code as the real model.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from torch import nn
from transformers import UMT5Config, UMT5EncoderModel

from ditproof.hashing import sha256_json
from ditproof.models.vocab import build_tokenizer
from ditproof.models.weight_fill import WEIGHT_INIT, cast_keeping_fp32, fill_seeded

BOUNDARY_RATIO = 0.875

# UniPC flow-matching solver as configured in the Wan2.2 diffusers release; the per-request
# flow_shift replaces flow_shift at run time.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 12.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
}

A14B_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

# google/umt5-xxl encoder shape (the text encoder of Wan2.2).
UMT5_XXL: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
}

# The Wan2.1 VAE (used by Wan2.2-T2V-A14B) is AutoencoderKLWan's default configuration.
A14B_VAE: dict[str, Any] = {}

TINY_TRANSFORMER: dict[str, Any] = {
    **A14B_TRANSFORMER,
    "num_attention_heads": 2,
    "attention_head_dim": 24,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 96,
    "num_layers": 2,
}
TINY_UMT5: dict[str, Any] = {
    **UMT5_XXL,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
}
TINY_VAE: dict[str, Any] = {"base_dim": 8, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1}


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def make_scheduler() -> UniPCMultistepScheduler:
    """The UniPC flow-matching scheduler of Wan2.2 (see :data:`SCHEDULER_CONFIG`)."""
    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)


def _eval(*modules: nn.Module) -> None:
    # Components built from a config start in training mode (UMT5's dropout made runs differ).
    for module in modules:
        module.eval().requires_grad_(False)


def build_tiny_random(seed: int = 0) -> WanPipeline:
    """A tiny two-expert Wan2.2 pipeline with seeded random weights, built on the CPU in float32."""
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(**{**TINY_UMT5, "vocab_size": len(tokenizer)}))
    vae = AutoencoderKLWan(**TINY_VAE)
    transformer = WanTransformer3DModel(**TINY_TRANSFORMER)
    transformer_2 = WanTransformer3DModel(**TINY_TRANSFORMER)
    for name, module in (
        ("text_encoder", text_encoder),
        ("vae", vae),
        ("transformer", transformer),
        ("transformer_2", transformer_2),
    ):
        fill_seeded(module, seed ^ hash_name(name))
    _eval(text_encoder, vae, transformer, transformer_2)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=make_scheduler(),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=BOUNDARY_RATIO,
    )


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def tiny_description(seed: int = 0) -> dict[str, Any]:
    """What fixes the tiny preset besides its weights: configs, tokenizer vocabulary, boundary."""
    return {
        "preset": "wan-tiny-random",
        "init": WEIGHT_INIT,
        "seed": seed,
        "transformer": _plain(TINY_TRANSFORMER),
        "text_encoder": TINY_UMT5,
        "vae": TINY_VAE,
        "scheduler": SCHEDULER_CONFIG,
        "vocab": sorted(build_tokenizer().get_vocab().items(), key=lambda kv: kv[1]),
        "boundary_ratio": BOUNDARY_RATIO,
    }


def hash_name(name: str) -> int:
    """A stable 31-bit number for a component name (mixes it into the preset seed)."""
    return int(sha256_json(name)[:8], 16) & 0x7FFFFFFF


def _materialize(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Allocates a meta-device module on ``device`` in ``dtype`` (see :func:`cast_keeping_fp32`)."""
    cast_keeping_fp32(module, dtype)
    buffers = {name for name, _ in module.named_buffers()}
    module.to_empty(device=device)
    for name, sub in module.named_modules():
        if isinstance(sub, WanRotaryPosEmbed):
            reference = WanRotaryPosEmbed(sub.attention_head_dim, sub.patch_size, sub.max_seq_len)
            sub.freqs_cos.copy_(reference.freqs_cos)
            sub.freqs_sin.copy_(reference.freqs_sin)
            buffers -= {f"{name}.freqs_cos", f"{name}.freqs_sin"}
    if buffers:
        raise RuntimeError(f"buffers left uninitialized after building on {device}: {sorted(buffers)}")


def build_a14b_shape(device: str, dtype: str = "bfloat16", seed: int = 0) -> tuple[WanPipeline, dict[str, Any]]:
    """Wan2.2-T2V-A14B in its exact shapes with seeded random weights, built directly on ``device``.

    Two 14B experts, the UMT5-XXL encoder shape and the real-size Wan2.1 VAE; the transformers'
    ``_keep_in_fp32_modules`` stay in float32 as when diffusers loads the real weights in bf16.

    Returns:
        The pipeline and the description its revision is hashed from, with its weights
        (:func:`ditproof.models.registry.state_revision`).
    """
    target = torch.device(device)
    torch_dtype = _dtype(dtype)
    tokenizer = build_tokenizer()
    with torch.device("meta"):
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        transformer = WanTransformer3DModel(**A14B_TRANSFORMER)
        transformer_2 = WanTransformer3DModel(**A14B_TRANSFORMER)
    for module in (text_encoder, transformer, transformer_2):
        _materialize(module, target, torch_dtype)
    vae = AutoencoderKLWan(**A14B_VAE).to(target)
    for name, module in (
        ("text_encoder", text_encoder),
        ("vae", vae),
        ("transformer", transformer),
        ("transformer_2", transformer_2),
    ):
        fill_seeded(module, seed ^ hash_name(name))
    _eval(text_encoder, vae, transformer, transformer_2)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=make_scheduler(),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=BOUNDARY_RATIO,
    )
    description = {
        "preset": "wan-a14b-shape",
        "init": WEIGHT_INIT,
        "seed": seed,
        "dtype": dtype,
        "transformer": _plain(A14B_TRANSFORMER),
        "text_encoder": UMT5_XXL,
        "vae": A14B_VAE,
        "scheduler": SCHEDULER_CONFIG,
    }
    return pipe, description
