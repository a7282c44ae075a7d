"""Seeded weights for the random-weight presets.

Each parameter gets its own generator seeded by :func:`ditproof.randomness.parameter_seed` of
the preset seed and the parameter's name, so a weight does not depend on construction order:

- norm gains (``gamma``, or 1-D ``weight`` of a module named ``norm*``): ones;
- biases: zeros;
- tensors of 2 or more dimensions: N(0, 1/fan_in), fan_in = numel / shape[0];
- other 1-D parameters: N(0, 0.02²).

On the CPU the draw is :func:`ditproof.randomness.cpu_normal` (the same on every CPU). On a GPU
it is a CUDA generator, fast enough for 14B parameters; its mapping may depend on the GPU (CUDA's
Philox mapping depends on the SM count for large tensors), so a GPU-built preset's revision is the
hash of the weights it drew (equal on two cards exactly when the weights are).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ditproof.randomness import cpu_normal, parameter_seed

WEIGHT_INIT = "ditproof-weights-v1"


def _is_norm_gain(name: str, param: torch.Tensor) -> bool:
    parts = name.split(".")
    if parts[-1] == "gamma":
        return True
    return parts[-1] == "weight" and param.dim() == 1 and any(p.startswith("norm") or "norm" in p for p in parts[:-1])


@torch.no_grad()
def fill_seeded(module: nn.Module, seed: int) -> None:
    """Overwrites every parameter of ``module`` in place with its seeded value (see module doc)."""
    for name, param in module.named_parameters():
        if _is_norm_gain(name, param):
            param.fill_(1.0)
            continue
        if name.split(".")[-1] == "bias":
            param.zero_()
            continue
        std = 1.0 / math.sqrt(param.numel() // param.shape[0]) if param.dim() >= 2 else 0.02
        pseed = parameter_seed(seed, name)
        if param.device.type == "cpu":
            param.copy_(cpu_normal(pseed, param.shape) * std)
        else:
            generator = torch.Generator(device=param.device).manual_seed(pseed)
            values = torch.randn(param.shape, generator=generator, device=param.device, dtype=torch.float32)
            param.copy_(values.mul_(std))
            del values


def cast_keeping_fp32(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Casts floating parameters to ``dtype``, except the modules the class keeps in float32.

    The same rule as diffusers' ``from_pretrained(torch_dtype=...)``: a parameter stays float32
    when a part of its dotted name is in the class's ``_keep_in_fp32_modules``.
    """
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    with torch.no_grad():
        for name, param in module.named_parameters():
            wanted = torch.float32 if keep.intersection(name.split(".")) else dtype
            if param.is_floating_point() and param.dtype != wanted:
                param.data = param.data.to(wanted)
