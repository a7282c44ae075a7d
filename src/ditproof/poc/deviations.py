"""Simulated nodes for calibration and tests: honest runtimes that round differently, and cheats.

Cheats run the same PoC code with something taken away: one expert only, perturbed or FP8
weights, fewer blocks. Each is a context manager or a :class:`~ditproof.poc.compute.PocModel`
view over the loaded model, restoring the model on exit, so a GPU holding the 14B experts
needs no second copy: a weight deviation is swapped in per ``nn.Linear`` just for its forward (per
block for the linear layers a fused kernel reads directly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ditproof.poc.compute import PocModel
from ditproof.randomness import parameter_seed

WeightTransform = Callable[[str, torch.Tensor], torch.Tensor]
"""``(qualified name, weight) → the weight to compute with``; must give the same result each call."""


def high_noise_only(model: PocModel) -> PocModel:
    """A node that loaded only the high-noise expert and runs it for every nonce."""
    return replace(model, experts=(model.experts[0], model.experts[0]))


def _linears(model: PocModel) -> Iterator[tuple[str, nn.Linear]]:
    seen: set[int] = set()
    for expert_index, expert in enumerate(model.experts):
        if id(expert) in seen:
            continue
        seen.add(id(expert))
        for name, module in expert.named_modules():
            if isinstance(module, nn.Linear):
                yield f"expert{expert_index}.{name}", module


@contextmanager
def swapped_weights(model: PocModel, transform: WeightTransform) -> Iterator[None]:
    """Every ``nn.Linear`` of the experts computes with ``transform(name, weight)`` inside the block.

    The transformed weight exists only while it is used: a pre-hook swaps it in and a hook swaps
    the original back, so the extra memory is a weight matrix (or one block's) at a time. A linear
    layer whose weight a fused step reads without calling it (``fuse_elementwise``: the GELU
    projections, :func:`~ditproof.kernels.fused.bypassed_linears`) never runs its own hooks: its
    weight is swapped for the whole forward of the block that holds it instead.
    """
    from ditproof.kernels.fused import bypassed_linears

    experts = {id(e): (i, e) for i, e in reversed(list(enumerate(model.experts)))}  # first index per expert
    fused = {id(e.get_submodule(name)) for _, e in experts.values() for name in bypassed_linears(e)}
    handles = []
    saved: dict[int, torch.Tensor] = {}

    def swap_in(module: nn.Linear, qualified: str) -> None:
        saved[id(module)] = module.weight.data
        module.weight.data = transform(qualified, module.weight.data)

    def swap_back(module: nn.Linear) -> None:
        module.weight.data = saved.pop(id(module))

    try:
        for name, module in _linears(model):
            if id(module) in fused:
                continue  # swapped for its block's forward, below

            def pre(mod: nn.Linear, args: object, qualified: str = name) -> None:
                swap_in(mod, qualified)

            def post(mod: nn.Linear, args: object, output: object) -> None:
                swap_back(mod)

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        for index, expert in experts.values():
            for number, block in enumerate(expert.blocks if fused else ()):
                members = [
                    (f"expert{index}.blocks.{number}.{name}", m)
                    for name, m in block.named_modules()
                    if id(m) in fused and isinstance(m, nn.Linear)
                ]
                if not members:
                    continue

                def block_pre(mod: nn.Module, args: object, inner: list[tuple[str, nn.Linear]] = members) -> None:
                    for qualified, linear in inner:
                        swap_in(linear, qualified)

                def block_post(
                    mod: nn.Module, args: object, output: object, inner: list[tuple[str, nn.Linear]] = members
                ) -> None:
                    for _, linear in inner:
                        swap_back(linear)

                handles.append(block.register_forward_pre_hook(block_pre))
                handles.append(block.register_forward_hook(block_post))
        yield
    finally:
        for handle in handles:
            handle.remove()
        if saved:
            raise RuntimeError(f"{len(saved)} weights were left swapped after a failed forward")


def perturb_transform(fraction: float = 0.01, seed: int = 0) -> WeightTransform:
    """Adds N(0, std(w)²) noise to a seeded ``fraction`` of each weight's elements.

    The mask and noise come from a generator on the weight's device seeded by
    ``parameter_seed(seed, name)``: the same each forward (a simulation, not a proof input).
    """

    def transform(name: str, weight: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=weight.device).manual_seed(parameter_seed(seed, name))
        values = weight.float()
        mask = torch.rand(values.shape, generator=generator, device=weight.device) < fraction
        noise = torch.randn(values.shape, generator=generator, device=weight.device) * values.std()
        return (values + mask * noise).to(weight.dtype)

    return transform


def fp8_transform() -> WeightTransform:
    """The FP8 (e4m3) round trip of a weight: ``w.to(float8_e4m3fn).to(w.dtype)``."""

    def transform(name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.to(torch.float8_e4m3fn).to(weight.dtype)

    return transform


@contextmanager
def fewer_layers(model: PocModel, skip: int) -> Iterator[None]:
    """Both experts run without their last ``skip`` blocks (computing less, as a cheat would)."""
    originals: list[tuple[Any, nn.ModuleList]] = []
    try:
        for expert in {id(e): e for e in model.experts}.values():
            blocks = expert.blocks
            if not 0 < skip < len(blocks):
                raise ValueError(
                    f"skip: got {skip}; allowed: 1 to {len(blocks) - 1} (the expert has {len(blocks)} blocks)"
                )
            originals.append((expert, blocks))
            expert.blocks = nn.ModuleList(list(blocks)[: len(blocks) - skip])
        yield
    finally:
        for expert, blocks in originals:
            expert.blocks = blocks
