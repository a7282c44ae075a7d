"""A CPU platform for vLLM-Omni 0.30, which ships none (``Stage 0 requires 1 device(s) ... 0``).

One device, the CPU: device, memory and stream calls are no-ops or report host memory, and
attention is torch SDPA through :mod:`ditproof_vllm_omni.attention`. It is for tests and for
cross-engine measurements on machines without a GPU; it is active only when
``DITPROOF_OMNI_CPU=1`` is set, so on a GPU host the built-in CUDA platform is untouched.
"""

from __future__ import annotations

import os

import psutil
import torch
from vllm.platforms.cpu import CpuPlatform
from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum

ENV = "DITPROOF_OMNI_CPU"


def detect() -> str | None:
    """Entry point of ``vllm_omni.platform_plugins``: this platform's qualified name, when enabled."""
    return "ditproof_vllm_omni.platform.CpuOmniPlatform" if os.environ.get(ENV) == "1" else None


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    """vLLM's CPU platform with vLLM-Omni's diffusion interfaces."""

    _omni_enum = OmniPlatformEnum.OOT
    device_control_env_var = "DITPROOF_OMNI_CPU_DEVICES"

    @classmethod
    def get_omni_ar_worker_cls(cls) -> str:
        raise NotImplementedError("ditproof's CPU platform runs diffusion stages only")

    @classmethod
    def get_omni_generation_worker_cls(cls) -> str:
        raise NotImplementedError("ditproof's CPU platform runs diffusion stages only")

    @classmethod
    def get_default_stage_config_path(cls) -> str:
        return "vllm_omni/deploy"

    @classmethod
    def get_diffusion_attn_backend_cls(
        cls, selected_backend: str | None, head_size: int, allow_trtllm_default: bool = False
    ) -> str:
        if selected_backend not in (None, "TORCH_SDPA", "CPU_SDPA"):
            raise ValueError(f"attention backend: got {selected_backend!r}; allowed on the CPU: TORCH_SDPA")
        return "ditproof_vllm_omni.attention.CpuSDPABackend"

    @classmethod
    def supports_torch_inductor(cls) -> bool:
        return False

    @classmethod
    def get_torch_device(cls, local_rank: int | None = None) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def get_device_count(cls) -> int:
        return 1

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def get_device_version(cls) -> str | None:
        return None

    @classmethod
    def synchronize(cls) -> None:
        return None

    @classmethod
    def empty_cache(cls) -> None:
        return None

    @classmethod
    def reset_peak_memory_stats(cls, device: torch.device | None = None) -> None:
        return None

    @classmethod
    def max_memory_allocated(cls, device: torch.device | None = None) -> int:
        return 0

    @classmethod
    def max_memory_reserved(cls, device: torch.device | None = None) -> int:
        return 0

    @classmethod
    def current_stream(cls, device: torch.device | None = None) -> None:
        return None

    @classmethod
    def get_free_memory(cls, device: torch.device | None = None) -> int:
        return int(psutil.virtual_memory().available)

    @classmethod
    def get_device_memory(cls, device: torch.device | None = None) -> tuple[int, int]:
        memory = psutil.virtual_memory()
        return int(memory.available), int(memory.total)
