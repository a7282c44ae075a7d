"""Input conventions of the frame metrics.

Videos enter the metrics as **uint8 RGB frames** ``(F, H, W, 3)`` (what
``ditproof.video.decode_video`` returns, numpy or torch): no range can be mistaken. Each metric
converts them itself, in float32:

* PSNR, SSIM, MS-SSIM, DISTS: ``x / 255`` → [0, 1], channels first ``(F, 3, H, W)``;
* LPIPS: ``x / 127.5 - 1`` → [-1, 1] (the range LPIPS was trained on).
"""

from __future__ import annotations

import numpy as np
import torch

from ditproof.errors import InvalidInputError

FrameArray = np.ndarray | torch.Tensor


def as_uint8_frames(frames: FrameArray, name: str) -> torch.Tensor:
    """Checks ``frames`` is uint8 ``(F, H, W, 3)`` and returns it as a CPU torch tensor (no copy for numpy)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise InvalidInputError(
            f"{name}: got {tensor.dtype} of shape {tuple(tensor.shape)}; allowed: uint8 RGB frames (F, H, W, 3)"
        )
    if tensor.shape[0] == 0:
        raise InvalidInputError(f"{name}: got 0 frames; allowed: at least 1")
    return tensor


def check_pair(a: FrameArray, b: FrameArray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both videos as uint8 tensors, refusing different frame counts or sizes."""
    x, y = as_uint8_frames(a, "frames a"), as_uint8_frames(b, "frames b")
    if x.shape != y.shape:
        raise InvalidInputError(
            f"frames: got shapes {tuple(x.shape)} and {tuple(y.shape)}; allowed: equal (F, H, W, 3) shapes"
        )
    return x, y


def to_unit(frames: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` → float32 ``(F, 3, H, W)`` in [0, 1]."""
    return frames.to(device).permute(0, 3, 1, 2).to(torch.float32) / 255.0


def to_signed(frames: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` → float32 ``(F, 3, H, W)`` in [-1, 1] (LPIPS's range)."""
    return frames.to(device).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
