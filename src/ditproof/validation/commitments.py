"""What a record commits to along its trajectory, checked from the record (and the model's switch).

A record commits, by hash, to the latents at the steps its checkpoint schedule names for its step
count and the model's expert switch (:class:`ditproof.protocol.options.CheckpointSchedule`), at the
switch itself (``pre_switch``) and at its extra steps. Here: whether the record holds them all
(:func:`schedule_problems`, :func:`switch_problems`), how its segments split between the expert
phases (:func:`record_switch`, :func:`phase_counts`), and which of its commitments a regeneration
in its own class contradicts (:func:`commitment_mismatches`).
"""

from __future__ import annotations

import torch

from ditproof.hashing import sha256_tensor
from ditproof.protocol.record import InferenceRecord


def schedule_problems(record: InferenceRecord, switch: int | None) -> list[str]:
    """Steps the record's capture options commit to (its checkpoint schedule for its step count and
    the expert switch ``switch``, the switch itself, its extra steps) without a checkpoint there."""
    steps = record.request.num_inference_steps
    promised = record.options.capture.committed_steps(steps, switch)
    held = {c.step for c in record.checkpoints}
    absent = [step for step in promised if step not in held]
    if not absent:
        return []
    schedule = record.options.capture.schedule
    rule = f"schedule {schedule.rule} with {schedule.segments} segments" if schedule else "no schedule"
    return [
        f"checkpoints: none at step(s) {absent}; allowed: a checkpoint at every step the record's capture options "
        f"commit to ({rule}, {steps} steps, expert switch {switch}: {list(promised)})"
    ]


def switch_problems(record: InferenceRecord, switch: int | None) -> list[str]:
    """Where the record's ``pre_switch`` checkpoint is not at the model's expert switch for its
    request (``switch``), or its schedule then lacks steps."""
    steps = record.request.num_inference_steps
    held = [c.step for c in record.checkpoints if c.name == "pre_switch"]
    # As the capture saves it: at the switch whenever the low-noise expert runs some step (at 0
    # when it runs them all); none when the high-noise expert runs every step.
    wanted = [switch] if switch is not None else []
    if held != wanted:
        where = f"at step {switch}" if wanted else "none (one expert runs every step)"
        return [f"checkpoint 'pre_switch': {held or 'absent'}; allowed: {where} (the model's expert switch)"]
    return schedule_problems(record, switch if switch is not None and 0 < switch < steps else None)


def record_switch(record: InferenceRecord) -> int | None:
    """The record's expert switch: its ``pre_switch`` checkpoint's step (None: one phase). The
    preflight has checked that it is the model's."""
    steps = [c.step for c in record.checkpoints if c.name == "pre_switch"]
    return steps[0] if steps else None


def phase_counts(segment_ends: list[int], switch: int | None) -> list[int]:
    """Segments per expert phase (high-noise, low-noise), from their end steps: a segment that ends
    at or before the switch is the high-noise expert's."""
    if switch is None:
        return [len(segment_ends)]
    high = sum(1 for end in segment_ends if end <= switch)
    return [high, len(segment_ends) - high]


def commitment_mismatches(record: InferenceRecord, latents: dict[str, tuple[int, torch.Tensor]]) -> list[str]:
    """The record's committed checkpoints whose latent is not the regeneration's at their step
    (``latents``: the regeneration's capture, name → (step, latent)), as ``name (step)``."""
    hashes = {step: sha256_tensor(tensor) for step, tensor in latents.values()}
    return [f"{c.name} ({c.step})" for c in record.checkpoints if hashes.get(c.step) != c.tensor_sha256]
