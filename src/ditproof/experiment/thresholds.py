"""The thresholds file of an analysis, in the validator's format (:mod:`ditproof.validation.policy`).

Frame and final-latent keys give one entry per pair of runtime classes. Each trajectory checkpoint
(``checkpoint_rel_l2:<name>``, and the final latent as the checkpoint ``final``) gives one
``latent_rel_l2_checkpoint`` entry per pair of classes at the checkpoint's **position**: its expert
phase, over a range of the fraction of the phase done that holds the checkpoint and reaches halfway
to the phase's neighbouring checkpoints (the first and last of a phase reach 0 and 1), so every step
of a run of any step count takes the threshold of the nearest checkpoint of its phase
(:func:`position_ranges`). Ranges never cross the expert switch: each phase is its own. Segment
re-runs give ``latent_rel_l2_segment`` entries the same way, at the checkpoint each segment ends at.

**One joint decision per mode.** A validator flags a pair when any position is beyond its entry: a
union of one test per position. Entries that each held their own position at the target FPR would
make that union's FPR many times the target; so where the analysis calibrated the mode's joint
score (``full:max``, else ``trajectory:max``, for the checkpoints; ``checkpoints:max`` for the
segments), a position's entry is that position's in-sample centre (its benign median) plus the
joint threshold times its width (its benign 99th percentile minus the median), and "some position
beyond its entry" is exactly "the joint score beyond its threshold", the decision the analysis
calibrated. The full mode's joint score also holds the final
latent (``latent_rel_l2:value``, beside its checkpoint position) and the frame metric
``psnr:mean``, the flat entries the full-mode validator applies too; their entries come from the
same threshold. With several pools in one pair of classes, each position takes the loosest pool's
limit. Without the joint score, each position holds its own key's threshold.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from ditproof.errors import InvalidInputError
from ditproof.experiment.calibration import PoolCalibration
from ditproof.experiment.findings import (
    CHECKPOINTS_MODE_KEY,
    COMBINED_TRAJECTORY_KEY,
    FINAL_LATENT_KEY,
    FULL_MODE_FRAME_KEY,
    FULL_MODE_KEY,
    Analysis,
    CheckpointPosition,
    KeyResult,
    segment_key,
)
from ditproof.experiment.keys import from_distance
from ditproof.metrics.registry import Direction, metric_spec, parse_score_key, score_key
from ditproof.validation.policy import Phase, Provenance, ThresholdEntry, ThresholdsFile, TrajectoryPosition

CHECKPOINT_METRIC = "latent_rel_l2_checkpoint"
"""The validator's metric of a committed checkpoint against its regeneration (full mode)."""
SEGMENT_METRIC = "latent_rel_l2_segment"
"""The validator's metric of a segment re-run's end against the executor's checkpoint there."""


