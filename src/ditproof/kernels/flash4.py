"""FlashAttention-4 (the CuTe DSL kernels of the ``flash-attn-4`` package) as an attention kernel.

The runtime option ``attention_backend="flash-attn-4"`` runs both experts' attention with the
locally installed ``flash_attn.cute`` forward kernel; nothing is downloaded. diffusers knows this
kernel only through its Hub slot (``flash_4_hub``, fetched with the ``kernels`` package); ditproof
fills that slot's kernel function with the local package instead, so diffusers' own dispatch,
argument handling and attention processors stay as they are.

Cross-attention (the 512 text keys) runs cuDNN's fused attention instead, through PyTorch: with
so few keys FlashAttention-4 was slower there (0.92 vs 0.68 ms per A14B layer at 480p, H100).
The rule is fixed by the shapes (another number of keys than of queries: cuDNN), so executor and validator
pick the same kernel; the cuDNN version is in the fingerprint and the rule in
``attention_library``.

Each kernel call is a ``torch.library`` custom operator, so regional ``torch.compile`` with
``fullgraph=True`` keeps it as one opaque node. The forward kernel is deterministic: one split
per query block (``num_splits=1``), tile sizes chosen from the shapes, not by timing. The
package versions are part of the runtime fingerprint (``attention_library``) and class, since
another release may pick other tiles and round differently.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterable

import torch

from ditproof.errors import RuntimeUnavailableError

BACKEND = "flash-attn-4"
PACKAGES = ("flash-attn-4", "nvidia-cutlass-dsl")
"""Distributions whose versions name the kernels (the Python kernels and their compiler)."""
INSTALL_HINT = (
    "install them from local wheels: pip install --no-index --find-links WHEELS "
    "flash-attn-4 'nvidia-cutlass-dsl[cu13]' (with quack-kernels, apache-tvm-ffi, torch-c-dlpack-ext)"
)
SUPPORTED_CAPABILITIES = ((9, 0), (10, 0), (10, 3))
"""CUDA architectures with a forward kernel in the package (Hopper, Blackwell data-centre parts)."""


SELF_ATTENTION_TILE = (128, 128)
"""Query × key tile of the FlashAttention-4 kernel: pinned, so a later release's heuristic cannot
change it under a runtime class. Part of ``attention_library``: another tile sums the keys in
another order. 128×128 is the package's own choice for head_dim 128; at the A14B shapes on H100
96, 112 and 144 were no faster in whole forwards (within the ±2% between runs; 104 and 120 do
not compile), see docs/performance.md.
"""
CROSS_ATTENTION = "cross-attention=cudnn"
"""How attention with another number of keys than of queries runs (part of ``attention_library``)."""


def library_versions() -> str | None:
    """``flash-attn-4==X,nvidia-cutlass-dsl==Y,tile=MxN,cross-attention=cudnn`` when both are
    installed, else None."""
    found = []
    for package in PACKAGES:
        try:
            found.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            return None
    tile = "x".join(str(side) for side in SELF_ATTENTION_TILE)
    return ",".join([*found, f"tile={tile}", CROSS_ATTENTION])


def device_reason(device: torch.device, supported: tuple[tuple[int, int], ...], wanted: str) -> str | None:
    """Why a kernel built for the compute capabilities ``supported`` (``wanted``, in words) cannot
    run on ``device``: not a CUDA device, none visible to this PyTorch, or another capability."""
    if device.type != "cuda":
        return f"it needs a CUDA device of compute capability {wanted} (the model is on {device})"
    if not torch.cuda.is_available():
        build = "a CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return f"it needs a CUDA device of compute capability {wanted}; PyTorch ({build}) sees no CUDA device"
    capability = torch.cuda.get_device_capability(device)
    if capability not in supported:
        allowed = ", ".join(f"{major}.{minor}" for major, minor in supported)
        return f"compute capability {capability[0]}.{capability[1]} has no kernel; allowed: {allowed}"
    return None


def unavailable_reason(device: torch.device) -> str | None:
    """Why the kernel cannot run on ``device`` (None when it can)."""
    reason = device_reason(device, SUPPORTED_CAPABILITIES, "9.0 or 10.x")
    if reason is not None:
        return reason
    if library_versions() is None or importlib.util.find_spec("flash_attn.cute") is None:
        return f"the packages {' and '.join(PACKAGES)} are not installed; {INSTALL_HINT}"
    return None


@torch.library.custom_op("ditproof::flash_attn4_forward", mutates_args=())
def flash_attn4_forward(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, tile_m: int, tile_n: int
) -> torch.Tensor:
    """Non-causal attention of (batch, tokens, heads, head_dim) tensors, without a mask.

    The package's forward entry with an explicit tile (its public ``flash_attn_func`` takes
    none); one split per query block, as there.
    """
    from flash_attn.cute.interface import _flash_attn_fwd

    # Strided inputs are read as they are (the kernel takes any layout whose last dimension is
    # contiguous), e.g. the value slice of a fused QKV projection, without a copy.
    out = _flash_attn_fwd(query, key, value, softmax_scale=scale, causal=False, tile_mn=(tile_m, tile_n))[0]
    return out


@flash_attn4_forward.register_fake
def _flash_attn4_forward_shape(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, tile_m: int, tile_n: int
) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


@torch.library.custom_op("ditproof::cudnn_attention_forward", mutates_args=())
def cudnn_attention_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """cuDNN's fused attention of (batch, tokens, heads, head_dim) tensors, without a mask.

    Off CUDA (tests with a stand-in FlashAttention package) PyTorch's own attention runs instead.
    """
    if query.device.type != "cuda":
        out = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=scale
        )
        return out.transpose(1, 2).contiguous()
    # PyTorch's cuDNN attention takes (batch, heads, tokens, head_dim) views of any strides.
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        None,  # attention bias
        False,  # compute_log_sumexp: forward only
        0.0,  # dropout
        False,  # causal
        False,  # return_debug_mask
        scale=scale,
    )[0]
    return out.transpose(1, 2).contiguous()


@cudnn_attention_forward.register_fake
def _cudnn_attention_forward_shape(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


SelfAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def slot_kernel(backend: str, self_attention: SelfAttention) -> Callable[..., torch.Tensor]:
    """The function diffusers' slot calls (its keyword names): self-attention with
    ``self_attention(q, k, v, scale)``, cross-attention with cuDNN (see the module's note)."""

    def kernel(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        softmax_scale: float | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        if causal:
            raise ValueError(f"{backend}: causal attention is not used by the Wan experts")
        scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
        if k.shape[1] != q.shape[1]:  # cross-attention
            return cudnn_attention_forward(q, k, v, scale)
        return self_attention(q, k, v, scale)

    return kernel


def _self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return flash_attn4_forward(q, k, v, scale, *SELF_ATTENTION_TILE)


_kernel = slot_kernel(BACKEND, _self_attention)


def install(experts: Iterable[torch.nn.Module], device: torch.device) -> None:
    """Routes every attention of ``experts`` to the local FlashAttention-4 forward kernel.

    Raises :class:`RuntimeUnavailableError` naming what is missing when it cannot run here.
    """
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeUnavailableError(f"attention_backend: {BACKEND!r} is not available here: {reason}")
    route_through_slot(experts, _kernel, BACKEND)


def route_through_slot(experts: Iterable[torch.nn.Module], kernel: Callable[..., torch.Tensor], backend: str) -> None:
    """Puts ``kernel`` into diffusers' ``flash_4_hub`` slot and sends every attention of ``experts``
    there (the local kernels of ``flash-attn-4`` and ``flash-attn-3`` share the slot: one process
    runs one attention backend)."""
    try:
        from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

        slot = AttentionBackendName.FLASH_4_HUB
        _HUB_KERNELS_REGISTRY[slot].kernel_fn = kernel
    except (ImportError, AttributeError, KeyError) as exc:  # another diffusers than the pinned one
        raise RuntimeUnavailableError(
            f"attention_backend: {backend!r} is not available here: this diffusers has no flash_4_hub "
            f"attention slot ({type(exc).__name__}: {exc}); allowed: diffusers 0.42.1"
        ) from None
    for expert in experts:
        for module in expert.modules():
            processor = getattr(module, "processor", None)
            if processor is not None and hasattr(processor, "_attention_backend"):
                if getattr(processor, "_parallel_config", None) is not None:
                    raise RuntimeUnavailableError(
                        f"attention_backend: {backend!r} does not support context parallelism; "
                        "allowed with cp_degree > 1: sdpa, sdpa-cudnn, sdpa-flash, sdpa-efficient"
                    )
                processor._attention_backend = slot
