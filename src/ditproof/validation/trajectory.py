"""The trajectory of a cross-class regeneration against the executor's commitments.

A validator of another runtime class cannot expect equal bytes, and the end of the trajectory
hides the cheap deviations: the low-noise phase multiplies a benign difference about ninefold
but a deviation confined to it (a step cache after the switch, CFG off for the last steps) only
about twofold, so the final latent and the video barely tell them apart. The trajectory does:
at the committed steps, and above all at ``pre_switch`` (the latent entering the low-noise
expert), an honest regeneration stays in a narrow band around the record and a deviation leaves
it where it starts. So, after a full regeneration in another class:

* the record's per-step JL fingerprints are compared with the regeneration's at **every** step
  (``fingerprint_rel_l2``: the projections' relative distance, an estimate of the latents'
  relative L2 that needs no file);
* each committed checkpoint whose file the executor handed over is compared with the
  regeneration's latent at that step (``latent_rel_l2_checkpoint``; the file must be the one the
  record's hash names);
* each is held against the threshold in force at its position on the trajectory (its expert phase
  and the fraction of it done: :meth:`ThresholdPolicy.trajectory_threshold`). The first step
  beyond its threshold is where the trajectory left the honest band: the verdict names it.

Measurements only here; :func:`ditproof.validation.validate.validate` decides with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from ditproof.errors import IntegrityError
from ditproof.hashing import sha256_bytes
from ditproof.protocol.record import CheckpointRef, InferenceRecord
from ditproof.protocol.verdict import TrajectoryPoint
from ditproof.validation.fingerprints import fingerprint_distance
from ditproof.validation.policy import Threshold, ThresholdPolicy

Phase = Literal["high-noise", "low-noise"]
FINGERPRINT_METRIC = "fingerprint_rel_l2"
CHECKPOINT_METRIC = "latent_rel_l2_checkpoint"


def step_position(step: int, total: int, switch: int | None) -> tuple[Phase, float]:
    """Where the latent after ``step`` of ``total`` steps lies: its expert phase and the fraction of
    that phase done. The high-noise phase is steps 1 to ``switch`` (its last latent is
    ``pre_switch``), the low-noise phase the rest; with one phase (``switch`` None, or 0), the
    fraction is of the whole run."""
    if switch is None or not 0 < switch < total:
        return ("high-noise" if switch is None else "low-noise"), step / total
    if step <= switch:
        return "high-noise", step / switch
    return "low-noise", (step - switch) / (total - switch)


def describe_position(step: int, total: int, switch: int | None) -> str:
    """``"low-noise 0.071"``."""
    phase, fraction = step_position(step, total, switch)
    return f"{phase} {fraction:.3g}"


def relative_l2(executor: torch.Tensor, reference: torch.Tensor) -> float | None:
    """‖executor − reference‖ / ‖reference‖ in float64; None when not measurable (shape, non-finite)."""
    if executor.shape != reference.shape:
        return None
    a = executor.detach().to("cpu", torch.float64).reshape(-1)
    b = reference.detach().to("cpu", torch.float64).reshape(-1)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return None
    diff, norm = float((a - b).norm()), float(b.norm())
    if norm == 0.0:
        return 0.0 if diff == 0.0 else None
    return diff / norm


@dataclass
class Departure:
    """The first step beyond its threshold, and why."""

    step: int
    reason: str


@dataclass
class TrajectoryOutcome:
    """The measured trajectory: committed points, the departure (None: inside the band), scores."""

    points: list[TrajectoryPoint]
    departure: Departure | None
    scores: dict[str, float]
    decisive: bool
    notes: list[str] = field(default_factory=list)

    def detail(self) -> str:
        """One line for the verdict's ``trajectory`` check."""
        worst = ", ".join(f"worst {k} {v:.3g}" for k, v in self.scores.items())
        head = self.departure.reason if self.departure else f"{len(self.points)} committed step(s) within thresholds"
        if not self.decisive:
            head = "measured only: no trajectory threshold in force"
        return "; ".join(x for x in (head, worst, *self.notes) if x)


def _executor_latent(ref_file: str, sha256: str, artifacts_dir: Path | None) -> torch.Tensor | None:
    """The executor's checkpoint latent (None when its file was not handed over).

    Raises:
        IntegrityError: the file differs from the record's hash or holds no latent.
    """
    if artifacts_dir is None or not (artifacts_dir / ref_file).is_file():
        return None
    data = (artifacts_dir / ref_file).read_bytes()
    if sha256_bytes(data) != sha256:
        raise IntegrityError(f"checkpoint file {ref_file}: sha256 {sha256_bytes(data)}; the record says {sha256}")
    try:
        return load_safetensors(data)["latent"]
    except (SafetensorError, KeyError) as exc:
        raise IntegrityError(f"checkpoint file {ref_file}: not a latent checkpoint ({exc})") from None