def git_commit() -> str:
    """The commit of the working tree ditproof runs from, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def thresholds_file(analysis: Analysis, runtime_class: str | None = None) -> ThresholdsFile:
    """The thresholds of an analysis in the validator's format.

    One entry per frame or final-latent key and pair of runtime classes (the validator's, as the
    pool's reference ran, and the executor's): the pool's in-sample threshold (pools of one pair:
    the loosest). Without executor classes in the scores,
    or with ``runtime_class`` given (an fnmatch pattern, e.g. ``cuda-sm90/*``), one entry per key
    for that class (default: the reference's), holding the loosest pool's threshold, so every
    pool's in-sample FPR stays at or below the target. Entries name the model revision, not the
    preset.

    Trajectory checkpoints, where the analysis knows where they lie
    (``analysis.reference_trajectory``): one ``latent_rel_l2_checkpoint`` entry per checkpoint and
    pair of classes at its position, and one ``latent_rel_l2_segment`` entry per segment, each the
    position's centre plus the mode's joint threshold times its width (module docstring; without a
    joint score, the position's own key's threshold). The final latent's and ``psnr:mean``'s entries come from
    the full mode's joint threshold where it holds them. Normalised keys and the joint scores
    themselves (units that differ between pools) get no entry of their own.
    """
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    commit = git_commit()
    calibration = f"ditproof experiment {analysis.experiment} (scores {analysis.scores_sha256[:16]})"
    entries = []
    # The flat final-latent and frame entries join the full mode's joint decision only beside its
    # checkpoint entries (positions known); alone they keep their own thresholds.
    known = analysis.reference_trajectory is not None
    full = _joint(analysis, (FULL_MODE_KEY, COMBINED_TRAJECTORY_KEY)) if known else None
    for result in analysis.keys:
        if result.kind in ("trajectory", "segment") or result.normalised_by is not None or result.summary is None:
            continue  # checkpoints and segments below; normalised and combined keys are the analysis's only
        metric, statistic = parse_score_key(result.key)
        if (
            full is not None
            and result.key in (full.columns or [])
            and result.key in (FINAL_LATENT_KEY, FULL_MODE_FRAME_KEY)
        ):
            entries += _joint_flat_entries(analysis, full, result.key, runtime_class, calibration, date, commit)
            continue
        for (target_class, validator_class), members in _groups(analysis, result, runtime_class).items():
            loosest = max(members, key=lambda c: c.threshold)
            entries.append(
                _entry(
                    analysis,
                    (target_class, validator_class),
                    (metric, statistic, result.direction),
                    loosest.threshold if result.direction == "lower-is-better" else -loosest.threshold,
                    Provenance(
                        calibration=calibration,
                        fpr_target=analysis.fpr_target,
                        date=date,
                        samples=sum(c.pairs for c in members),
                        notes=(
                            f"{_detail(members)}; threshold of pool {loosest.pool} (this key's own: applied beside "
                            f"a mode's joint entries, the verdict's FPR exceeds the target); commit {commit}"
                        )[:2000],
                    ),
                )
            )
    entries += _checkpoint_entries(analysis, runtime_class, calibration, date, commit)
    entries += _checkpoint_entries(analysis, runtime_class, calibration, date, commit, segments=True)
    entries += _exact_segment_entries(analysis, runtime_class, calibration, date, commit)
    return ThresholdsFile(
        version=1,
        provisional=bool(analysis.notes),
        description=(
            f"Calibrated by ditproof experiment {analysis.experiment} for model {analysis.model} "
            f"(revision {analysis.model_revision[:16]}); best key {analysis.best_key}. " + " ".join(analysis.notes)
        )[:4000],
        entries=entries,
    )


def position_ranges(fractions: list[float]) -> list[tuple[float, float]]:
    """Each checkpoint's ``(start, end)`` of the fraction of its phase done, for the checkpoints of
    one phase at ``fractions`` (ascending, distinct): halfway to the neighbours, from 0 for the
    first and to 1 for the last. Neighbouring ranges share their boundary (a step there is as near
    to either), so together they hold every fraction from 0 to 1.

    Raises:
        ValueError: fractions outside [0, 1], or not ascending and distinct.
    """
    if any(not 0.0 <= f <= 1.0 for f in fractions) or any(a >= b for a, b in pairwise(fractions)):
        raise ValueError(f"fractions: got {fractions}; allowed: ascending, distinct, within [0, 1]")
    if not fractions:
        return []
    bounds = [0.0, *((a + b) / 2 for a, b in pairwise(fractions)), 1.0]
    return list(pairwise(bounds))


def _joint(analysis: Analysis, keys: tuple[str, ...]) -> KeyResult | None:
    """The first of ``keys`` the analysis calibrated as a joint score with every pool's widths."""
    for key in keys:
        result = next((r for r in analysis.keys if r.key == key), None)
        if (
            result is not None
            and result.columns
            and result.summary is not None
            and all(p.scales is not None and len(p.scales) == len(result.columns) for p in result.pools)
        ):
            return result
    return None


@dataclass(frozen=True)
class _Limit:
    """A position's limit under a joint score: the pool's centre there plus its joint threshold
    times its width there."""

    value: float
    pool: PoolCalibration
    centre: float
    scale: float


def _limit(joint: KeyResult, columns: list[str], members: list[PoolCalibration]) -> _Limit | None:
    """The loosest pool's limit on a position held by ``columns`` of ``joint`` (several names of one
    latent: their tightest, as the joint maximum over them is); None where no pool has a width
    there (the joint score leaves the position out)."""
    assert joint.columns is not None
    found = []
    for pool in members:
        assert pool.scales is not None
        limits = []
        for column in columns:
            index = joint.columns.index(column)
            width = pool.scales[index]
            if width is None:
                continue
            centre = (pool.centres[index] if pool.centres is not None else None) or 0.0
            limits.append(_Limit(centre + pool.threshold * width, pool, centre, width))
        if limits:
            found.append(min(limits, key=lambda limit: limit.value))
    return max(found, key=lambda limit: limit.value) if found else None


def _joint_note(joint: KeyResult, columns: list[str], limit: _Limit) -> str:
    return (
        f"benign median {limit.centre:.6g} + joint threshold {limit.pool.threshold:.6g} of {joint.key} x width "
        f"{limit.scale:.6g} (benign 99th percentile - median of {' = '.join(columns)}) of pool {limit.pool.pool} = "
        f"{limit.value:.6g}: a pair beyond any of the mode's entries is beyond the joint threshold, the decision "
        f"calibrated (its FPR below)"
    )


def _joint_flat_entries(
    analysis: Analysis,
    joint: KeyResult,
    key: str,
    runtime_class: str | None,
    calibration: str,
    date: str,
    commit: str,
) -> list[ThresholdEntry]:
    """The final latent's or the frame metric's entries from the full mode's joint threshold."""
    metric, statistic = parse_score_key(key)
    direction = metric_spec(metric).direction
    entries = []
    for classes, members in _groups(analysis, joint, runtime_class).items():
        limit = _limit(joint, [key], members)
        if limit is None:
            continue
        note = _joint_note(joint, [key], limit)
        if key != FINAL_LATENT_KEY:
            note += f", as {key} {from_distance(key, limit.value):.6g} (the distance is 10^(-psnr/20))"
        entries.append(
            _entry(
                analysis,
                classes,
                (metric, statistic, direction),
                from_distance(key, limit.value),
                Provenance(
                    calibration=calibration,
                    fpr_target=analysis.fpr_target,
                    date=date,
                    samples=sum(c.pairs for c in members),
                    notes=f"{note}; {_detail(members)}; commit {commit}"[:2000],
                ),
            )
        )
    return entries


def _checkpoint_entries(
    analysis: Analysis,
    runtime_class: str | None,
    calibration: str,
    date: str,
    commit: str,
    segments: bool = False,
) -> list[ThresholdEntry]:
    """One ``latent_rel_l2_checkpoint`` entry per calibrated checkpoint and pair of classes (module
    docstring); with ``segments``, one ``latent_rel_l2_segment`` entry per calibrated segment
    re-run, at the position of the checkpoint it ends at. Each the position's centre plus the
    mode's joint threshold times its width, or without a joint score the position's own key's
    threshold."""
    trajectory = analysis.reference_trajectory
    if trajectory is None:
        return []
    metric, what = (SEGMENT_METRIC, "segment ending at") if segments else (CHECKPOINT_METRIC, "checkpoint")
    joint = _joint(analysis, (CHECKPOINTS_MODE_KEY,) if segments else (FULL_MODE_KEY, COMBINED_TRAJECTORY_KEY))
    results = {r.key: r for r in analysis.keys if r.normalised_by is None and r.summary is not None}
    # Per pair of classes and step: the checkpoints there with a calibrated threshold (two names at
    # one step, e.g. pre_switch and an extra step_NNN, hold the same latent: one entry).
    by_group: dict[tuple[str, str], dict[int, list[tuple[CheckpointPosition, list[PoolCalibration]]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for checkpoint in trajectory.checkpoints:
        column = segment_key(checkpoint.name) if segments else checkpoint.key
        if joint is not None:
            if column not in (joint.columns or []):
                continue
            result = joint
        else:
            own = results.get(column)
            if own is None or own.direction != "lower-is-better":
                continue
            result = own
        for group, members in _groups(analysis, result, runtime_class).items():
            by_group[group][checkpoint.step].append((checkpoint, members))
    if analysis.method.rule == "conformal":
        kind = "out-of-sample calibrated threshold (conformal rule: a new prompt's FPR at most the target on average)"
    else:
        kind = "in-sample threshold (empirical rule: holds in sample only)"
    entries = []
    for (target_class, validator_class), at_step in by_group.items():
        # Each step's value, the pools it comes from and what it is.
        values: dict[int, tuple[float, list[PoolCalibration], str]] = {}
        for step, found in at_step.items():
            members = list(found[0][1]) if joint is not None else [c for _, pools in found for c in pools]
            if joint is not None:
                columns = [segment_key(c.name) if segments else c.key for c, _ in found]
                limit = _limit(joint, columns, members)
                if limit is None:
                    continue
                values[step] = (limit.value, members, f"{_joint_note(joint, columns, limit)}, the joint score's {kind}")
            else:
                loosest = max(members, key=lambda c: c.threshold)
                values[step] = (
                    loosest.threshold,
                    members,
                    f"the {what.split()[0]}'s {kind}; threshold of pool {loosest.pool}",
                )
        placed = _placed({step: at_step[step][0][0] for step in values})
        for step, phase, start, end in placed:
            found = at_step[step]
            value, members, how = values[step]
            checkpoint = found[0][0]
            names = " = ".join(f"{c.name} ({segment_key(c.name) if segments else c.key})" for c, _ in found)
            where = (
                f"{what} {names} at step {step} of {trajectory.steps} (expert switch {trajectory.switch}; "
                f"{phase} {checkpoint.fraction:.4g}), held from {start:.4g} to {end:.4g} of the phase"
            )
            notes = (
                f"{where}: {how}; pools {', '.join(sorted({c.pool for c in members}))}; {_detail(members)}; "
                f"commit {commit}"
            )
            entries.append(
                _entry(
                    analysis,
                    (target_class, validator_class),
                    (metric, "value", "lower-is-better"),
                    value,
                    Provenance(
                        calibration=calibration,
                        fpr_target=analysis.fpr_target,
                        date=date,
                        samples=sum(c.pairs for c in found[0][1]),
                        notes=notes[:2000],
                    ),
                    TrajectoryPosition(phase=phase, start=start, end=end),
                )
            )
    return entries


def _exact_segment_entries(
    analysis: Analysis, runtime_class: str | None, calibration: str, date: str, commit: str
) -> list[ThresholdEntry]:
    """``latent_rel_l2_segment`` entries of value 0 for the pools whose every segment re-run ended
    bit-exact (a thread count that changes only the VAE's sums): for that pair of classes the
    checkpoints modes require exactness, so a segment that differs is a deviation, not a missing
    threshold. At the positions of the segments the analysis calibrated for other pools."""
    trajectory = analysis.reference_trajectory
    calibrated = {r.key for r in analysis.keys if r.kind == "segment" and r.summary is not None}
    if trajectory is None or not calibrated:
        return []
    entries = []
    for pool in analysis.pools:
        if not pool.segments_exact:
            continue
        target_class = runtime_class or pool.executor_runtime_class or analysis.runtime_class
        validator_class = pool.reference_runtime_class or analysis.runtime_class
        at_step: dict[int, CheckpointPosition] = {}
        for checkpoint in trajectory.checkpoints:
            if segment_key(checkpoint.name) in calibrated:
                at_step.setdefault(checkpoint.step, checkpoint)
        for step, phase, start, end in _placed(at_step):
            notes = (
                f"segment ending at step {step} of {trajectory.steps} ({phase} {at_step[step].fraction:.4g}), held "
                f"from {start:.4g} to {end:.4g} of the phase: pool {pool.name}'s {pool.pairs} benign pairs ended "
                f"every segment bit-exact, so this pair of classes requires exactness; commit {commit}"
            )
            entries.append(
                _entry(
                    analysis,
                    (target_class, validator_class),
                    (SEGMENT_METRIC, "value", "lower-is-better"),
                    0.0,
                    Provenance(
                        calibration=calibration,
                        fpr_target=analysis.fpr_target,
                        date=date,
                        samples=pool.pairs,
                        notes=notes[:2000],
                    ),
                    TrajectoryPosition(phase=phase, start=start, end=end),
                )
            )
    return entries


def _placed(at_step: dict[int, CheckpointPosition]) -> list[tuple[int, Phase, float, float]]:
    """``(step, phase, start, end)`` of each step's checkpoint: the range of its phase it holds
    (:func:`position_ranges` over the phase's steps), high-noise steps first."""
    placed: list[tuple[int, Phase, float, float]] = []
    phases: tuple[Phase, ...] = ("high-noise", "low-noise")
    for phase in phases:
        steps = sorted(step for step, checkpoint in at_step.items() if checkpoint.phase == phase)
        ranges = position_ranges([at_step[step].fraction for step in steps])
        placed += [(step, phase, start, end) for step, (start, end) in zip(steps, ranges, strict=True)]
    return placed


def _entry(
    analysis: Analysis,
    classes: tuple[str, str],
    key: tuple[str, str, Direction],
    value: float,
    provenance: Provenance,
    position: TrajectoryPosition | None = None,
) -> ThresholdEntry:
    """One entry of the analysis's model for (executor class, validator class) and (metric,
    statistic, direction)."""
    metric, statistic, direction = key
    return ThresholdEntry(
        model=analysis.model_revision,
        runtime_class=classes[0],
        validator_class=classes[1],
        metric=metric,
        statistic=statistic,
        direction=direction,
        value=value,
        metric_weights=analysis.metric_weights.get(metric, {}),
        position=position,
        provenance=provenance,
    )


def _groups(
    analysis: Analysis, result: KeyResult, runtime_class: str | None
) -> dict[tuple[str, str], list[PoolCalibration]]:
    """A key's pool calibrations by (executor class or ``runtime_class``, validator class)."""
    by_name = {p.name: p for p in analysis.pools}
    groups: dict[tuple[str, str], list[PoolCalibration]] = defaultdict(list)
    for calibration in result.pools:
        pool = by_name[calibration.pool]
        target_class = runtime_class or pool.executor_runtime_class or analysis.runtime_class
        validator_class = pool.reference_runtime_class or analysis.runtime_class
        groups[(target_class, validator_class)].append(calibration)
    return groups


def _detail(members: list[PoolCalibration]) -> str:
    return "; ".join(
        f"pool {c.pool}: {c.false_positives}/{c.pairs} false positives ({c.false_positive_prompts} prompts), "
        f"bootstrap 95% FPR bound {_pct(c.fpr_upper_95_bootstrap)}, out-of-sample FPR {_pct(c.oos_fpr_mean)} "
        f"(95th percentile {_pct(c.oos_fpr_p95)})"
        for c in members
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def best_entry_key(analysis: Analysis) -> str:
    """The best key, as ``metric:statistic`` (raises when there is none)."""
    if analysis.best_key is None:
        raise InvalidInputError("analysis: no score key could be analyzed")
    return score_key(*parse_score_key(analysis.best_key))
