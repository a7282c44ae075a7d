"""Pure per-frame metrics and latent distances.

Every frame metric takes two videos of uint8 RGB frames ``(F, H, W, 3)`` (see
``ditproof.metrics.frames``) and returns one value per frame, float64 ``(F,)`` on the CPU.
Frames are processed in chunks of ``batch`` so memory stays bounded for long videos.

* ``psnr``: 10·log10(1 / MSE) over the frame's pixels and channels in [0, 1], in float64.
  Identical frames have no finite PSNR; they get :data:`PSNR_IDENTICAL` (200 dB), above any value
  two different 8-bit frames can reach (at most 10·log10(255²·3·H·W), 122 dB for 4K).
* ``ssim``: torchmetrics' SSIM, Gaussian window 11 (σ 1.5), k1 0.01, k2 0.03, data range 1, the
  mean over the three RGB channels.
* ``ms_ssim``: torchmetrics' MS-SSIM with the standard five scales and weights (Wang et al. 2003:
  0.0448, 0.2856, 0.3001, 0.2363, 0.1333), window 11 (σ 1.5). It needs frames of at least 176
  pixels on their short side.
* ``ms_ssim3``: MS-SSIM for small frames: three scales with the first three standard weights
  rescaled to sum to 1, window 7 (σ 1.0); it needs at least 28 pixels on the short side. The two
  are different metrics: thresholds for one do not apply to the other.
* ``lpips_alex``, ``lpips_vgg``, ``dists``: see ``ditproof.metrics.lpips`` / ``.dists``.

Latent distances compare the final latents (before the VAE) in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ditproof.errors import InvalidInputError
from ditproof.metrics.dists import load_dists
from ditproof.metrics.frames import FrameArray, check_pair, to_signed, to_unit
from ditproof.metrics.lpips import load_lpips

PSNR_IDENTICAL = 200.0
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_MS_SSIM3_BETAS = tuple(b / sum(MS_SSIM_BETAS[:3]) for b in MS_SSIM_BETAS[:3])
DEFAULT_BATCH = 8


def _chunked(
    a: FrameArray,
    b: FrameArray,
    batch: int,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    x, y = check_pair(a, b)
    if batch < 1:
        raise InvalidInputError(f"batch: got {batch}; allowed: 1 or more")
    parts = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            parts.append(fn(x[start : start + batch], y[start : start + batch]).to("cpu", torch.float64))
    return torch.cat(parts)


def psnr_frames(a: FrameArray, b: FrameArray, batch: int = DEFAULT_BATCH) -> torch.Tensor:
    """PSNR in dB per frame (higher is better; :data:`PSNR_IDENTICAL` for identical frames)."""

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        diff = x.to(torch.float64) / 255.0 - y.to(torch.float64) / 255.0
        mse = diff.square().mean(dim=(1, 2, 3))
        psnr = 10.0 * torch.log10(1.0 / mse)
        return torch.where(mse > 0, psnr, torch.full_like(psnr, PSNR_IDENTICAL))

    return _chunked(a, b, batch, fn)


def ssim_frames(a: FrameArray, b: FrameArray, device: str = "cpu", batch: int = DEFAULT_BATCH) -> torch.Tensor:
    """SSIM per frame, in [-1, 1] (1 for identical frames; higher is better)."""

    # torchmetrics is imported where used, so that LPIPS/DISTS/PSNR run where it is absent (GPU hosts).
    from torchmetrics.functional.image import structural_similarity_index_measure

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        result = structural_similarity_index_measure(
            to_unit(x, device), to_unit(y, device), data_range=1.0, reduction="none"
        )
        assert isinstance(result, torch.Tensor)
        return result

    return _chunked(a, b, batch, fn)


def _ms_ssim(
    scales: int, kernel: int, sigma: float, betas: tuple[float, ...], name: str
) -> Callable[..., torch.Tensor]:
    # The coarsest scale (side // 2**(scales-1)) must be wider than the window (torchmetrics' rule).
    factor = 2 ** (scales - 1)
    need = kernel * factor

    def frames(a: FrameArray, b: FrameArray, device: str = "cpu", batch: int = DEFAULT_BATCH) -> torch.Tensor:
        x, _ = check_pair(a, b)
        if min(x.shape[1], x.shape[2]) // factor <= kernel - 1:
            raise InvalidInputError(
                f"{name}: frames of {x.shape[2]}x{x.shape[1]}; allowed: at least {need} pixels on the short side"
                + (" (use ms_ssim3 for small frames)" if name == "ms_ssim" else "")
            )

        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

        def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return multiscale_structural_similarity_index_measure(
                to_unit(x, device),
                to_unit(y, device),
                kernel_size=kernel,
                sigma=sigma,
                betas=betas,
                data_range=1.0,
                reduction="none",
            )

        return _chunked(a, b, batch, fn)

    frames.__doc__ = f"{name} per frame ({scales} scales, window {kernel}, σ {sigma}); 1 for identical frames."
    return frames


ms_ssim_frames = _ms_ssim(5, 11, 1.5, MS_SSIM_BETAS, "ms_ssim")
ms_ssim3_frames = _ms_ssim(3, 7, 1.0, _MS_SSIM3_BETAS, "ms_ssim3")


def lpips_frames(
    a: FrameArray, b: FrameArray, variant: str = "alex", device: str = "cpu", batch: int = DEFAULT_BATCH
) -> torch.Tensor:
    """LPIPS per frame (0 for identical frames; lower is better). Frames are mapped to [-1, 1]."""
    module, _ = load_lpips(variant, device)
    return _chunked(a, b, batch, lambda x, y: module(to_signed(x, device), to_signed(y, device)))


def dists_frames(a: FrameArray, b: FrameArray, device: str = "cpu", batch: int = DEFAULT_BATCH) -> torch.Tensor:
    """DISTS per frame (0 for identical frames; lower is better). Frames are mapped to [0, 1]."""
    module, _ = load_dists(device)
    return _chunked(a, b, batch, lambda x, y: module(to_unit(x, device), to_unit(y, device)))


def _check_latents(x: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != reference.shape:
        raise InvalidInputError(
            f"latents: got shapes {tuple(x.shape)} and {tuple(reference.shape)}; allowed: equal shapes"
        )
    a = x.detach().to("cpu", torch.float64).reshape(-1)
    b = reference.detach().to("cpu", torch.float64).reshape(-1)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InvalidInputError("latents: got non-finite values; allowed: finite latents")
    return a, b


def latent_relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    """‖x − reference‖₂ / ‖reference‖₂ in float64 (0 for identical latents; lower is better)."""
    a, b = _check_latents(x, reference)
    norm = float(b.norm())
    if norm == 0.0:
        raise InvalidInputError("latents: the reference latent is all zeros; allowed: a non-zero reference")
    return float((a - b).norm()) / norm


def latent_cosine(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine similarity of the flattened latents in float64 (1 for identical; higher is better)."""
    a, b = _check_latents(x, reference)
    norms = float(a.norm()) * float(b.norm())
    if norms == 0.0:
        raise InvalidInputError("latents: a latent is all zeros; allowed: non-zero latents for the cosine")
    return max(-1.0, min(1.0, float(a @ b) / norms))
