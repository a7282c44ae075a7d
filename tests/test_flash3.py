"""The flash-attn-3 attention backend: refusals, fingerprint, and its routing in diffusers.

The kernel needs a Hopper GPU and a FlashAttention-3 build; ``bench/fa4_check.py`` checks it on
the GPU (equal to cuDNN's attention within bf16 rounding, bitwise repeatable). Here a stand-in
``fa3_fwd_interface`` module computes attention with torch's math kernel: every self-attention of
the experts must reach it in the (batch, tokens, heads, head_dim) layout, cross-attention must not.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from ditproof.errors import RuntimeUnavailableError
from ditproof.generation.generate import generate
from ditproof.generation.runtime import kernels, runtime_fingerprint
from ditproof.kernels import flash3
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, RuntimeOptions


def test_refused_on_the_cpu_and_without_a_build_naming_what_to_install(
    tiny_model, small_request, monkeypatch, attention_backends
):
    with pytest.raises(RuntimeUnavailableError, match="'flash-attn-3' is not available here: it needs a CUDA device"):
        generate(small_request, 1, tiny_model, RuntimeOptions(attention_backend="flash-attn-3"))
    assert attention_backends(tiny_model) == {None}
    if not torch.cuda.is_available():  # this machine: a clear reason, not PyTorch's assertion
        assert "sees no CUDA device" in str(flash3.unavailable_reason(torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(flash3, "installed_build", lambda: None)
    reason = str(flash3.unavailable_reason(torch.device("cuda", 0)))
    assert "module flash_attn_interface or fa3_fwd_interface" in reason and "--no-index" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert "compute capability 10.0 has no kernel; allowed: 9.0" in str(flash3.unavailable_reason(torch.device("cuda")))


def test_every_self_attention_goes_through_the_build(monkeypatch, small_request, attention_backends):
    calls: list[tuple[int, ...]] = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, num_splits=0):
        assert not causal and num_splits == 1 and softmax_scale == q.shape[-1] ** -0.5
        calls.append(tuple(q.shape))
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale
        )
        return out.transpose(1, 2)

    interface = types.ModuleType("fa3_fwd_interface")
    interface.flash_attn_func = flash_attn_func  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", interface)
    monkeypatch.setattr(flash3, "installed_build", lambda: ("fa3_fwd_interface", "fa3_fwd", "0.0.3"))
    monkeypatch.setattr(flash3, "unavailable_reason", lambda device: None)

    model = load_model("wan-tiny-random", LoadOptions())
    reference = generate(small_request, 3, model, RuntimeOptions()).capture.latents["final"][1]
    options = RuntimeOptions(attention_backend="flash-attn-3")
    routed = generate(small_request, 3, model, options).capture.latents["final"][1]
    config = model.pipeline.transformer.config
    assert len(calls) == config.num_layers * 2 * small_request.num_inference_steps
    assert set(calls) == {(1, small_request.num_patches(), config.num_attention_heads, config.attention_head_dim)}
    assert torch.allclose(routed, reference, rtol=1e-4, atol=1e-4)
    fingerprint = runtime_fingerprint(model, options)
    assert fingerprint.attention_library == "fa3-fwd==0.0.3,cross-attention=cudnn"
    assert kernels(fingerprint) == "flash-attn-3[fa3-fwd==0.0.3,cross-attention=cudnn]"
    assert attention_backends(model) == {None}  # chosen for the run only
    calls.clear()
    generate(small_request, 1, model, RuntimeOptions())
    assert calls == []
