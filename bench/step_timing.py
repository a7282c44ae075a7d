"""Whole-generation timing shared by the pipeline benches (pricing_validate, perf_pipeline).

A short generation is timed step by step from the step callback (the generation path
synchronizes the device before it) and scaled to a longer run: the short run's own steps plus
each expert's remaining steps at its steady step time (its steps other than the run's very first,
which also pays one-time costs such as drawing the trajectory projection).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Any

from ditproof.generation.generate import generate
from ditproof.pricing.cost import expert_steps
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.request import GenerationRequest

PROMPT = "a red circle moves left on a blue background"
SEED = 1234


def short_request(size: str, steps: int) -> GenerationRequest:
    """The benches' request at ``WxHxF`` with ``steps`` steps."""
    width, height, frames = (int(v) for v in size.split("x"))
    return GenerationRequest(prompt=PROMPT, width=width, height=height, num_frames=frames, num_inference_steps=steps)


def timed_generation(
    model: Any, options: RuntimeOptions, request: GenerationRequest, on_frames: Any = None
) -> tuple[Any, list[float]]:
    """One generation; returns the result and each step's seconds (``on_frames``: as :func:`generate`'s).

    The model's kept prompt embeddings are dropped first, so the text-encode phase is measured
    as a new request's (the benches warm up with the same prompt).
    """
    model.prompts.clear()
    marks: list[float] = []

    def mark(done: int, total: int) -> None:
        marks.append(time.perf_counter())

    result = generate(request, SEED, model, options, on_step=mark, on_frames=on_frames)
    denoise = result.timings["high_noise_s"] + result.timings["low_noise_s"]
    later = [b - a for a, b in itertools.pairwise(marks)]
    return result, [denoise - sum(later), *later]


@dataclass(frozen=True)
class Scaled:
    """A short run scaled to ``target`` steps."""

    expert_steps_short: tuple[int, int]
    expert_steps_target: tuple[int, int]
    steady_step_s: dict[str, float]
    borrowed: list[str]  # experts without a steady step of their own (the other's rate is used)
    denoise_short_s: float
    denoise_target_s: float


def scale_to_steps(step_s: list[float], request: GenerationRequest, target: int) -> Scaled:
    """Scales the step times of a short run of ``request`` to ``target`` steps (module docstring)."""
    high, low = expert_steps(request.num_inference_steps, request.boundary_ratio, request.flow_shift)
    kinds = ["high"] * high + ["low"] * low
    rate: dict[str, float] = {}
    borrowed = []
    for kind, other in (("high", "low"), ("low", "high")):
        own = [t for i, (t, k) in enumerate(zip(step_s, kinds, strict=True)) if k == kind and i > 0]
        if not own:
            borrowed.append(kind)  # same shape as the other expert in these models: use its step time
            own = [t for i, (t, k) in enumerate(zip(step_s, kinds, strict=True)) if k == other and i > 0]
        rate[kind] = statistics.median(own)
    high_t, low_t = expert_steps(target, request.boundary_ratio, request.flow_shift)
    short = sum(step_s)
    return Scaled(
        expert_steps_short=(high, low),
        expert_steps_target=(high_t, low_t),
        steady_step_s=rate,
        borrowed=borrowed,
        denoise_short_s=short,
        denoise_target_s=short + rate["high"] * (high_t - high) + rate["low"] * (low_t - low),
    )
