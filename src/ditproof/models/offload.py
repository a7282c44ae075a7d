"""Keeping a module in host memory between uses, without copying it back each time.

The A14B text encoder (UMT5-XXL, 11 GB in bf16) does not fit on an 80 GB card next to both
experts, so it is offloaded (``LoadOptions.offload_text_encoder``). ``module.to(device)``
before each prompt and ``module.to("cpu")`` after it copies 11 GB each way from pageable memory:
13.8 s per video on an H100 (``bench/results/pricing_validate_h100_2026-11-26.json``).

:class:`HostResident` instead keeps one copy of the weights in page-locked host memory. For a
use, the parameters point at device copies made with asynchronous copies from that memory;
afterwards they point back at the host copy, and the device copies are simply dropped: no copy
back. The weights and the kernels are the same, so the outputs are bitwise the same as with the
module resident on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class HostResident:
    """A module whose weights live in (pinned, on CUDA hosts) host memory between uses."""

    def __init__(self, module: torch.nn.Module, pin: bool):
        self.module = module
        self._host: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, tensor in self._tensors():
                host = tensor.detach().to("cpu")
                if pin:
                    host = host.pin_memory()
                self._host[name] = host
                tensor.data = host

    def _tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        # Shared tensors (UMT5's tied token embedding) appear once: moving it moves every user.
        yield from self.module.named_parameters()
        yield from self.module.named_buffers()

    @contextmanager
    def on(self, device: torch.device) -> Iterator[torch.nn.Module]:
        """The module with its weights on ``device`` for the block; on the host again after it."""
        tensors = list(self._tensors())
        try:
            with torch.no_grad():
                for name, tensor in tensors:
                    tensor.data = self._host[name].to(device, non_blocking=True, copy=True)
            yield self.module
        finally:
            for name, tensor in tensors:
                tensor.data = self._host[name]  # the device copies are freed, not copied back
