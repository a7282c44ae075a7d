"""Elementwise steps of the Wan experts fused into the kernels beside them (``fuse_elementwise``).

Three fusions, all inside every transformer block (at A14B size, 480p, each step was a
separate pass over hundreds of megabytes after regional compilation):

- The feed-forward's up-projection and its tanh-GELU in one matrix product: cuBLASLt applies
  the GELU in the product's epilogue (``torch._addmm_activation``), so the 32,760 × 13,824
  activation is written once instead of written, read and written again.
- The self-attention's query and key RMS norm (across all heads) and the rotary embedding in one
  Triton kernel per tensor: one read of the projection, one write of the rotated result. Under
  regional compilation Inductor generated a two-pass reduction for these that ran at about a
  third of the memory bandwidth.
- The block's layer norms before the self-attention and before the feed-forward, each with its
  modulation (``* (1 + scale) + shift``) and the second with the cross-attention's residual add,
  in one Triton kernel per step. Inductor's kernels for these (its deterministic mode picks their
  launch configuration without timing) ran at 1.6 and 2.3 TB/s.

All are ``torch.library`` custom operators, so ``torch.compile(fullgraph=True)`` keeps them as
opaque nodes. They compute in float32 and round once, where the unfused modules round between
steps: the low bits change, so the option is part of the runtime fingerprint and class (with
:data:`STEPS`, the list of fused steps). On a CPU the operators run the same arithmetic with
PyTorch operations (no speed gain; the option stays valid there for tests and for validators of
a CPU class).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

from ditproof.errors import RuntimeUnavailableError

STEPS = "gelu-epilogue,norm-rope,norm-modulate"
"""The steps ``fuse_elementwise`` fuses, as the runtime fingerprint records them: a release that
fuses other steps computes other low bits, so it must be another runtime class."""

ROTARY_PAIR = 2
"""Wan's rotary embedding rotates adjacent channel pairs (x[2i], x[2i+1]) of each head."""


