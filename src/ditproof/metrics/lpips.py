"""LPIPS (Zhang et al., 2018, "The Unreasonable Effectiveness of Deep Features"), version 0.1.

Written here from the paper and the facts of the reference implementation
(richzhang/PerceptualSimilarity, ``lpips`` 0.1.4: ``lpips/lpips.py``), not copied:

1. inputs in **[-1, 1]**, shifted and scaled per channel by the "scaling layer" constants
   shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450);
2. features after five ReLUs of the backbone (AlexNet: relu1..relu5; VGG16: relu1_2, relu2_2,
   relu3_3, relu4_3, relu5_3);
3. each feature map unit-normalized over channels (``f / (‖f‖₂ + 1e-10)``);
4. squared difference, a learned non-negative 1×1 convolution to one channel ("lin" layers,
   file keys ``lin{k}.model.1.weight`` of shape (1, C, 1, 1)), spatial mean;
5. sum over the five layers. 0 for identical images; larger is more different.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditproof.errors import InvalidInputError
from ditproof.metrics.backbones import load_features
from ditproof.metrics.weights import load_tensors, locate_backbone, locate_head

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

VARIANTS = {
    # variant: (backbone, indices of the tapped ReLUs in ``features``, their channel counts)
    "alex": ("alexnet", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": ("vgg16", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}


def lin_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the learned 1×1 weights of LPIPS ``variant`` (``alex`` or ``vgg``)."""
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(VARIANTS[variant][2])}


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)


class LPIPS(nn.Module):
    """LPIPS distance between two batches of images in [-1, 1] (no learned parameters here)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, variant: str, features: nn.Sequential, lins: list[torch.Tensor]):
        super().__init__()
        self.variant = variant
        self.taps = VARIANTS[variant][1]
        # Only the layers up to the last tap are needed.
        self.features = nn.Sequential(*list(features)[: self.taps[-1] + 1])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        for k, weight in enumerate(lins):
            self.register_buffer(f"lin{k}", weight)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.taps:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances ``(N,)`` between images ``x`` and ``y`` of shape ``(N, 3, H, W)`` in [-1, 1]."""
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k, (fx, fy) in enumerate(zip(self._taps(x), self._taps(y), strict=True)):
            diff = (_unit(fx) - _unit(fy)).square()
            total = total + F.conv2d(diff, getattr(self, f"lin{k}")).mean(dim=(1, 2, 3))
        return total


_CACHE: dict[tuple[str, str, str, str], LPIPS] = {}


def load_lpips(variant: str, device: str | torch.device = "cpu") -> tuple[LPIPS, dict[str, str]]:
    """The LPIPS network of ``variant`` (``alex`` or ``vgg``) with its weights, cached per file hash.

    Returns:
        The module (eval mode) and the sha256 of the weight files used (role → sha256).

    Raises:
        InvalidInputError: unknown variant.
        MetricWeightsMissingError / MetricWeightsInvalidError: see ``ditproof.metrics.weights``.
    """
    if variant not in VARIANTS:
        raise InvalidInputError(f"lpips variant: got {variant!r}; allowed: {', '.join(VARIANTS)}")
    backbone = VARIANTS[variant][0]
    head_file = locate_head(f"lpips_{variant}")
    backbone_file = locate_backbone(backbone)
    key = (variant, str(device), backbone_file.sha256, head_file.sha256)
    if key not in _CACHE:
        features, _ = load_features(backbone)
        tensors = load_tensors(head_file, lin_shapes(variant))
        lins = [tensors[name] for name in lin_shapes(variant)]
        if len(_CACHE) >= 4:  # a few networks at most: VGG16 alone is 59 MB
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = LPIPS(variant, features, lins).to(device).eval()
    return _CACHE[key], {backbone: backbone_file.sha256, f"lpips_{variant}": head_file.sha256}


def lpips_distance(x: torch.Tensor, y: torch.Tensor, variant: str = "alex") -> torch.Tensor:
    """LPIPS between float images ``(N, 3, H, W)`` in **[-1, 1]** (refused outside); shape ``(N,)``."""
    for name, t in (("x", x), ("y", y)):
        if not t.is_floating_point() or t.ndim != 4 or t.shape[1] != 3:
            raise InvalidInputError(f"lpips {name}: got {t.dtype} {tuple(t.shape)}; allowed: float (N, 3, H, W)")
        low, high = float(t.min()), float(t.max())
        if low < -1.0 - 1e-6 or high > 1.0 + 1e-6:
            raise InvalidInputError(f"lpips {name}: values in [{low:.4g}, {high:.4g}]; allowed: [-1, 1]")
    module, _ = load_lpips(variant, x.device)
    with torch.inference_mode():
        return module(x.to(torch.float32), y.to(torch.float32))
