"""Prompt-adherence evaluation of a model on held-out prompts, through the one generation path.

Prompts: ``count`` single-object combinations drawn without replacement from the held-out split
(:func:`ditproof.training.grammar.combinations`) by ``numpy.random.default_rng([seed, 0])``.
Seeds: generation ``i`` uses ``derive_seed(f"heldout-{i}", ENTROPY)``, as an executor would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ditproof.errors import InvalidInputError
from ditproof.evaluation.adherence import AdherenceScore, evaluate
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RunOptions
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import derive_seed
from ditproof.training.grammar import SceneSpec, combinations
from ditproof.training.synthetic import render_clips, sample_clip, to_uint8_frames

ENTROPY = "d1" * 32
"""Public entropy of the evaluation seeds (fixed, so every run evaluates the same generations)."""


def heldout_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` held-out captions (see the module docstring)."""
    pool = combinations("heldout")
    if not 1 <= count <= len(pool):
        raise InvalidInputError(f"count: got {count}; allowed: 1 to {len(pool)} held-out prompts")
    rng = np.random.default_rng([seed, 0])
    picks = rng.choice(len(pool), size=count, replace=False)
    return [SceneSpec((pool[i][0],), pool[i][1]).caption() for i in picks]


@dataclass
class Generated:
    """One evaluated generation."""

    prompt: str
    seed: int
    frames: np.ndarray
    score: AdherenceScore
    seconds: float


def run_model(
    model: LoadedModel,
    prompts: list[str],
    request_fields: dict[str, Any],
    options: RunOptions,
    on_done: Callable[[int, Generated], None] | None = None,
) -> list[Generated]:
    """Generates every prompt with ``model`` (via :func:`ditproof.generation.generate.generate`) and scores it."""
    from ditproof.generation.generate import generate

    results = []
    for index, prompt in enumerate(prompts):
        seed = derive_seed(f"heldout-{index}", ENTROPY)
        request = GenerationRequest(prompt=prompt, **request_fields)
        started = time.perf_counter()
        frames = generate(request, seed, model, options).frames
        if frames is None:
            raise RuntimeError(f"generation {index} returned no frames (a segment run); the evaluation needs videos")
        item = Generated(prompt, seed, frames, evaluate(prompt, frames), time.perf_counter() - started)
        results.append(item)
        if on_done is not None:
            on_done(index, item)
    return results


def run_ground_truth(prompts: list[str], width: int, height: int, num_frames: int) -> list[Generated]:
    """The synthetic renderer's clips for the same prompts (what a perfect model would produce)."""
    from ditproof.training.grammar import parse_caption

    results = []
    for index, prompt in enumerate(prompts):
        clip = sample_clip(7, index, "heldout", width, height, num_frames, scene=parse_caption(prompt))
        frames = to_uint8_frames(render_clips([clip])[0])
        results.append(Generated(prompt, index, frames, evaluate(prompt, frames), 0.0))
    return results


def score_record(item: Generated) -> dict[str, Any]:
    """A JSON-ready record of one evaluated generation (without the frames)."""
    return {"prompt": item.prompt, "seed": item.seed, "seconds": round(item.seconds, 3), **asdict(item.score)}
