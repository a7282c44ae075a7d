"""``fuse_elementwise``: the FFN's GELU in its product, q/k norm + RoPE in one kernel,
the blocks' layer norms with their modulation (and the residual add before one) in one kernel.

On this CPU the operators run their PyTorch arithmetic; the Triton kernel itself runs in Triton's
interpreter (on CPU tensors) where Triton is installed, against the same reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.generation.execute import execute
from ditproof.generation.generate import generate
from ditproof.generation.runtime import runtime_class
from ditproof.kernels.fused import (
    add_layer_norm_modulate,
    fuse_elementwise,
    layer_norm_modulate,
    layer_norm_modulate_reference,
    linear_gelu_tanh,
    rms_norm_rope_reference,
)
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, RuntimeOptions
from ditproof.validation.validate import validate

ENTROPY = "5e" * 32


def _inputs(expert: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, 16, 3, 6, 8, generator=generator)
    text = torch.randn(1, 7, expert.config.text_dim, generator=generator)
    return hidden, torch.tensor([500.0]), text


def _assert_close_to_plain(expert: torch.nn.Module) -> torch.Tensor:
    """Runs ``expert`` and an unfused tiny expert on the same inputs; they must agree closely."""
    plain = load_model("wan-tiny-random", LoadOptions()).pipeline.transformer
    hidden, step, text = _inputs(expert)
    with torch.inference_mode():
        out = expert(hidden, step, text, return_dict=False)[0]
        reference = plain(hidden, step, text, return_dict=False)[0]
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-4)
    return out


def test_fused_expert_keeps_its_weights_and_stays_close_to_the_unfused_one():
    expert = load_model("wan-tiny-random", LoadOptions()).pipeline.transformer
    before = {key: value.clone() for key, value in expert.state_dict().items()}
    changed = fuse_elementwise(expert)
    # Per block: the block itself, the feed-forward's GELU projection, the self-attention's processor.
    assert changed == 3 * expert.config.num_layers
    assert all(type(block).__name__ == "FusedWanBlock" for block in expert.blocks)
    # diffusers' regional compilation finds blocks by class name: the fused class is listed too.
    assert "FusedWanBlock" in expert._repeated_blocks and "FusedWanBlock" not in type(expert)._repeated_blocks
    assert expert.state_dict().keys() == before.keys()
    assert all(expert.state_dict()[key].equal(value) for key, value in before.items())
    fused_out = _assert_close_to_plain(expert)
    assert not fused_out.equal(torch.zeros_like(fused_out))
    with pytest.raises(ValueError, match="no tanh-GELU projection"):
        fuse_elementwise(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_fused_blocks_compile_regionally_in_one_graph_and_match_eager():
    # compile="regional" compiles each block with fullgraph=True: the fused operators must trace.
    options = RuntimeOptions(fuse_elementwise=True, compile="regional")
    expert = load_model("wan-tiny-random", options.load).pipeline.transformer
    assert all(block._compiled_call_impl is not None for block in expert.blocks)
    _assert_close_to_plain(expert)


def test_fused_elementwise_with_fused_projections_reads_the_qkv_slices():
    from ditproof.models.registry import fuse_projections

    expert = load_model("wan-tiny-random", LoadOptions()).pipeline.transformer
    fuse_projections(expert)
    fuse_elementwise(expert)
    assert fuse_elementwise(expert) == 3 * expert.config.num_layers  # again: nothing more to change
    _assert_close_to_plain(expert)


def test_refused_with_tensor_parallelism_before_loading():
    with pytest.raises(InvalidInputError, match="fuse_elementwise: not with tp_degree=2"):
        load_model("wan-tiny-random", LoadOptions(fuse_elementwise=True, tp_degree=2))


def test_refused_on_cuda_without_triton_naming_it(monkeypatch):
    from ditproof.errors import RuntimeUnavailableError
    from ditproof.kernels import fused

    assert fused.unavailable_reason(torch.device("cpu")) is None
    monkeypatch.setattr(fused.importlib.util, "find_spec", lambda name: None)
    assert "needs Triton on CUDA" in str(fused.unavailable_reason(torch.device("cuda")))
    monkeypatch.setattr(fused, "unavailable_reason", lambda device: "the norm + RoPE kernel needs Triton")
    with pytest.raises(RuntimeUnavailableError, match="fuse_elementwise: not available here: .*Triton"):
        fuse_elementwise(torch.nn.Linear(2, 2))


def test_linear_gelu_is_the_tanh_gelu_of_the_projection():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 12, generator=generator)
    weight, bias = torch.randn(20, 12, generator=generator), torch.randn(20, generator=generator)
    expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias), approximate="tanh")
    assert torch.allclose(linear_gelu_tanh(x, weight, bias), expected, rtol=1e-6, atol=1e-6)
    # Not the exact (erf) GELU: the approximation is the model's.
    exact = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
    assert not torch.allclose(linear_gelu_tanh(x, weight, bias), exact, rtol=1e-6, atol=1e-6)


def test_norm_rope_reference_matches_diffusers_steps_in_bfloat16():
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    heads, head_dim, tokens = 4, 16, 10
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, tokens, heads * head_dim, generator=generator).to(torch.bfloat16)
    norm = torch.nn.RMSNorm(heads * head_dim, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(heads * head_dim, generator=generator))
    cos, sin = get_1d_rotary_pos_embed(head_dim, tokens, use_real=True, repeat_interleave_real=True)
    cos, sin = cos.float().view(1, tokens, 1, head_dim), sin.float().view(1, tokens, 1, head_dim)
    # diffusers' steps: the norm module, then each pair rotated.
    normed = norm(x).unflatten(2, (heads, head_dim))
    even, odd = normed.unflatten(-1, (-1, 2)).unbind(-1)
    expected = torch.empty_like(normed)
    expected[..., 0::2] = even * cos[..., 0::2] - odd * sin[..., 1::2]
    expected[..., 1::2] = even * sin[..., 1::2] + odd * cos[..., 0::2]
    got = rms_norm_rope_reference(x, norm.weight, 1e-6, cos, sin, heads)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    difference = (got.float() - expected.flatten(2).float()).abs()
    assert difference.max() <= 2**-6 * expected.float().abs().max()  # a few bfloat16 roundings
    # The rotation matters: without it the result is far off.
    unrotated = norm(x).float()
    assert (got.float() - unrotated).abs().max() > 0.1


def test_triton_kernel_in_the_interpreter_matches_the_reference(tmp_path: Path):
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from ditproof.kernels.fused import launch_rms_norm_rope, rms_norm_rope_reference

        generator = torch.Generator().manual_seed(2)
        heads, head_dim, tokens = 3, 8, 5
        dim = heads * head_dim
        for dtype in (torch.bfloat16, torch.float32):
            # The query slice of a fused projection: a strided view (row stride 3 * dim).
            qkv = torch.randn(2, tokens, 3 * dim, generator=generator).to(dtype)
            query = qkv[..., :dim]
            weight = (1 + 0.1 * torch.randn(dim, generator=generator)).to(dtype)
            angles = torch.randn(tokens, head_dim // 2, generator=generator)
            cos = angles.cos().repeat_interleave(2, -1).view(1, tokens, 1, head_dim)
            sin = angles.sin().repeat_interleave(2, -1).view(1, tokens, 1, head_dim)
            got = launch_rms_norm_rope(query, weight, 1e-6, cos, sin, heads)
            expected = rms_norm_rope_reference(query, weight, 1e-6, cos, sin, heads)
            assert got.is_contiguous() and got.dtype == dtype
            error = (got.float() - expected.float()).abs().max().item()
            # bfloat16: the norm output rounded once more or less differs by one step (2**-7 relative).
            bound = 1e-5 if dtype == torch.float32 else 2 ** -6 * expected.float().abs().max().item()
            assert error <= bound, (dtype, error)
            print(dtype, error)
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.bfloat16" in result.stdout and "torch.float32" in result.stdout


def _block_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(2, 6, 40, generator=generator) + 1).to(dtype)
    residual = torch.randn(2, 6, 40, generator=generator).to(dtype)
    table = torch.randn(1, 6, 40, generator=generator) / 40**0.5
    temb = torch.randn(2, 6, 40, generator=generator)
    return x, residual, table, temb


def test_layer_norm_modulate_reference_is_the_blocks_own_steps_in_bfloat16():
    from diffusers.models.normalization import FP32LayerNorm

    x, residual, table, temb = _block_inputs(torch.bfloat16)
    shift, scale, _, c_shift, c_scale, _ = (table + temb.float()).chunk(6, dim=1)
    norm = FP32LayerNorm(40, 1e-6, elementwise_affine=False)
    # diffusers' WanTransformerBlock: the first norm, then the cross-attention's residual and the third.
    expected = (norm(x.float()) * (1 + scale) + shift).type_as(x)
    summed_expected = x + residual
    expected_3 = (norm(summed_expected.float()) * (1 + c_scale) + c_shift).type_as(x)
    normed, summed = layer_norm_modulate_reference(x, None, scale, shift, 1e-6)
    assert normed.equal(expected) and summed is x
    assert layer_norm_modulate(x, scale, shift, 1e-6).equal(expected)
    normed_3, summed_3 = add_layer_norm_modulate(x, residual, c_scale, c_shift, 1e-6)
    assert summed_3.equal(summed_expected) and normed_3.equal(expected_3)
    assert not normed_3.equal(layer_norm_modulate(x, c_scale, c_shift, 1e-6))  # the residual counts


def test_layer_norm_kernel_in_the_interpreter_matches_the_reference():
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from ditproof.kernels.fused import launch_layer_norm_modulate, layer_norm_modulate_reference

        generator = torch.Generator().manual_seed(6)
        for dtype in (torch.bfloat16, torch.float32):
            # A strided view for x (a slice of a wider tensor); scale/shift chunks of (batch, 6, dim).
            wide = (3 * torch.randn(2, 5, 48, generator=generator) + 1).to(dtype)
            x = wide[..., :40]
            residual = torch.randn(2, 5, 40, generator=generator).to(dtype)
            # Per-sample modulation (read through the chunk's batch stride) and one shared row.
            per_sample = torch.randn(2, 6, 40, generator=generator).chunk(6, dim=1)
            shared = torch.randn(1, 6, 40, generator=generator).chunk(6, dim=1)
            for extra, (shift, scale) in ((None, per_sample[:2]), (residual, per_sample[:2]), (residual, shared[:2])):
                normed, summed = launch_layer_norm_modulate(x, extra, scale, shift, 1e-6)
                want_normed, want_summed = layer_norm_modulate_reference(x, extra, scale, shift, 1e-6)
                assert normed.is_contiguous() and normed.dtype == dtype
                # Triton's interpreter truncates float32 to bfloat16 (the GPU rounds to nearest
                # even, as PyTorch does): one bfloat16 step apart at most there.
                step = 0.0 if dtype == torch.float32 else 2 ** -7 * want_summed.float().abs()
                assert ((summed.float() - want_summed.float()).abs() <= step).all()
                error = (normed.float() - want_normed.float()).abs().max().item()
                # bfloat16: one rounding step of the output (2**-8 relative) at most.
                bound = 1e-5 if dtype == torch.float32 else 2 ** -7 * want_normed.float().abs().max().item()
                assert error <= bound, (dtype, extra is None, error)
                print(dtype, extra is None, error)
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("torch.bfloat16") == 3 and result.stdout.count("torch.float32") == 3


def test_option_is_applied_at_load_in_the_class_and_validates(tiny_model, small_request, tmp_path: Path):
    options = RuntimeOptions(fuse_elementwise=True)
    model = load_model("wan-tiny-random", options.load)
    first = execute(small_request, model, options, tmp_path / "a", request_id="f-1", entropy=ENTROPY)
    second = execute(small_request, model, options, tmp_path / "b", request_id="f-1", entropy=ENTROPY)
    assert first.video.sha256 == second.video.sha256
    assert (
        first.runtime.fuse_elementwise
        and "/sdpa+fused-elementwise[gelu-epilogue,norm-rope,norm-modulate]/" in first.runtime_class
    )
    verdict = validate(first, tmp_path / "a" / first.video.file, model)
    assert verdict.decision == "valid", verdict.reason
    # A record that fused other steps (session 5's, which did not list them) is another class.
    older = first.runtime.model_copy(update={"elementwise_steps": None})
    assert "+fused-elementwise/" in runtime_class(older) and runtime_class(older) != first.runtime_class
    with pytest.raises(InvalidInputError, match=r"options: fuse_elementwise=True \(loaded: False\)"):
        generate(small_request, 1, tiny_model, options)
    with pytest.raises(InvalidInputError, match=r"options: fuse_elementwise=False \(loaded: True\)"):
        generate(small_request, 1, model, RuntimeOptions())


def test_linears_the_fused_steps_read_directly_are_named_and_weight_swaps_reach_them():
    from ditproof.kernels.fused import bypassed_linears
    from ditproof.poc.compute import PocModel, compute_vectors
    from ditproof.poc.deviations import fp8_transform, swapped_weights
    from ditproof.protocol.poc import PocParams

    loaded = load_model("wan-tiny-random", LoadOptions(fuse_elementwise=True))
    expert, layers = loaded.pipeline.transformer, loaded.pipeline.transformer.config.num_layers
    assert bypassed_linears(expert) == [f"blocks.{i}.ffn.net.0.proj" for i in range(layers)]
    plain = load_model("wan-tiny-random", LoadOptions()).pipeline.transformer
    assert bypassed_linears(plain) == []

    # PoC's simulated weight cheats: the fused layers never run their own hooks, so their weights
    # are swapped for their block's forward; every linear layer computes with the cheat's weight.
    poc = PocModel.from_loaded(loaded)
    params = PocParams(latent_channels=16, latent_frames=1, latent_height=16, latent_width=16, text_len=8)
    before = {name: w.clone() for name, w in expert.state_dict().items()}
    used: list[str] = []

    def recording(name: str, weight: torch.Tensor) -> torch.Tensor:
        used.append(name)
        return fp8_transform()(name, weight)

    honest = compute_vectors(poc, params, "ab" * 32, "node", list(range(8)), 8)
    with swapped_weights(poc, recording):
        cheat = compute_vectors(poc, params, "ab" * 32, "node", list(range(8)), 8)
    fused_names = {f"expert{i}.blocks.{b}.ffn.net.0.proj" for i in (0, 1) for b in range(layers)}
    assert fused_names <= set(used)  # the fused GELU projections computed with FP8 weights too
    assert (honest != cheat).any()
    # Restored: the next honest run gives the same vectors, and no weight changed.
    assert (compute_vectors(poc, params, "ab" * 32, "node", list(range(8)), 8) == honest).all()
    assert all(torch.equal(before[name], w) for name, w in expert.state_dict().items())