@torch.library.custom_op("ditproof::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x @ weight.T + bias, approximate="tanh")`` as one matrix product with a GELU epilogue.

    On CUDA, cuBLASLt's GELU epilogue (the tanh approximation, as the model's); elsewhere two
    steps (PyTorch's CPU ``_addmm_activation`` applies the exact GELU, not the model's).
    """
    if x.device.type != "cuda":
        return torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias), approximate="tanh")
    rows = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(bias, rows, weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _linear_gelu_tanh_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def rms_norm_rope_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> torch.Tensor:
    """The fused kernel's arithmetic with PyTorch operations (CPU path, and the tests' reference).

    ``x``: (batch, tokens, heads × head_dim); ``cos``/``sin``: (1, tokens, 1, head_dim) float32,
    each value repeated for the two channels of a pair (diffusers' Wan rotary tables).
    """
    values = x.float()
    normed = values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    pairs = normed.to(x.dtype).float().unflatten(-1, (heads, -1, ROTARY_PAIR))
    even, odd = pairs.unbind(-1)
    cos_pair = cos[..., 0::ROTARY_PAIR].float()
    sin_pair = sin[..., 1::ROTARY_PAIR].float()
    rotated = torch.stack((even * cos_pair - odd * sin_pair, even * sin_pair + odd * cos_pair), dim=-1)
    return rotated.flatten(2).to(x.dtype)


@torch.library.custom_op("ditproof::rms_norm_rope", mutates_args=())
def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> torch.Tensor:
    """RMS norm of each token's ``x`` across all heads, scaled by ``weight``, then rotated by RoPE.

    Returns a contiguous (batch, tokens, heads × head_dim) tensor of ``x``'s dtype. ``x`` may be
    a strided view (the query or key slice of a fused QKV projection) if its last dimension is
    contiguous.
    """
    if x.device.type == "cuda":
        return launch_rms_norm_rope(x, weight, eps, cos, sin, heads)
    return rms_norm_rope_reference(x, weight, eps, cos, sin, heads)


@rms_norm_rope.register_fake
def _rms_norm_rope_shape(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


WARPS = 4
"""Warps per token of both Triton kernels (fixed: the sums' order depends on it). At A14B width,
480p, on an H100: norm + RoPE 0.366 ms with 4, 0.395 with 8, 0.439 with 16; first norm 0.335 /
0.354 / 0.392; residual + third norm 0.578 / 0.568 / 0.618 (``bench/fused_check.py``).
``warps=`` of the launchers overrides it for benches."""


def launch_rms_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    warps: int | None = None,
) -> torch.Tensor:
    """Runs the Triton kernel (on CPU tensors too, under ``TRITON_INTERPRET=1``: the tests)."""
    import triton

    batch, tokens, dim = x.shape
    head_dim = dim // heads
    if x.stride(2) != 1:
        x = x.contiguous()
    cos = cos.reshape(-1, head_dim).contiguous()
    sin = sin.reshape(-1, head_dim).contiguous()
    if cos.shape[0] != tokens:
        raise ValueError(f"rms_norm_rope: rotary tables cover {cos.shape[0]} tokens; x has {tokens}")
    out = torch.empty((batch, tokens, dim), dtype=x.dtype, device=x.device)
    half = triton.next_power_of_2(dim // ROTARY_PAIR)
    _kernel()[(batch * tokens,)](
        x,
        weight,
        cos,
        sin,
        out,
        tokens,
        x.stride(0),
        x.stride(1),
        float(eps),
        DIM=dim,
        HEAD_DIM=head_dim,
        BLOCK=half,
        num_warps=warps or WARPS,
    )
    return out


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, defined on first use (Triton is imported only where it runs)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_rope_kernel(
        x_ptr,
        w_ptr,
        cos_ptr,
        sin_ptr,
        out_ptr,
        tokens,
        batch_stride,
        token_stride,
        eps,
        DIM: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # One program per token: its DIM channels read and written contiguously, split into
        # (even, odd) pairs on chip (the rotation mixes each pair).
        row = tl.program_id(0)
        token = row % tokens
        cols = tl.arange(0, 2 * BLOCK)
        mask = cols < DIM
        src = x_ptr + (row // tokens).to(tl.int64) * batch_stride + token.to(tl.int64) * token_stride
        values = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
        weight = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(values * values, axis=0) / DIM + eps)
        # The norm's output is rounded to the input's dtype, as the norm module's would be.
        normed = (values * rstd * weight).to(out_ptr.dtype.element_ty).to(tl.float32)
        even, odd = tl.split(tl.reshape(normed, (BLOCK, 2)))
        pair = tl.arange(0, BLOCK)
        table = token.to(tl.int64) * HEAD_DIM + 2 * (pair % (HEAD_DIM // 2))
        cos = tl.load(cos_ptr + table, mask=pair < DIM // 2, other=0.0)
        sin = tl.load(sin_ptr + table + 1, mask=pair < DIM // 2, other=0.0)
        rotated = tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), (2 * BLOCK,))
        tl.store(out_ptr + row.to(tl.int64) * DIM + cols, rotated.to(out_ptr.dtype.element_ty), mask=mask)

    return rms_norm_rope_kernel


def layer_norm_modulate_reference(
    x: torch.Tensor, residual: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Wan block's steps that the fused kernel runs, with PyTorch operations (CPU path, tests).

    ``summed = x + residual`` in ``x``'s dtype (or ``x``), then ``layer_norm(summed.float()) *
    (1 + scale) + shift`` rounded to ``x``'s dtype; ``scale``/``shift``: float32 (batch, 1, dim).
    Returns ``(normed, summed)``.
    """
    summed = x if residual is None else x + residual
    normed = torch.nn.functional.layer_norm(summed.float(), (summed.shape[-1],), eps=eps) * (1 + scale) + shift
    return normed.to(x.dtype), summed


@torch.library.custom_op("ditproof::layer_norm_modulate", mutates_args=())
def layer_norm_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """``layer_norm(x.float()) * (1 + scale) + shift`` in ``x``'s dtype, in one pass (the blocks'
    first norm and its modulation)."""
    if x.device.type == "cuda":
        return launch_layer_norm_modulate(x, None, scale, shift, eps)[0]
    return layer_norm_modulate_reference(x, None, scale, shift, eps)[0]


@layer_norm_modulate.register_fake
def _layer_norm_modulate_shape(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("ditproof::add_layer_norm_modulate", mutates_args=())
def add_layer_norm_modulate(
    x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``summed = x + residual``, then its layer norm modulated: ``(normed, summed)`` in one pass
    (the cross-attention's residual and the feed-forward's norm)."""
    if x.device.type == "cuda":
        return launch_layer_norm_modulate(x, residual, scale, shift, eps)
    return layer_norm_modulate_reference(x, residual, scale, shift, eps)


@add_layer_norm_modulate.register_fake
def _add_layer_norm_modulate_shape(
    x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device))


def launch_layer_norm_modulate(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
    warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the Triton kernel of both operators (on CPU tensors under ``TRITON_INTERPRET=1``).

    Returns ``(normed, summed)``; without ``residual``, ``summed`` is ``x`` itself.
    """
    import triton

    batch, tokens, dim = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    if residual is not None and (residual.shape != x.shape or residual.stride(2) != 1):
        residual = residual.expand(x.shape).contiguous()
    # The block passes its chunks of (batch, 6, dim) as they are: read through their batch
    # stride (0 where one row serves the whole batch), no copy per call.
    scale, shift = (v.float().expand(batch, 1, dim) for v in (scale, shift))
    scale, shift = (v if v.stride(2) == 1 else v.contiguous() for v in (scale, shift))
    normed = torch.empty((batch, tokens, dim), dtype=x.dtype, device=x.device)
    summed = x if residual is None else torch.empty((batch, tokens, dim), dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(dim)
    _layer_norm_kernel()[(batch * tokens,)](
        x,
        x if residual is None else residual,
        scale,
        shift,
        normed,
        summed,
        tokens,
        x.stride(0),
        x.stride(1),
        0 if residual is None else residual.stride(0),
        0 if residual is None else residual.stride(1),
        scale.stride(0),
        shift.stride(0),
        float(eps),
        DIM=dim,
        BLOCK=block,
        HAS_RESIDUAL=residual is not None,
        num_warps=warps or WARPS,
    )
    return normed, summed


@functools.cache
def _layer_norm_kernel() -> Any:
    """The layer norm + modulation kernel, defined on first use."""
    import triton
    import triton.language as tl

    @triton.jit
    def layer_norm_modulate_kernel(
        x_ptr,
        r_ptr,
        scale_ptr,
        shift_ptr,
        out_ptr,
        sum_ptr,
        tokens,
        x_batch_stride,
        x_token_stride,
        r_batch_stride,
        r_token_stride,
        scale_batch_stride,
        shift_batch_stride,
        eps,
        DIM: tl.constexpr,
        BLOCK: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr,
    ):
        # One program per token: one read of x (and the residual), one write of each output.
        row = tl.program_id(0)
        batch = (row // tokens).to(tl.int64)
        token = (row % tokens).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < DIM
        values = tl.load(x_ptr + batch * x_batch_stride + token * x_token_stride + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            other = tl.load(r_ptr + batch * r_batch_stride + token * r_token_stride + cols, mask=mask, other=0.0)
            # The residual add rounds to the activations' dtype, as the block's own add does.
            values = (values.to(tl.float32) + other.to(tl.float32)).to(sum_ptr.dtype.element_ty)
            tl.store(sum_ptr + row.to(tl.int64) * DIM + cols, values, mask=mask)
        values = values.to(tl.float32)
        mean = tl.sum(values, axis=0) / DIM
        centered = tl.where(mask, values - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / DIM + eps)
        scale = tl.load(scale_ptr + batch * scale_batch_stride + cols, mask=mask, other=0.0)
        shift = tl.load(shift_ptr + batch * shift_batch_stride + cols, mask=mask, other=0.0)
        normed = centered * rstd * (1.0 + scale) + shift
        tl.store(out_ptr + row.to(tl.int64) * DIM + cols, normed.to(out_ptr.dtype.element_ty), mask=mask)

    return layer_norm_modulate_kernel


@functools.cache
def _fused_block_class() -> type:
    """diffusers' Wan transformer block with its first and third norm (and their modulation) fused."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    class FusedWanBlock(WanTransformerBlock):
        """The block's steps as diffusers' forward runs them, with two of its passes fused:
        the self-attention's norm + modulation, and the cross-attention's residual add with the
        feed-forward's norm + modulation (:func:`add_layer_norm_modulate`). Blocks with
        per-token modulation (Wan2.2 TI2V-5B) run diffusers' forward."""

        def forward(
            self,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            temb: torch.Tensor,
            rotary_emb: torch.Tensor,
        ) -> torch.Tensor:
            if temb.ndim != 3:  # (batch, 6, dim); TI2V-5B: (batch, tokens, 6, dim)
                return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
            shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
            normed = layer_norm_modulate(hidden_states, scale, shift, self.norm1.eps)
            attn_output = self.attn1(normed, None, None, rotary_emb)
            hidden_states = (hidden_states.float() + attn_output * gate).type_as(hidden_states)
            normed = self.norm2(hidden_states.float()).type_as(hidden_states)
            attn_output = self.attn2(normed, encoder_hidden_states, None, None)
            normed, hidden_states = add_layer_norm_modulate(
                hidden_states, attn_output, c_scale, c_shift, self.norm3.eps
            )
            ff_output = self.ffn(normed)
            return (hidden_states.float() + ff_output.float() * c_gate).type_as(hidden_states)

    return FusedWanBlock


@functools.cache
def _fused_attention_processor() -> type:
    """diffusers' Wan attention processor with the query/key norm and rotary step fused."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class FusedNormRopeProcessor(WanAttnProcessor):
        """Self-attention with RoPE: one kernel each for the query's and the key's norm + rotation.

        Every other call (cross-attention, image keys of I2V models, a mask) is diffusers' own.
        """

        def __call__(
            self,
            attn: torch.nn.Module,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        ) -> torch.Tensor:
            if (
                rotary_emb is None
                or encoder_hidden_states is not None
                or attention_mask is not None
                or attn.add_k_proj is not None
            ):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
            if getattr(attn, "fused_projections", False):
                query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            else:
                query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            cos, sin = rotary_emb
            query = rms_norm_rope(query, attn.norm_q.weight, _eps(attn.norm_q, query), cos, sin, attn.heads)
            key = rms_norm_rope(key, attn.norm_k.weight, _eps(attn.norm_k, key), cos, sin, attn.heads)
            out = dispatch_attention_fn(
                query.unflatten(2, (attn.heads, -1)),
                key.unflatten(2, (attn.heads, -1)),
                value.unflatten(2, (attn.heads, -1)),
                attn_mask=None,
                dropout_p=0.0,
                is_causal=False,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
            out = out.flatten(2, 3).type_as(query)
            return attn.to_out[1](attn.to_out[0](out))

    return FusedNormRopeProcessor


def _eps(norm: torch.nn.Module, x: torch.Tensor) -> float:
    """The norm's epsilon; unset, PyTorch's RMSNorm takes the input dtype's machine epsilon."""
    eps = getattr(norm, "eps", None)
    return float(eps) if eps is not None else float(torch.finfo(x.dtype).eps)


@functools.cache
def _fused_gelu_class() -> type:
    from diffusers.models.activations import GELU

    class FusedGELU(GELU):
        """diffusers' ``GELU`` (projection, then tanh-GELU) as one product with a GELU epilogue."""

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return linear_gelu_tanh(hidden_states, self.proj.weight, self.proj.bias)

    return FusedGELU


def bypassed_linears(expert: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules whose weights the fused steps read without calling the
    module (its hooks do not run): the GELU projections."""
    gelu_class = _fused_gelu_class()
    return [f"{name}.proj" for name, module in expert.named_modules() if isinstance(module, gelu_class)]


def unavailable_reason(device: torch.device) -> str | None:
    """Why the fused kernels cannot run on ``device`` (None when they can)."""
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "the norm + RoPE kernel needs Triton on CUDA (the version PyTorch's CUDA wheels depend on)"
    return None


def fuse_elementwise(expert: torch.nn.Module) -> int:
    """Applies the fusions (:data:`STEPS`) to every block of ``expert`` in place (again: no change).

    Weights and state dict stay as they are. Only tanh-GELU projections (with their bias),
    RMS-normed self-attentions with diffusers' processor and Wan blocks with affine-free first
    and third norms are changed; a processor's attention backend and parallel configuration are
    kept.

    Returns:
        How many modules run fused: blocks, GELU projections and self-attentions.

    Raises:
        ValueError: an expert with none of the Wan modules these fusions apply to.
        RuntimeUnavailableError: the kernels cannot run where the expert is (Triton missing).
    """
    from diffusers.models.activations import GELU

    device = next(expert.parameters(), torch.empty(0)).device
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeUnavailableError(f"fuse_elementwise: not available here: {reason}")
    from diffusers.models.normalization import FP32LayerNorm
    from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor, WanTransformerBlock

    processor_class = _fused_attention_processor()
    gelu_class = _fused_gelu_class()
    block_class = _fused_block_class()
    fused = 0
    for module in expert.modules():
        if type(module) is WanTransformerBlock and all(
            isinstance(norm, FP32LayerNorm) and type(norm) is FP32LayerNorm and not norm.elementwise_affine
            for norm in (module.norm1, module.norm3)
        ):
            module.__class__ = block_class
        proj = getattr(module, "proj", None)
        if (
            type(module) is GELU
            and module.approximate == "tanh"
            and isinstance(proj, torch.nn.Linear)
            and proj.bias is not None
        ):
            module.__class__ = gelu_class
        elif isinstance(module, WanAttention) and not module.is_cross_attention:
            norms = (module.norm_q, module.norm_k)
            old = module.processor
            if type(old) is WanAttnProcessor and all(
                isinstance(n, torch.nn.RMSNorm) and n.weight is not None for n in norms
            ):
                new = processor_class()
                new._attention_backend = old._attention_backend
                new._parallel_config = old._parallel_config
                module.processor = new
        fused += isinstance(module, (gelu_class, block_class)) or isinstance(
            getattr(module, "processor", None), processor_class
        )
    if fused == 0:
        raise ValueError("fuse_elementwise: no tanh-GELU projection or RMS-normed Wan self-attention found")
    repeated = tuple(getattr(expert, "_repeated_blocks", ()) or ())
    if repeated and block_class.__name__ not in repeated:
        # diffusers' regional compilation finds the blocks by class name.
        setattr(expert, "_repeated_blocks", (*repeated, block_class.__name__))  # noqa: B010 - an instance attribute
    return fused
