"""Analysis (DiFR method): each malign class against the pooled benign scores, per score key.

For every score key (``metric:statistic``) the threshold comes from the benign pool alone: the
lowest one whose empirical false-positive rate is at most the target (default 1%), with a 95%
Clopper–Pearson upper bound on the FPR. Against that threshold each malign class gets its true
positive rate (TPR at the target FPR); the ROC and its AUC are computed over all thresholds.
The best key has the highest TPR at the target averaged over malign classes (ties: mean AUC).

Outputs: ``analysis.json`` (everything, checksummed in the store) and a thresholds file in the
format of :mod:`ditproof.validation.policy`, one entry per score key, for the reference's model
revision and runtime class.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from ditproof.errors import InvalidInputError
from ditproof.experiment.jobs import load_experiment_from_store, read_result
from ditproof.experiment.score import SCORES_META_FILE, read_scores
from ditproof.experiment.stats import auc, roc_curve, threshold_at_fpr
from ditproof.experiment.store import Store
from ditproof.hashing import canonical_json, sha256_bytes
from ditproof.metrics.registry import parse_score_key, score_key
from ditproof.validation.policy import Provenance, ThresholdEntry, ThresholdsFile

ANALYSIS_FILE = "analysis.json"
THRESHOLDS_FILE = "thresholds.json"
ANALYSIS_SCHEMA: Literal["ditproof.experiment-analysis/1"] = "ditproof.experiment-analysis/1"
CONFIDENCE = 0.95


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassResult(_M):
    """One malign class against the benign pool, for one score key."""

    configuration: str
    n: int
    auc: float
    tpr_at_target: float
    roc_fpr: list[float]
    roc_tpr: list[float]


class KeyResult(_M):
    """One score key: its threshold at the target FPR and every malign class's detection."""

    key: str
    metric: str
    statistic: str
    direction: str
    threshold: float
    benign_n: int
    false_positives: int
    fpr: float
    fpr_upper_95: float
    classes: list[ClassResult]
    mean_tpr: float
    mean_auc: float


class Analysis(_M):
    """The analysis of one experiment's scores."""

    schema_version: Literal["ditproof.experiment-analysis/1"] = ANALYSIS_SCHEMA
    experiment: str
    model: str
    model_revision: str
    runtime_class: str
    fpr_target: float
    benign_classes: list[str]
    malign_classes: list[str]
    exact_matches: dict[str, dict[str, int]]
    keys: list[KeyResult]
    best_key: str | None
    skipped_metrics: dict[str, str]
    metric_weights: dict[str, dict[str, str]]
    scores_sha256: str
    notes: list[str]


def _badness(values: np.ndarray, direction: str) -> np.ndarray:
    return values if direction == "lower-is-better" else -values


def _score_keys(columns: list[str]) -> list[str]:
    keys = []
    for column in columns:
        if ":" not in column:
            continue
        try:
            parse_score_key(column)
        except InvalidInputError:
            continue
        keys.append(column)
    return keys


