"""The thresholds file of an analysis, in the validator's format (:mod:`ditproof.validation.policy`)."""

from __future__ import annotations

import subprocess
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from ditproof.errors import InvalidInputError
from ditproof.experiment.calibration import PoolCalibration
from ditproof.experiment.findings import Analysis
from ditproof.metrics.registry import parse_score_key, score_key
from ditproof.validation.policy import Provenance, ThresholdEntry, ThresholdsFile


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
    pool's in-sample FPR stays at or below the target. Trajectory keys are not validator metrics
    and get no entry. Entries name the model revision, not the preset.
    """
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    by_name = {p.name: p for p in analysis.pools}
    commit = git_commit()
    entries = []
    for result in analysis.keys:
        if result.kind == "trajectory" or result.normalised_by is not None or result.summary is None:
            continue  # not a validator metric (yet): the analysis's only
        metric, statistic = parse_score_key(result.key)
        groups: dict[tuple[str, str], list[PoolCalibration]] = defaultdict(list)
        for calibration in result.pools:
            pool = by_name[calibration.pool]
            target_class = runtime_class or pool.executor_runtime_class or analysis.runtime_class
            validator_class = pool.reference_runtime_class or analysis.runtime_class
            groups[(target_class, validator_class)].append(calibration)
        for (target_class, validator_class), members in groups.items():
            loosest = max(members, key=lambda c: c.threshold)
            value = loosest.threshold if result.direction == "lower-is-better" else -loosest.threshold
            detail = "; ".join(
                f"pool {c.pool}: {c.false_positives}/{c.pairs} false positives ({c.false_positive_prompts} prompts), "
                f"bootstrap 95% FPR bound {_pct(c.fpr_upper_95_bootstrap)}, out-of-sample FPR {_pct(c.oos_fpr_mean)} "
                f"(95th percentile {_pct(c.oos_fpr_p95)})"
                for c in members
            )
            entries.append(
                ThresholdEntry(
                    model=analysis.model_revision,
                    runtime_class=target_class,
                    validator_class=validator_class,
                    metric=metric,
                    statistic=statistic,
                    direction=result.direction,
                    value=value,
                    metric_weights=analysis.metric_weights.get(metric, {}),
                    provenance=Provenance(
                        calibration=f"ditproof experiment {analysis.experiment} (scores {analysis.scores_sha256[:16]})",
                        fpr_target=analysis.fpr_target,
                        date=date,
                        samples=sum(c.pairs for c in members),
                        notes=f"{detail}; threshold of pool {loosest.pool}; commit {commit}"[:2000],
                    ),
                )
            )
    return ThresholdsFile(
        version=1,
        provisional=bool(analysis.notes),
        description=(
            f"Calibrated by ditproof experiment {analysis.experiment} for model {analysis.model} "
            f"(revision {analysis.model_revision[:16]}); best key {analysis.best_key}. " + " ".join(analysis.notes)
        )[:4000],
        entries=entries,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def best_entry_key(analysis: Analysis) -> str:
    """The best key, as ``metric:statistic`` (raises when there is none)."""
    if analysis.best_key is None:
        raise InvalidInputError("analysis: no score key could be analyzed")
    return score_key(*parse_score_key(analysis.best_key))
