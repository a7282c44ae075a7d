"""The thresholds file of an analysis, in the validator's format (:mod:`ditproof.validation.policy`).

Frame and final-latent keys give one entry per pair of runtime classes. Each trajectory checkpoint
(``checkpoint_rel_l2:<name>``, and the final latent as the checkpoint ``final``) gives one
``latent_rel_l2_checkpoint`` entry per pair of classes at the checkpoint's **position**: its expert
phase, over a range of the fraction of the phase done that holds the checkpoint and reaches halfway
to the phase's neighbouring checkpoints (the first and last of a phase reach 0 and 1), so every step
of a run of any step count takes the threshold of the nearest checkpoint of its phase
(:func:`position_ranges`). Ranges never cross the expert switch: each phase is its own.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from ditproof.errors import InvalidInputError
from ditproof.experiment.calibration import PoolCalibration
from ditproof.experiment.findings import Analysis, CheckpointPosition, KeyResult, segment_key
from ditproof.metrics.registry import Direction, parse_score_key, score_key
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
    pair of classes, holding that checkpoint's key's threshold (the final latent's:
    ``latent_rel_l2:value``'s) at its position (module docstring). Normalised keys and the combined
    ``trajectory:max`` (units that differ between pools) get no entry.
    """
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    commit = git_commit()
    calibration = f"ditproof experiment {analysis.experiment} (scores {analysis.scores_sha256[:16]})"
    entries = []
    for result in analysis.keys:
        if result.kind in ("trajectory", "segment") or result.normalised_by is not None or result.summary is None:
            continue  # checkpoints and segments below; normalised and combined keys are the analysis's only
        metric, statistic = parse_score_key(result.key)
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
                        notes=f"{_detail(members)}; threshold of pool {loosest.pool}; commit {commit}"[:2000],
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
    re-run, at the position of the checkpoint it ends at."""
    trajectory = analysis.reference_trajectory
    if trajectory is None:
        return []
    metric, what = (SEGMENT_METRIC, "segment ending at") if segments else (CHECKPOINT_METRIC, "checkpoint")
    results = {r.key: r for r in analysis.keys if r.normalised_by is None and r.summary is not None}
    # Per pair of classes and step: the checkpoints there with a calibrated threshold (two names at
    # one step, e.g. pre_switch and an extra step_NNN, hold the same latent: one entry, the looser).
    by_group: dict[tuple[str, str], dict[int, list[tuple[CheckpointPosition, list[PoolCalibration]]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for checkpoint in trajectory.checkpoints:
        result = results.get(segment_key(checkpoint.name) if segments else checkpoint.key)
        if result is None or result.direction != "lower-is-better":
            continue
        for group, members in _groups(analysis, result, runtime_class).items():
            by_group[group][checkpoint.step].append((checkpoint, members))
    entries = []
    if analysis.method.rule == "conformal":
        kind = "out-of-sample calibrated threshold (conformal rule: a new prompt's FPR at most the target on average)"
    else:
        kind = "in-sample threshold (empirical rule: holds in sample only)"
    for (target_class, validator_class), at_step in by_group.items():
        placed = _placed({step: found[0][0] for step, found in at_step.items()})
        for step, phase, start, end in placed:
            found = at_step[step]
            members = [c for _, pools in found for c in pools]
            loosest = max(members, key=lambda c: c.threshold)
            checkpoint = found[0][0]
            names = " = ".join(f"{c.name} ({segment_key(c.name) if segments else c.key})" for c, _ in found)
            where = (
                f"{what} {names} at step {step} of {trajectory.steps} (expert switch {trajectory.switch}; "
                f"{phase} {checkpoint.fraction:.4g}), held from {start:.4g} to {end:.4g} of the phase"
            )
            notes = (
                f"{where}: the {what.split()[0]}'s {kind}, from pools "
                f"{', '.join(sorted({c.pool for c in members}))}; {_detail(members)}; "
                f"threshold of pool {loosest.pool}; commit {commit}"
            )
            entries.append(
                _entry(
                    analysis,
                    (target_class, validator_class),
                    (metric, "value", "lower-is-better"),
                    loosest.threshold,
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