def check_trajectory(
    record: InferenceRecord,
    fingerprints: list[list[float]],
    latents: dict[int, torch.Tensor],
    switch: int | None,
    artifacts_dir: Path | None,
    policy: ThresholdPolicy,
) -> TrajectoryOutcome:
    """Measures a regeneration's trajectory against the record's (module docstring).

    Args:
        record: the executor's record (its fingerprints and committed checkpoints).
        fingerprints: the regeneration's per-step fingerprints (``[i]``: after step ``i + 1``).
        latents: the regeneration's latents at the committed steps (step → latent).
        switch: the first low-noise step (the ``pre_switch`` latent's step); None: one phase.
        artifacts_dir: where the executor's checkpoint files are (None, or files absent: the
            fingerprints alone decide).
        policy: the thresholds in force.

    Raises:
        IntegrityError: a checkpoint file that is present but is not the one the record names.
    """
    total = record.request.num_inference_steps
    where = (record.model.preset, record.model.revision, record.runtime_class)

    def threshold(metric: str, step: int) -> Threshold | None:
        return policy.trajectory_threshold(*where, metric, *step_position(step, total, switch))

    decisive = any(policy.has_trajectory_thresholds(*where, m) for m in (FINGERPRINT_METRIC, CHECKPOINT_METRIC))
    recorded = record.fingerprints.values if record.fingerprints is not None else []
    distances: dict[int, float] = {}
    departures: list[Departure] = []
    for step in range(1, total + 1):
        if step > len(fingerprints):
            break
        distance = float("inf")
        if step <= len(recorded):
            distance = fingerprint_distance(recorded[step - 1], fingerprints[step - 1])
        distances[step] = distance
        limit = threshold(FINGERPRINT_METRIC, step)
        if not departures and limit is not None and not limit.passes(distance):
            position = describe_position(step, total, switch)
            departures.append(Departure(step, f"after step {step} ({position}): {limit.describe(distance)}"))
    notes: list[str] = []
    points: list[TrajectoryPoint] = []
    missing = []
    by_step: dict[int, CheckpointRef] = {}
    for ref in record.checkpoints:
        by_step.setdefault(ref.step, ref)
    for step, ref in sorted(by_step.items()):
        if step < 1:
            continue
        latent_distance = None
        executor = _executor_latent(ref.file, ref.sha256, artifacts_dir)
        if executor is None:
            missing.append(ref.name)
        elif step in latents:
            latent_distance = relative_l2(executor, latents[step])
        fp_limit, latent_limit = threshold(FINGERPRINT_METRIC, step), threshold(CHECKPOINT_METRIC, step)
        fp = distances.get(step)
        passed = fp is None or fp_limit is None or fp_limit.passes(fp)
        if executor is not None and latent_limit is not None:
            measured = latent_distance if latent_distance is not None else float("inf")
            if not latent_limit.passes(measured):
                passed = False
                position = describe_position(step, total, switch)
                departures.append(
                    Departure(step, f"at checkpoint {ref.name} ({position}): {latent_limit.describe(measured)}")
                )
        phase, fraction = step_position(step, total, switch)
        points.append(
            TrajectoryPoint(
                step=step,
                name=ref.name,
                phase=phase,
                fraction=fraction,
                fingerprint_rel_l2=fp if fp is not None and fp != float("inf") else None,
                latent_rel_l2=latent_distance,
                fingerprint_threshold=fp_limit.value if fp_limit is not None else None,
                latent_threshold=latent_limit.value if latent_limit is not None else None,
                passed=passed,
            )
        )
    if missing:
        notes.append(f"no file for {len(missing)} checkpoint(s) ({', '.join(missing)}): fingerprints only there")
    scores: dict[str, float] = {}
    finite = [d for d in distances.values() if d != float("inf")]
    if finite:
        scores[f"{FINGERPRINT_METRIC}:value"] = max(finite)
    latent_scores = [p.latent_rel_l2 for p in points if p.latent_rel_l2 is not None]
    if latent_scores:
        scores[f"{CHECKPOINT_METRIC}:value"] = max(latent_scores)
    departure = min(departures, key=lambda d: d.step) if departures and decisive else None
    return TrajectoryOutcome(points, departure, scores, decisive, notes)