def analyze_store(store_url: str, fpr_target: float | None = None) -> Analysis:
    """Analyzes ``scores.parquet``; writes ``analysis.json`` and ``thresholds.json`` into the store.

    Raises:
        InvalidInputError: no scores, or no benign or no malign pairs to compare.
    """
    store = Store(store_url)
    experiment = load_experiment_from_store(store)
    table = read_scores(store)
    meta = store.read_json(SCORES_META_FILE)
    target = fpr_target if fpr_target is not None else experiment.file.fpr_target
    if table.num_rows == 0:
        raise InvalidInputError(f"store {store.url}: no scored pairs; run `ditproof experiment run` and `score` first")
    rows = table.to_pylist()
    labels = {r["configuration"]: r["label"] for r in rows}
    benign_classes = sorted(c for c, label in labels.items() if label == "benign")
    malign_classes = sorted(c for c, label in labels.items() if label == "malign")
    if not benign_classes or not malign_classes:
        raise InvalidInputError(
            f"store {store.url}: scored pairs cover benign {benign_classes} and malign {malign_classes}; "
            "allowed: at least one configuration of each"
        )
    exact = {
        name: {
            "pairs": sum(1 for r in rows if r["configuration"] == name),
            "video_exact": sum(1 for r in rows if r["configuration"] == name and r["video_exact"]),
            "frames_exact": sum(1 for r in rows if r["configuration"] == name and r["frames_exact"]),
            "final_latent_exact": sum(1 for r in rows if r["configuration"] == name and r["final_latent_exact"]),
        }
        for name in (*benign_classes, *malign_classes)
    }
    results: list[KeyResult] = []
    for key in _score_keys(table.column_names):
        metric, statistic = parse_score_key(key)
        from ditproof.metrics.registry import metric_spec

        direction = metric_spec(metric).direction
        values = {r["configuration"]: [] for r in rows}  # type: dict[str, list[float]]
        for r in rows:
            if r.get(key) is not None:
                values[r["configuration"]].append(float(r[key]))
        benign = _badness(np.array([v for c in benign_classes for v in values[c]], dtype=np.float64), direction)
        if benign.size == 0:
            continue
        point = threshold_at_fpr(benign, target, CONFIDENCE)
        classes = []
        for name in malign_classes:
            malign = _badness(np.array(values[name], dtype=np.float64), direction)
            if malign.size == 0:
                continue
            roc = roc_curve(benign, malign)
            classes.append(
                ClassResult(
                    configuration=name,
                    n=int(malign.size),
                    auc=auc(benign, malign),
                    tpr_at_target=float((malign > point.threshold).mean()),
                    roc_fpr=[float(x) for x in roc.fpr],
                    roc_tpr=[float(x) for x in roc.tpr],
                )
            )
        threshold = point.threshold if direction == "lower-is-better" else -point.threshold
        results.append(
            KeyResult(
                key=key,
                metric=metric,
                statistic=statistic,
                direction=direction,
                threshold=threshold,
                benign_n=point.benign,
                false_positives=point.false_positives,
                fpr=point.fpr,
                fpr_upper_95=point.fpr_upper,
                classes=classes,
                mean_tpr=float(np.mean([c.tpr_at_target for c in classes])) if classes else 0.0,
                mean_auc=float(np.mean([c.auc for c in classes])) if classes else 0.0,
            )
        )
    best = max(results, key=lambda k: (k.mean_tpr, k.mean_auc), default=None)
    reference = _reference_result(store, experiment)
    notes = []
    if results and results[0].benign_n < 300:
        notes.append(
            f"{results[0].benign_n} benign pairs: the FPR's 95% upper bound cannot reach {target} "
            f"(it needs at least {int(np.ceil(np.log(0.05) / np.log(1 - target)))} benign pairs with no false positive)"
        )
    analysis = Analysis(
        experiment=experiment.file.name,
        model=experiment.file.model,
        model_revision=reference[0],
        runtime_class=reference[1],
        fpr_target=target,
        benign_classes=benign_classes,
        malign_classes=malign_classes,
        exact_matches=exact,
        keys=results,
        best_key=best.key if best else None,
        skipped_metrics=meta.get("skipped_metrics", {}),
        metric_weights=meta.get("metric_weights", {}),
        scores_sha256=sha256_bytes(canonical_json(rows_for_hash(rows))),
        notes=notes,
    )
    store.write_model(ANALYSIS_FILE, analysis)
    thresholds = thresholds_file(analysis)
    store.write_bytes(THRESHOLDS_FILE, canonical_json(thresholds.model_dump(mode="json")) + b"\n")
    return analysis


def rows_for_hash(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score rows with floats kept and NaN/None made JSON-safe (for the provenance hash)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]


def _reference_result(store: Store, experiment: Any) -> tuple[str, str]:
    """(model revision, runtime class) of the experiment's reference jobs, from their records."""
    from ditproof.experiment.jobs import load_plan

    for job in load_plan(store):
        if job.is_reference:
            result = read_result(store, job.job_id)
            if result is not None:
                from ditproof.protocol.record import InferenceRecord

                record = InferenceRecord.model_validate_json(
                    store.read_bytes(result.artifact("record").path, result.artifact("record").sha256)
                )
                return record.model.revision, record.runtime_class
    raise InvalidInputError(f"store {store.url}: no finished reference job")


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
    """The thresholds of an analysis in the validator's format (one entry per score key).

    The entries name the model revision (not the preset) and, unless ``runtime_class`` is given
    (an fnmatch pattern, e.g. ``cuda-sm90/*``), the reference's exact runtime class.
    """
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    entries = []
    for result in analysis.keys:
        detail = ", ".join(f"{c.configuration} TPR {c.tpr_at_target:.3f} AUC {c.auc:.3f}" for c in result.classes)
        entries.append(
            ThresholdEntry(
                model=analysis.model_revision,
                runtime_class=runtime_class or analysis.runtime_class,
                metric=result.metric,
                statistic=result.statistic,
                direction=result.direction,  # type: ignore[arg-type]
                value=result.threshold,
                metric_weights=analysis.metric_weights.get(result.metric, {}),
                provenance=Provenance(
                    calibration=f"ditproof experiment {analysis.experiment} (scores {analysis.scores_sha256[:16]})",
                    fpr_target=analysis.fpr_target,
                    date=date,
                    samples=result.benign_n,
                    notes=(
                        f"benign pool {analysis.benign_classes}: {result.false_positives} false positives, FPR "
                        f"{result.fpr:.4f} (95% upper {result.fpr_upper_95:.4f}); {detail}; commit {git_commit()}"
                    )[:2000],
                ),
            )
        )
    return ThresholdsFile(
        version=1,
        provisional=bool(analysis.notes),
        description=(
            f"Calibrated by ditproof experiment {analysis.experiment} for model {analysis.model} "
            f"(revision {analysis.model_revision[:16]}); best key {analysis.best_key}. " + " ".join(analysis.notes)
        ),
        entries=entries,
    )


def best_entry_key(analysis: Analysis) -> str:
    """The best key, as ``metric:statistic`` (raises when there is none)."""
    if analysis.best_key is None:
        raise InvalidInputError("analysis: no score key could be analyzed")
    return score_key(*parse_score_key(analysis.best_key))
