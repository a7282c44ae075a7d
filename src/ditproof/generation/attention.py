"""Selecting the attention kernel of Wan transformers by its ditproof name.

One place for generation (both experts of a loaded model) and the pricing calibration (one
expert built alone): the names of ``RuntimeOptions.attention_backend`` map to diffusers'
attention dispatcher, except ``flash-attn-4`` and ``flash-attn-3``, installed from local packages
(:mod:`ditproof.generation.flash4`, :mod:`ditproof.generation.flash3`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import torch

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.generation import flash3, flash4
from ditproof.protocol.options import ATTENTION_BACKENDS, GPU_ONLY_BACKENDS

LOCAL_KERNELS: dict[str, ModuleType] = {flash4.BACKEND: flash4, flash3.BACKEND: flash3}
"""Backends run from local packages: each module has ``install`` and ``library_versions``."""


def attention_library(backend: str) -> str | None:
    """The versions behind a local attention kernel (None for PyTorch's own kernels)."""
    return LOCAL_KERNELS[backend].library_versions() if backend in LOCAL_KERNELS else None


def select_attention(modules: Iterable[torch.nn.Module], backend: str, device: torch.device) -> None:
    """Runs every attention of ``modules`` (on ``device``) with ``backend``.

    Raises:
        InvalidInputError: an unknown name.
        RuntimeUnavailableError: a kernel that cannot run here, saying why.
    """
    if backend not in ATTENTION_BACKENDS:
        raise InvalidInputError(f"attention_backend: got {backend!r}; allowed: {', '.join(ATTENTION_BACKENDS)}")
    modules = tuple(modules)
    if backend in LOCAL_KERNELS:  # says itself which devices and packages it needs
        LOCAL_KERNELS[backend].install(modules, device)
        return
    if backend in GPU_ONLY_BACKENDS and device.type != "cuda":
        raise RuntimeUnavailableError(
            f"attention_backend: {backend!r} needs a CUDA device (the model is on {device}); "
            "allowed here: sdpa, sdpa-math, flex"
        )
    name = ATTENTION_BACKENDS[backend]
    for module in modules:
        try:
            module.set_attention_backend(name or "native")  # type: ignore[operator]
        except (ValueError, RuntimeError, ImportError) as exc:
            raise RuntimeUnavailableError(f"attention_backend: {backend!r} is not available here ({exc})") from None
