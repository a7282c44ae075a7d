"""The ``auto`` validation mode: the mode that decides best for the classes compared (docs/validation.md,
"Which mode across classes").

After steps 1–3 (:func:`ditproof.validation.preflight.preflight`) the validator knows whether it
regenerates in the executor's runtime class. Then:

- the executor's class: the full regeneration. Bytes decide and it needs only the record and
  the video (the checkpoints mode would be exact too, at the same cost, but needs the files);
- another class, on purpose, with ``latent_rel_l2_segment`` thresholds in force for this pair
  of classes and the executor's checkpoint files at hand: the checkpoints mode. Each segment
  re-run starts from the executor's own checkpoint, so it measures one segment's rounding, while a
  regeneration from the noise carries every step's rounding forward; at the same cost (one
  regeneration) it separates the cheats that the full mode's final comparison cannot;
- another class otherwise: the full regeneration, and the ``mode`` check says what was missing.

The choice is a check of the verdict (``mode``, always passed) and the verdict's ``mode`` is the
mode that ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Unpack

from ditproof.models.registry import LoadedModel
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.verdict import Verdict
from ditproof.validation.checkpoints import SEGMENT_METRIC, rerun_and_decide
from ditproof.validation.compare import ComparisonOptions
from ditproof.validation.policy import ThresholdPolicy
from ditproof.validation.preflight import Preflight, PreflightInputs, preflight
from ditproof.validation.segments import missing_checkpoint_files, structure_problems
from ditproof.validation.validate import regenerate_and_decide

__all__ = ["choose_mode", "validate_auto"]


def choose_mode(
    record: InferenceRecord, pre: Preflight, policy: ThresholdPolicy | None
) -> tuple[Literal["full", "checkpoints"], str]:
    """The mode :func:`validate_auto` runs after ``pre``, and why (module docstring)."""
    if pre.same_class:
        return "full", "the executor's class: the regeneration must match byte for byte"
    where = (record.model.preset, record.model.revision, record.runtime_class)
    if policy is None or not policy.bound_to(pre.local_class).has_trajectory_thresholds(*where, SEGMENT_METRIC):
        return "full", f"another class, and no {SEGMENT_METRIC} thresholds for this pair of classes"
    if structure_problems(record):
        return "full", "another class, and the record's checkpoint list gives no segments"
    missing = missing_checkpoint_files(record, pre.artifacts_dir)
    if missing:
        return "full", (
            f"another class, and {len(missing)} of the executor's {len(record.checkpoints)} checkpoint files "
            f"are not in {pre.artifacts_dir or 'any folder given'} (the checkpoints mode needs them all)"
        )
    return "checkpoints", "another class with segment thresholds for this pair: every segment re-run decides"


def validate_auto(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel,
    device: str | None = None,
    *,
    policy: ThresholdPolicy | None = None,
    comparison: ComparisonOptions | None = None,
    **inputs: Unpack[PreflightInputs],
) -> Verdict:
    """Validates in the mode that suits the classes compared (module docstring); arguments as for
    :func:`ditproof.validation.validate`."""
    pre = preflight(record, video, model, device, **inputs)
    if isinstance(pre, Verdict):
        return pre
    mode, why = choose_mode(record, pre, policy)
    pre.checks.add("mode", True, f"{mode}: {why}")
    if mode == "checkpoints":
        return rerun_and_decide(record, model, pre, policy, comparison)
    return regenerate_and_decide(record, model, pre, policy, comparison)
