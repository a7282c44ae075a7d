"""Trajectory fingerprints: where a trajectory leaves the executor's.

The record holds, per denoising step, a Johnson–Lindenstrauss projection of the latent after that
step (``record.fingerprints.values[i]``: after step ``i + 1``; the projection is
:func:`ditproof.randomness.jl_projection` of the generation seed). A projection to k dimensions
keeps distances up to a random factor near 1, so the relative distance of two fingerprints
estimates the relative L2 distance of the two latents without storing them.

Two uses:

* :func:`first_divergent_step` compares the record's fingerprints with those of a regeneration
  (whole, or a segment resumed from a checkpoint) and names the first step beyond a tolerance:
  the step where an invalid trajectory went wrong;
* :func:`fingerprint_commitments` checks, without running the model, that the record's
  fingerprints at its checkpoint steps are the projections of its checkpoint latents (the two
  must tell the same story).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ditproof.errors import InvalidInputError
from ditproof.protocol.record import InferenceRecord
from ditproof.randomness import JL_DERIVATION, jl_projection, jl_seed
from ditproof.validation.policy import ThresholdPolicy

DEFAULT_FINGERPRINT_TOLERANCE = 1e-3
"""Relative fingerprint distance beyond which a step counts as diverged when no latent threshold
is in force. An honest regeneration in the executor's runtime class is bitwise equal (distance 0);
benign deviations measured on the tiny model stay below 1e-6 (docs/validation.md)."""

COMMITMENT_TOLERANCE = 1e-5
"""Relative distance allowed between a recorded fingerprint and the projection of the recorded
latent: both are the same float64 product rounded to float32, so only a last-bit difference of
another CPU's matrix product is expected."""


@dataclass(frozen=True)
class Divergence:
    """The first step (steps done, 1-based) whose fingerprints differ by more than ``tolerance``."""

    step: int
    distance: float
    tolerance: float

    def describe(self) -> str:
        """``"the trajectory fingerprints first diverge after step 5 (relative distance 0.12 > 0.001)"``."""
        if math.isinf(self.distance):
            how = "missing or not comparable"
        else:
            how = f"relative distance {self.distance:.3g} > tolerance {self.tolerance:.3g}"
        return f"the trajectory fingerprints first diverge after step {self.step} ({how})"


def fingerprint_distance(recorded: Sequence[float], regenerated: Sequence[float]) -> float:
    """‖recorded − regenerated‖ / ‖regenerated‖ in float64; ``inf`` when not comparable.

    Not comparable: different lengths, or a non-finite value. Two zero vectors are at distance 0.
    """
    if len(recorded) != len(regenerated):
        return math.inf
    a = torch.tensor(list(recorded), dtype=torch.float64)
    b = torch.tensor(list(regenerated), dtype=torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    diff, norm = float((a - b).norm()), float(b.norm())
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / norm


def _check_tolerance(tolerance: float) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0.0):
        raise InvalidInputError(f"fingerprint tolerance: got {tolerance!r}; allowed: a finite number >= 0")


def first_divergent_step(
    recorded: Sequence[Sequence[float]],
    regenerated: Sequence[Sequence[float]],
    tolerance: float,
    first_step: int = 1,
) -> Divergence | None:
    """The first step where the record's fingerprints leave a regeneration's, or None.

    Args:
        recorded: the record's fingerprints, all steps (``values[i]``: after step ``i + 1``).
        regenerated: fingerprints of a regeneration for steps ``first_step``, ``first_step + 1``,
            … (a whole run: ``first_step=1``; a segment resumed after ``k`` steps: ``k + 1``).
        tolerance: largest relative distance (:func:`fingerprint_distance`) that still agrees.
        first_step: the step of ``regenerated[0]``.

    Returns:
        The first diverging step among those regenerated; a step the record lacks diverges.

    Raises:
        InvalidInputError: a negative or non-finite tolerance, or ``first_step`` below 1.
    """
    _check_tolerance(tolerance)
    if first_step < 1:
        raise InvalidInputError(f"first_step: got {first_step}; allowed: 1 or more (steps done)")
    for offset, values in enumerate(regenerated):
        step = first_step + offset
        distance = fingerprint_distance(recorded[step - 1], values) if step <= len(recorded) else math.inf
        if distance > tolerance:
            return Divergence(step, distance, tolerance)
    return None


def fingerprint_tolerance(policy: ThresholdPolicy | None, record: InferenceRecord) -> float:
    """The tolerance for locating a divergence: the segment threshold in force, else the final
    latent's (``latent_rel_l2:value``), else :data:`DEFAULT_FINGERPRINT_TOLERANCE`."""
    if policy is not None:
        thresholds = policy.thresholds_for(record.model.preset, record.model.revision, record.runtime_class)
        for key in ("latent_rel_l2_segment:value", "latent_rel_l2:value"):
            if key in thresholds:
                return max(thresholds[key].value, 0.0)
    return DEFAULT_FINGERPRINT_TOLERANCE


def locate_divergence(
    record: InferenceRecord, regenerated: Sequence[Sequence[float]], tolerance: float, first_step: int = 1
) -> Divergence | None:
    """:func:`first_divergent_step` against the record's fingerprints (None when it has none)."""
    if record.fingerprints is None or not regenerated:
        return None
    return first_divergent_step(record.fingerprints.values, regenerated, tolerance, first_step)


def fingerprint_commitments(record: InferenceRecord, latents: dict[int, torch.Tensor]) -> list[str]:
    """Problems with the record's fingerprints, checked without running the model.

    The record must hold one fingerprint per denoising step, of its stated dimension and projection
    seed, and at each checkpoint step (``latents``: step → the checkpoint's latent, step 0 skipped)
    the fingerprint must be the projection of that latent (within :data:`COMMITMENT_TOLERANCE`).

    Returns:
        One sentence per problem (empty: consistent, or no fingerprints in the record).
    """
    prints = record.fingerprints
    if prints is None:
        return []
    steps = record.request.num_inference_steps
    if prints.derivation != JL_DERIVATION or prints.projection_seed != jl_seed(record.seed):
        return [
            f"fingerprints derivation {prints.derivation!r} / projection seed {prints.projection_seed}; "
            f"allowed: {JL_DERIVATION!r} / {jl_seed(record.seed)} (from the record's seed)"
        ]
    if len(prints.values) != steps or any(len(v) != prints.dim for v in prints.values):
        return [
            f"fingerprints: {len(prints.values)} step(s) of {sorted({len(v) for v in prints.values})} value(s); "
            f"allowed: {steps} steps (the request's) of {prints.dim} values"
        ]
    problems = []
    projection: torch.Tensor | None = None
    for step, latent in sorted(latents.items()):
        if step < 1:
            continue
        flat = latent.detach().to("cpu", torch.float64).reshape(-1)
        if projection is None:
            # Drawn as the executor's capture draws it (ditproof.generation.trajectory).
            projection = jl_projection(record.seed, flat.numel(), prints.dim).to(torch.float64)
        expected = [float(v) for v in (projection @ flat).to(torch.float32)]
        distance = fingerprint_distance(prints.values[step - 1], expected)
        if distance > COMMITMENT_TOLERANCE:
            problems.append(
                f"the fingerprint after step {step} is not the projection of the checkpoint latent there "
                f"(relative distance {distance:.3g})"
            )
    return problems
