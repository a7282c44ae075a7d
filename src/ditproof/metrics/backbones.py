"""VGG16 and AlexNet feature stacks in plain PyTorch, loading torchvision's checkpoint files.

Why not torchvision: with the pinned torch 2.13 there is no CPU torchvision build for these
machines (docs/metrics.md), and LPIPS and DISTS need only the convolutional ``features`` part of two
classic networks. The stacks below are laid out so that their parameter names are torchvision's
(``features.N.weight`` / ``features.N.bias``, N the index in ``features``): the same checkpoint
files load unchanged. The classifier part of those files is ignored.

Layouts (facts of the published architectures, as torchvision numbers them):

* VGG16 (configuration "D"): 13 3×3 convolutions (padding 1) with ReLU, max pooling 2×2 after
  convolutions 2, 4, 7, 10 and 13; channels 64, 64, 128, 128, 256×3, 512×3, 512×3.
* AlexNet (torchvision's single-tower variant): conv 11×11 stride 4 padding 2 (64), max pool 3/2,
  conv 5×5 padding 2 (192), max pool 3/2, convs 3×3 padding 1 (384, 256, 256), max pool 3/2.
"""

from __future__ import annotations

import torch
from torch import nn

from ditproof.metrics.weights import load_tensors, locate_backbone

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

VGG16_POOL_INDICES = (4, 9, 16, 23, 30)
"""Indices of the max-pooling layers in VGG16's ``features``."""


def vgg16_features() -> nn.Sequential:
    """VGG16's ``features`` (31 modules, torchvision's indices), randomly initialized."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """AlexNet's ``features`` (13 modules, torchvision's indices), randomly initialized."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


_BUILDERS = {"vgg16": vgg16_features, "alexnet": alexnet_features}


def feature_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The parameter names (``N.weight``, ``N.bias``) and shapes of backbone ``name``'s features."""
    with torch.device("meta"):  # shapes only: no memory, no random initialization
        module = _BUILDERS[name]()
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def load_features(name: str) -> tuple[nn.Sequential, str]:
    """Builds backbone ``name`` (``vgg16`` or ``alexnet``) and loads torchvision's weights into it.

    Returns:
        The feature stack in eval mode without gradients, and the sha256 of the weight file.

    Raises:
        MetricWeightsMissingError: the checkpoint file is not in the torch hub cache.
        MetricWeightsInvalidError: the file lacks a ``features.*`` tensor or has a wrong shape.
    """
    file = locate_backbone(name)
    tensors = load_tensors(file, feature_shapes(name), prefix="features.")
    with torch.device("meta"):
        features = _BUILDERS[name]()
    features.load_state_dict(tensors, strict=True, assign=True)
    features.eval().requires_grad_(False)
    return features, file.sha256
