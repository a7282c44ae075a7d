"""Selecting the attention kernel of Wan transformers by its ditproof name.

One place for generation (both experts of a loaded model) and the pricing calibration (one
expert built alone): the names of ``RunOptions.attention_backend`` map to diffusers'
attention dispatcher, except ``flash-attn-4`` and ``flash-attn-3``, installed from local packages
(:mod:`ditproof.kernels.flash4`, :mod:`ditproof.kernels.flash3`).

Generation selects the kernel per run (:func:`attention_for_run`) and puts the experts back as
they were after it, so a loaded model carries no attention choice from one run to the next.
diffusers' own ``attention_backend`` context manager (``diffusers.models.attention_dispatch``,
0.42.1) is not used for that: it sets only the process-wide default, which processors with a
backend of their own (after ``set_attention_backend``) do not follow, and for the
``flash_4_hub`` slot it would fetch a Hub kernel when the slot is empty. ``set_attention_backend``
itself sets that process-wide default too, so a run restores it as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.kernels import flash3, flash4
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


@contextmanager
def attention_for_run(modules: Iterable[torch.nn.Module], backend: str, device: torch.device) -> Iterator[None]:
    """Runs every attention of ``modules`` with ``backend`` inside the block, then restores what
    selecting it changed: each processor's backend, diffusers' process-wide active backend (which
    ``set_attention_backend`` also sets, and which processors without a backend of their own
    follow) and diffusers' ``flash_4_hub`` slot (which the local kernels fill).

    ``sdpa`` leaves the processors as loaded and runs them with diffusers' native attention as the
    process-wide default (PyTorch's SDPA choosing its kernel itself), whatever another caller's
    ``set_attention_backend`` left there.

    Raises:
        InvalidInputError / RuntimeUnavailableError: as :func:`select_attention`.
    """
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    modules = tuple(modules)
    active = _AttentionBackendRegistry._active_backend
    if backend == "sdpa":
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
        try:
            yield
        finally:
            _AttentionBackendRegistry.set_active_backend(active)
        return
    processors: list[Any] = []
    for root in modules:
        for module in root.modules():
            processor = getattr(module, "processor", None)
            if hasattr(processor, "_attention_backend"):
                processors.append(processor)
    saved = [processor._attention_backend for processor in processors]
    slot = _hub_slot()
    slot_kernel = None if slot is None else slot.kernel_fn
    try:
        select_attention(modules, backend, device)
        yield
    finally:
        for processor, value in zip(processors, saved, strict=True):
            processor._attention_backend = value
        _AttentionBackendRegistry.set_active_backend(active)
        if slot is not None:
            slot.kernel_fn = slot_kernel


def _hub_slot() -> Any:
    """diffusers' ``flash_4_hub`` kernel slot (None in a diffusers without it)."""
    try:
        from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

        return _HUB_KERNELS_REGISTRY[AttentionBackendName.FLASH_4_HUB]
    except (ImportError, AttributeError, KeyError):
        return None
