"""DISTS (Ding et al., 2020, "Image Quality Assessment: Unifying Structure and Texture Similarity").

Written here from the paper and the facts of the reference implementation (dingkeyan93/DISTS,
``DISTS_pytorch`` 0.1: ``DISTS_pt.py``), not copied:

1. inputs in **[0, 1]**, normalized with ImageNet's mean (0.485, 0.456, 0.406) and standard
   deviation (0.229, 0.224, 0.225);
2. VGG16's features with each max pooling replaced by an "L2 pooling": the square root of a
   depthwise 3×3 Hanning-weighted mean of the squares (window ``hanning(5)[1:-1]`` = (½, 1, ½),
   outer product, normalized to sum 1; stride 2, padding 1; ``+1e-12`` under the root);
3. six representations: the **un-normalized** input image itself, then relu1_2, relu2_2,
   relu3_3, relu4_3, relu5_3 (3 + 64 + 128 + 256 + 512 + 512 = 1475 channels);
4. per channel, a texture term from the spatial means
   ``(2 μx μy + c1) / (μx² + μy² + c1)`` and a structure term from variances and covariance
   ``(2 σxy + c2) / (σx² + σy² + c2)``, c1 = c2 = 1e-6;
5. weighted by the learned non-negative ``alpha`` (texture) and ``beta`` (structure), both
   (1, 1475, 1, 1), divided by the sum of all weights; DISTS = 1 − the weighted sum.
   0 for identical images; larger is more different.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditproof.errors import InvalidInputError
from ditproof.metrics.backbones import VGG16_POOL_INDICES, load_features
from ditproof.metrics.weights import load_tensors, locate_backbone, locate_head

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
CHANNELS = (3, 64, 128, 256, 512, 512)
_C1 = _C2 = 1e-6


def head_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of DISTS's learned weights."""
    return {"alpha": (1, sum(CHANNELS), 1, 1), "beta": (1, sum(CHANNELS), 1, 1)}


class L2Pool(nn.Module):
    """Hanning-weighted L2 pooling with stride 2 (replaces VGG16's max pooling in DISTS)."""

    kernel: torch.Tensor

    def __init__(self, channels: int):
        super().__init__()
        window = torch.tensor([0.5, 1.0, 0.5])
        kernel = torch.outer(window, window)
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.conv2d(x.square(), self.kernel, stride=2, padding=1, groups=x.shape[1])
        return (pooled + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS distance between two batches of images in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    def __init__(self, features: nn.Sequential, alpha: torch.Tensor, beta: torch.Tensor):
        super().__init__()
        layers = list(features)
        stages = []
        start = 0
        for end in VGG16_POOL_INDICES[:-1]:
            stages.append(nn.Sequential(*layers[start:end]))
            start = end + 1
        stages.append(nn.Sequential(*layers[start : VGG16_POOL_INDICES[-1]]))
        self.stages = nn.ModuleList(stages)
        self.pools = nn.ModuleList(L2Pool(c) for c in CHANNELS[1:-1])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        total = alpha.sum() + beta.sum()
        self.register_buffer("alpha", alpha / total)
        self.register_buffer("beta", beta / total)

    def _representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        h = (x - self.mean) / self.std
        for index, stage in enumerate(self.stages):
            if index:
                h = self.pools[index - 1](h)
            h = stage(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances ``(N,)`` between images ``x`` and ``y`` of shape ``(N, 3, H, W)`` in [0, 1]."""
        alphas = torch.split(self.alpha, list(CHANNELS), dim=1)
        betas = torch.split(self.beta, list(CHANNELS), dim=1)
        similarity = torch.zeros(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)
        for k, (fx, fy) in enumerate(zip(self._representations(x), self._representations(y), strict=True)):
            mx = fx.mean(dim=(2, 3), keepdim=True)
            my = fy.mean(dim=(2, 3), keepdim=True)
            texture = (2 * mx * my + _C1) / (mx.square() + my.square() + _C1)
            vx = (fx - mx).square().mean(dim=(2, 3), keepdim=True)
            vy = (fy - my).square().mean(dim=(2, 3), keepdim=True)
            cov = (fx * fy).mean(dim=(2, 3), keepdim=True) - mx * my
            structure = (2 * cov + _C2) / (vx + vy + _C2)
            similarity = similarity + (alphas[k] * texture).sum(1, keepdim=True)
            similarity = similarity + (betas[k] * structure).sum(1, keepdim=True)
        return 1.0 - similarity.reshape(-1)


_CACHE: dict[tuple[str, str, str], DISTS] = {}


def load_dists(device: str | torch.device = "cpu") -> tuple[DISTS, dict[str, str]]:
    """The DISTS network with its weights, cached per file hash.

    Returns:
        The module (eval mode) and the sha256 of the weight files used (role → sha256).

    Raises:
        MetricWeightsMissingError / MetricWeightsInvalidError: see ``ditproof.metrics.weights``.
    """
    head_file = locate_head("dists")
    backbone_file = locate_backbone("vgg16")
    key = (str(device), backbone_file.sha256, head_file.sha256)
    if key not in _CACHE:
        features, _ = load_features("vgg16")
        head = load_tensors(head_file, head_shapes())
        if len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = DISTS(features, head["alpha"], head["beta"]).to(device).eval()
    return _CACHE[key], {"vgg16": backbone_file.sha256, "dists": head_file.sha256}


def dists_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DISTS between float images ``(N, 3, H, W)`` in **[0, 1]** (refused outside); shape ``(N,)``."""
    for name, t in (("x", x), ("y", y)):
        if not t.is_floating_point() or t.ndim != 4 or t.shape[1] != 3:
            raise InvalidInputError(f"dists {name}: got {t.dtype} {tuple(t.shape)}; allowed: float (N, 3, H, W)")
        low, high = float(t.min()), float(t.max())
        if low < -1e-6 or high > 1.0 + 1e-6:
            raise InvalidInputError(f"dists {name}: values in [{low:.4g}, {high:.4g}]; allowed: [0, 1]")
    module, _ = load_dists(x.device)
    with torch.inference_mode():
        return module(x.to(torch.float32), y.to(torch.float32))
