"""The CPU attention backend: vLLM-Omni's SDPA implementation, dispatched without a platform check.

``AttentionImpl.forward`` in vLLM-Omni 0.30 picks ``forward_cuda``/``forward_hip``/... from the
platform and raises for any other platform, an out-of-tree one included; a backend of our own
is the documented way around that (the platform names it in ``get_diffusion_attn_backend_cls``).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm_omni.diffusion.attention.backends.sdpa import SDPABackend, SDPAImpl


class CpuSDPAImpl(SDPAImpl):
    """torch's scaled_dot_product_attention, as vLLM-Omni runs it on CUDA (same mask layout)."""

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_metadata: Any = None
    ) -> torch.Tensor:
        return self._forward_impl(query, key, value, attn_metadata, mask_mode="broadcast_k")


class CpuSDPABackend(SDPABackend):
    """SDPA for the CPU platform."""

    @staticmethod
    def get_name() -> str:
        return "CPU_SDPA"

    @staticmethod
    def get_impl_cls() -> type[CpuSDPAImpl]:
        return CpuSDPAImpl
