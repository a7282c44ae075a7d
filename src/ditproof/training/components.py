"""The shipped model's components: sizes, tokenizer, seeded construction and saving.

The structure is Wan2.2-T2V-A14B's at a small size: a word-level tokenizer holding exactly the
caption grammar's words, a UMT5 encoder, an ``AutoencoderKLWan`` (stride 4×8×8, 16 latent
channels), two ``WanTransformer3DModel`` experts of one shape (patch 1×2×2, qk RMS-norm across
heads, cross-attention norm) switched at ``boundary_ratio`` 0.875, and the UniPC flow solver.

Weights start from :func:`ditproof.models.weight_fill.fill_seeded` (each parameter drawn from its own
seeded CPU generator), never from torch's global RNG.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from torch import nn
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ditproof.errors import InvalidInputError
from ditproof.models.wan import A14B_TRANSFORMER, BOUNDARY_RATIO, UMT5_XXL, hash_name, make_scheduler
from ditproof.models.weight_fill import fill_seeded
from ditproof.training.grammar import grammar_words

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
TEXT_MAX_LENGTH = 512
"""Text length of training and inference: UMT5's 512 as in Wan2.2, so that loading the folder as
a plain path (ditproof's default of 512 tokens) and as the preset give the same numbers."""


@dataclass(frozen=True)
class ModelSize:
    """Component configurations and the training video size of one model size."""

    name: str
    text_encoder: dict[str, Any]
    transformer: dict[str, Any]
    vae: dict[str, Any]
    width: int
    height: int
    num_frames: int
    text_max_length: int = TEXT_MAX_LENGTH
    extra: dict[str, Any] = field(default_factory=dict)


SHIPPED = ModelSize(
    name="shipped",
    text_encoder={
        "d_model": 128,
        "d_kv": 32,
        "d_ff": 256,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 16,
        "relative_attention_max_distance": 32,
    },
    transformer={"num_attention_heads": 4, "attention_head_dim": 64, "ffn_dim": 768, "num_layers": 4, "freq_dim": 256},
    vae={"base_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1},
    width=128,
    height=128,
    num_frames=17,
)
SMOKE = ModelSize(
    name="smoke",
    text_encoder={
        "d_model": 16,
        "d_kv": 8,
        "d_ff": 32,
        "num_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
    },
    transformer={"num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 32, "num_layers": 1, "freq_dim": 16},
    vae={"base_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1},
    width=32,
    height=32,
    num_frames=5,
)
SIZES = {size.name: size for size in (SHIPPED, SMOKE)}


def model_size(name: str) -> ModelSize:
    """The :class:`ModelSize` called ``name``."""
    if name not in SIZES:
        raise InvalidInputError(f"size: got {name!r}; allowed: {', '.join(SIZES)}")
    return SIZES[name]


def build_grammar_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer of the grammar's words that appends ``</s>`` like T5's."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *(words if words is not None else grammar_words())):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def text_encoder_config(size: ModelSize, vocab_size: int) -> dict[str, Any]:
    """The UMT5 configuration: UMT5-XXL's structure at ``size``'s widths."""
    return {**UMT5_XXL, **size.text_encoder, "vocab_size": vocab_size}


def transformer_config(size: ModelSize) -> dict[str, Any]:
    """The expert configuration: A14B's structure at ``size``'s widths, reading the encoder's width."""
    return {**A14B_TRANSFORMER, **size.transformer, "text_dim": size.text_encoder["d_model"]}


def build_text_encoder(size: ModelSize, vocab_size: int, seed: int) -> UMT5EncoderModel:
    """A seeded UMT5 encoder of ``size``."""
    model = UMT5EncoderModel(UMT5Config(**text_encoder_config(size, vocab_size)))
    fill_seeded(model, seed ^ hash_name("text_encoder"))
    return model


def build_vae(size: ModelSize, seed: int) -> AutoencoderKLWan:
    """A seeded ``AutoencoderKLWan`` of ``size`` (stride 4×8×8, 16 latent channels)."""
    vae = AutoencoderKLWan(**size.vae)
    fill_seeded(vae, seed ^ hash_name("vae"))
    return vae


def build_expert(size: ModelSize, seed: int, name: str) -> WanTransformer3DModel:
    """A seeded expert of ``size``; ``name`` ("transformer" or "transformer_2") picks its seed."""
    expert = WanTransformer3DModel(**transformer_config(size))
    fill_seeded(expert, seed ^ hash_name(name))
    return expert


def make_pipeline(
    tokenizer: PreTrainedTokenizerFast,
    text_encoder: UMT5EncoderModel,
    vae: AutoencoderKLWan,
    high: WanTransformer3DModel,
    low: WanTransformer3DModel,
) -> WanPipeline:
    """The two-expert pipeline: ``high`` runs for t ≥ boundary (``transformer``), ``low`` after."""
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=make_scheduler(),
        transformer=high,
        transformer_2=low,
        boundary_ratio=BOUNDARY_RATIO,
    )


def save_pipeline(pipe: WanPipeline, folder: Path, storage_dtype: torch.dtype = torch.float16) -> None:
    """Writes ``pipe`` as a diffusers folder with weights stored in ``storage_dtype``.

    The folder is written next to its destination and renamed into place, so a reader never sees
    a half-written model. The pipeline itself is left in its dtype (copies are cast).
    """
    import copy

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        casted = {}
        for component in ("text_encoder", "vae", "transformer", "transformer_2"):
            module: nn.Module = copy.deepcopy(getattr(pipe, component)).cpu()
            with torch.no_grad():
                for param in module.parameters():
                    param.data = param.data.to(storage_dtype)
            casted[component] = module
        copy_pipe = WanPipeline(
            tokenizer=pipe.tokenizer,
            scheduler=pipe.scheduler,
            boundary_ratio=pipe.config.boundary_ratio,
            **casted,
        )
        copy_pipe.save_pretrained(staged, safe_serialization=True)
        staged.chmod(0o755)  # mkdtemp makes it private; the model is package data anyone may read
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)
    finally:
        if staged.exists():
            shutil.rmtree(staged)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
