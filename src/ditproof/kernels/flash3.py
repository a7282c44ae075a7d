"""FlashAttention-3 (the Hopper kernels of Dao-AILab's flash-attention, ``hopper/``) as an attention kernel.

The runtime option ``attention_backend="flash-attn-3"`` runs the experts' self-attention with a
locally installed FlashAttention-3 build; nothing is downloaded or compiled at run time. Two
builds are taken: upstream's (module ``flash_attn_interface``, distribution ``flash_attn_3``,
built from the repository's ``hopper/`` folder) and the forward-only ``fa3-fwd`` wheel (module
``fa3_fwd_interface``), which links only PyTorch's stable C ABI and so loads in any PyTorch from
2.10 on. Cross-attention runs cuDNN's kernel, as with ``flash-attn-4`` (0.90 vs 0.65 ms per A14B
layer at 480p on H100). At 480p self-attention FlashAttention-3 measured 700 TFLOP/s against
FlashAttention-4's 681 on the same H100 (docs/performance.md).

The kernel is routed through the same diffusers slot as ``flash-attn-4``
(:func:`ditproof.kernels.flash4.route_through_slot`) as a ``torch.library`` custom operator.
Its forward is deterministic: one split (``num_splits=1``), tiles fixed per head dimension at
build time. The build's distribution and version are in ``attention_library``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Iterable

import torch

from ditproof.errors import RuntimeUnavailableError
from ditproof.kernels import flash4

BACKEND = "flash-attn-3"
BUILDS = (("flash_attn_interface", "flash_attn_3"), ("fa3_fwd_interface", "fa3_fwd"))
"""Python module and distribution of each build taken, in order of preference."""
SUPPORTED_CAPABILITIES = ((9, 0),)
INSTALL_HINT = (
    "build flash-attention's hopper/ folder (module flash_attn_interface), or install a forward-only "
    "build from a local wheel: pip install --no-index --find-links WHEELS fa3-fwd"
)


@functools.cache
def installed_build() -> tuple[str, str, str] | None:
    """(module, distribution, version) of the first build installed, else None."""
    for module, distribution in BUILDS:
        if importlib.util.find_spec(module) is None:
            continue
        try:
            return module, distribution, importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> str | None:
    """``DIST==X,cross-attention=cudnn`` of the build installed, else None."""
    build = installed_build()
    if build is None:
        return None
    _, distribution, version = build
    return f"{distribution.replace('_', '-')}=={version},{flash4.CROSS_ATTENTION}"


def unavailable_reason(device: torch.device) -> str | None:
    """Why the kernel cannot run on ``device`` (None when it can)."""
    reason = flash4.device_reason(device, SUPPORTED_CAPABILITIES, "9.0")
    if reason is not None:
        return reason
    if installed_build() is None:
        modules = " or ".join(module for module, _ in BUILDS)
        return f"no FlashAttention-3 build is installed (module {modules}); {INSTALL_HINT}"
    return None


@torch.library.custom_op("ditproof::flash_attn3_forward", mutates_args=())
def flash_attn3_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Non-causal attention of (batch, tokens, heads, head_dim) tensors, without a mask (one split)."""
    build = installed_build()
    if build is None:
        raise RuntimeUnavailableError(f"attention_backend: {BACKEND!r}: no build installed; {INSTALL_HINT}")
    interface = importlib.import_module(build[0])
    out = interface.flash_attn_func(query, key, value, softmax_scale=scale, causal=False, num_splits=1)
    return out[0] if isinstance(out, tuple) else out


@flash_attn3_forward.register_fake
def _flash_attn3_forward_shape(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


_kernel = flash4.slot_kernel(BACKEND, flash_attn3_forward)


def install(experts: Iterable[torch.nn.Module], device: torch.device) -> None:
    """Routes every attention of ``experts`` to the local FlashAttention-3 build.

    Raises :class:`RuntimeUnavailableError` naming what is missing when it cannot run here.
    """
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeUnavailableError(f"attention_backend: {BACKEND!r} is not available here: {reason}")
    flash4.route_through_slot(experts, _kernel, BACKEND)
