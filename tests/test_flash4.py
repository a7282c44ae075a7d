"""The flash-attn-4 attention backend: refusals, fingerprint, and its routing in diffusers.

The kernel itself needs a Hopper or Blackwell GPU and the flash-attn-4 package; it is checked on
the GPU by ``bench/fa4_check.py`` (equal to cuDNN's attention within bf16 rounding, bitwise
repeatable). Here the routing is checked with a stand-in ``flash_attn.cute.interface`` module whose
``_flash_attn_fwd`` computes attention with torch's math kernel: the experts must send every
self-attention through ditproof's custom operator in the (batch, tokens, heads, head_dim) layout,
with the pinned tile.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from ditproof.errors import RuntimeUnavailableError
from ditproof.generation.generate import generate
from ditproof.generation.runtime import kernels, runtime_fingerprint
from ditproof.kernels import flash4
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, RuntimeOptions


def test_refused_on_the_cpu_naming_the_devices_it_runs_on(tiny_model, small_request, attention_backends):
    with pytest.raises(RuntimeUnavailableError, match="'flash-attn-4' is not available here: it needs a CUDA device"):
        generate(small_request, 1, tiny_model, RuntimeOptions(attention_backend="flash-attn-4"))
    with pytest.raises(RuntimeUnavailableError, match="compute capability 9.0 or 10.x"):
        flash4.install([tiny_model.pipeline.transformer], torch.device("cpu"))
    assert attention_backends(tiny_model) == {None}


def test_missing_packages_are_named_with_how_to_install(monkeypatch):
    if not torch.cuda.is_available():  # this machine: a clear reason, not PyTorch's assertion
        assert "sees no CUDA device" in str(flash4.unavailable_reason(torch.device("cuda", 0)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(flash4, "library_versions", lambda: None)
    reason = flash4.unavailable_reason(torch.device("cuda", 0))
    assert reason is not None and "flash-attn-4 and nvidia-cutlass-dsl are not installed" in reason
    assert "--no-index" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "compute capability 8.0 has no kernel; allowed: 9.0, 10.0, 10.3" in str(
        flash4.unavailable_reason(torch.device("cuda", 0))
    )


def test_library_versions_name_the_packages_the_tile_and_the_cross_attention_kernel(monkeypatch):
    versions = {"flash-attn-4": "4.0.0b36", "nvidia-cutlass-dsl": "4.8.1"}
    monkeypatch.setattr(flash4.importlib.metadata, "version", lambda name: versions[name])
    assert flash4.library_versions() == (
        "flash-attn-4==4.0.0b36,nvidia-cutlass-dsl==4.8.1,tile=128x128,cross-attention=cudnn"
    )


def test_fake_kernel_gives_the_output_shape_for_compilation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 300, 4, 64, dtype=torch.bfloat16)
        kv = torch.empty(2, 512, 4, 64, dtype=torch.bfloat16)
        out = torch.ops.ditproof.flash_attn4_forward(q, kv, kv, 0.125, 128, 128)
    assert out.shape == (2, 300, 4, 64) and out.dtype == torch.bfloat16


@pytest.fixture()
def stand_in_flash_attn(monkeypatch):
    """A ``flash_attn.cute`` module computing attention with torch's math kernel; records layouts."""
    calls: list[tuple[tuple[int, ...], float]] = []

    def _flash_attn_fwd(q, k, v, softmax_scale=None, causal=False, tile_mn=None):
        assert not causal and tile_mn == flash4.SELF_ATTENTION_TILE
        calls.append((tuple(q.shape), softmax_scale))
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale
        )
        return out.transpose(1, 2), None, None, None, None

    package = types.ModuleType("flash_attn")
    cute = types.ModuleType("flash_attn.cute")
    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd = _flash_attn_fwd  # type: ignore[attr-defined]
    cute.interface = interface  # type: ignore[attr-defined]
    package.cute = cute  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    monkeypatch.setattr(flash4, "unavailable_reason", lambda device: None)
    monkeypatch.setattr(flash4, "library_versions", lambda: "flash-attn-4==4.0.0b36,nvidia-cutlass-dsl==4.8.1")
    return calls


def test_every_attention_goes_through_the_kernel_in_its_layout(stand_in_flash_attn, small_request, attention_backends):
    model = load_model("wan-tiny-random", LoadOptions())
    reference = generate(small_request, 3, model, RuntimeOptions()).capture.latents["final"][1]
    options = RuntimeOptions(attention_backend="flash-attn-4")
    routed = generate(small_request, 3, model, options).capture.latents["final"][1]
    assert attention_backends(model) == {None}  # chosen for the run only
    config = model.pipeline.transformer.config
    heads, head_dim = config.num_attention_heads, config.attention_head_dim
    layers = config.num_layers
    # Self-attention of every block, for both CFG passes of every step; cross-attention (text
    # keys, another count than the queries) goes to cuDNN's kernel.
    assert len(stand_in_flash_attn) == layers * 2 * small_request.num_inference_steps
    shapes = {shape for shape, _ in stand_in_flash_attn}
    tokens = small_request.num_patches()
    assert shapes == {(1, tokens, heads, head_dim)}
    assert {scale for _, scale in stand_in_flash_attn} == {head_dim**-0.5}
    assert torch.allclose(routed, reference, rtol=1e-4, atol=1e-4)
    fingerprint = runtime_fingerprint(model, options)
    assert fingerprint.attention_library == "flash-attn-4==4.0.0b36,nvidia-cutlass-dsl==4.8.1"
    assert flash4.CROSS_ATTENTION == "cross-attention=cudnn"
    assert kernels(fingerprint) == "flash-attn-4[flash-attn-4==4.0.0b36,nvidia-cutlass-dsl==4.8.1]"
    assert runtime_fingerprint(model, RuntimeOptions()).attention_library is None
    stand_in_flash_attn.clear()
    generate(small_request, 1, model, RuntimeOptions())
    assert stand_in_flash_attn == []


def test_the_pricing_calibration_selects_it_through_the_same_path(tiny_model):
    from ditproof.pricing.calibrate import set_attention

    with pytest.raises(RuntimeUnavailableError, match="'flash-attn-4' is not available here: it needs a CUDA device"):
        set_attention(tiny_model.pipeline.transformer, "flash-attn-4")


def test_kernel_modules_load_without_the_video_encoder():
    import subprocess

    check = (
        "import sys; import ditproof.kernels.flash4, ditproof.kernels.flash3, ditproof.kernels.fused; "
        "print('av' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stdout + run.stderr
