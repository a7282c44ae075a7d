"""Selecting the attention kernel of Wan transformers by its ditproof name.

One place for generation (both experts of a loaded model) and the pricing calibration (one
expert built alone): the names of ``RuntimeOptions.attention_backend`` map to diffusers'
attention dispatcher, except ``flash-attn-4`` and ``flash-attn-3``, installed from local packages
(:mod:`ditproof.generation.flash4`, :mod:`ditproof.generation.flash3`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.generation import flash3, flash4
from ditproof.protocol.options import ATTENTION_BACKENDS, GPU_ONLY_BACKENDS


def select_attention(modules: Iterable[torch.nn.Module], backend: str, device: torch.device) -> None:
    """Runs every attention of ``modules`` (on ``device``) with ``backend``.

    Raises:
        InvalidInputError: an unknown name.
        RuntimeUnavailableError: a kernel that cannot run here, saying why.
    """
    if backend not in ATTENTION_BACKENDS:
        raise InvalidInputError(f"attention_backend: got {backend!r}; allowed: {', '.join(ATTENTION_BACKENDS)}")
    modules = tuple(modules)
    local = {flash4.BACKEND: flash4.install, flash3.BACKEND: flash3.install}
    if backend in local:  # says itself which devices and packages it needs
        local[backend](modules, device)
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
