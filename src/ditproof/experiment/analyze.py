"""Analysis (DiFR method, with honest statistics): every score key against each benign pool.

**Pools.** A benign pair compares a validator's regeneration (the reference configuration's
runtime class) with an executor's output (the deviation's class). Pairs are pooled per pair of
runtime classes compared (reference class × executor class; score rows without class columns:
per configuration), never across them: each pool has its own threshold. A byte-identical pair
(``video_exact``) is decided by exact match and never reaches a threshold, so it is kept out of
the pool and counted apart; a pool with no other pair is decided by exact match alone. For the
segment keys the exact match is of every segment's end state (``segments_exact``): a
checkpoints-mode validator compares those, not the video.

**Per score key and pool** (:mod:`ditproof.experiment.calibration`): the in-sample threshold at
the target FPR with its FPR bounds (Clopper–Pearson over pairs and over prompts, cluster
bootstrap over prompts), the out-of-sample FPR and per-class TPR over repeated random splits of
the prompts, and per malign class its AUC, TPR (in sample, bootstrap lower bound, out of sample)
and ROC. Per key, the **worst pool** summary holds whichever pool a dishonest executor picks:
the highest FPR and the lowest TPR over the pools, per split and per resample.

**Keys.** Frame metrics (``psnr:mean`` …), final-latent metrics (``latent_rel_l2:value``,
``latent_cosine:value``), trajectory checkpoints (``checkpoint_rel_l2:<name>``; older scores:
``pre_switch_rel_l2``), the joint scores of the modes that decide on many positions, each the
largest of the positions' standardised distances (minus the position's benign median, over its
benign 99th percentile minus that median, on the training prompts; the training pairs' own scores
cross-fitted by prompt fold) with one threshold on the maximum (:func:`~ditproof.experiment.calibration.normalised_max`):
``trajectory:max`` (every checkpoint and the final latent), ``full:max`` (those and the frame
metric the validator ties the video with: what the full mode decides on), ``checkpoints:max`` and
``spot-check:kK`` (segment re-runs); and, with ``Method.normaliser = B``, each latent distance
divided by the same prompt's distance of benign configuration ``B`` (``<key>/B``). The best key is the
thresholds-file key (frame or final-latent metric) with the highest out-of-sample worst-pool TPR
averaged over malign classes (ties: mean AUC).

**Threshold rule** (``Method.rule``): ``conformal`` (default) fits the ``ceil((n+1)(1−α))``-th
best benign score, whose FPR on a new prompt is at most ``α`` on average; ``bounded`` the
threshold whose new-prompt FPR has a 95% upper bound at most ``α`` (stricter: about half as many
pairs above it; from 299 pairs at 1%); ``empirical`` lets ``floor(α·n)`` of the ``n`` pairs fail,
which holds in sample only.

**Where the checkpoints lie** (``Analysis.reference_trajectory``): from the reference jobs'
records, their step count, expert switch (the ``pre_switch`` checkpoint's step) and each committed
checkpoint's step, phase and fraction of the phase done, as the validator places it
(:func:`~ditproof.validation.trajectory.step_position`); the final latent is the checkpoint
``final`` (key ``latent_rel_l2:value``). A report folder keeps it in its ``analysis.json``.

Outputs: ``analysis.json`` and a thresholds file in the format of
:mod:`ditproof.validation.policy`: one entry per frame or final-latent key and pair of classes, and
one ``latent_rel_l2_checkpoint`` (``latent_rel_l2_segment``) entry per checkpoint (segment) and pair
of classes, at its position, from the joint threshold times the position's scale
(:func:`ditproof.experiment.thresholds.thresholds_file`). The analysis runs on a store
(``scores.parquet``) or on a committed report folder (``scores-summary.csv``), so committed numbers
regenerate without the videos and latents.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ditproof.errors import InvalidInputError
from ditproof.experiment.calibration import (
    Draws,
    PoolCalibration,
    calibrate_pool,
    worst_pool,
)
from ditproof.experiment.findings import (
    ANALYSIS_FILE,
    CHECKPOINTS_MODE_KEY,
    COMBINED_TRAJECTORY_KEY,
    FINAL_LATENT_KEY,
    FULL_MODE_FRAME_KEY,
    FULL_MODE_KEY,
    LEGACY_PRE_SWITCH_KEY,
    NORMALISED_SEPARATOR,
    THRESHOLDS_FILE,
    Analysis,
    AnchorRow,
    CheckpointPosition,
    KeyResult,
    Method,
    Pool,
    ReferenceTrajectory,
    spot_check_key,
)
from ditproof.experiment.jobs import load_experiment_from_store, load_plan, read_result
from ditproof.experiment.keys import (
    SPOT_CHECK_KS,
    Combined,
    direction,
    is_segment_key,
    key_kind,
    key_scores,
    ordered_segment_keys,
    pair_exact,
    score_keys,
    segment_phases,
    trajectory_blocks,
)
from ditproof.experiment.score import CHECKPOINT_KEY_PREFIX, SCORES_META_FILE, read_scores
from ditproof.experiment.segments import (
    NOISE_ANCHOR_COLUMN,
    NOISE_ANCHOR_EXCESS_COLUMN,
    largest,
    read_segment_rows,
    with_segment_columns,
)
from ditproof.experiment.stats import ROC_FPR_GRID, bootstrap_counts, prompt_splits
from ditproof.experiment.store import Store
from ditproof.experiment.summaries import SCORES_CSV, read_scores_csv, summary_path
from ditproof.experiment.thresholds import thresholds_file
from ditproof.hashing import canonical_json, sha256_bytes
from ditproof.protocol.record import InferenceRecord
from ditproof.validation.commitments import record_switch
from ditproof.validation.trajectory import step_position


def _pools(rows: list[dict[str, Any]]) -> tuple[list[Pool], list[str | None]]:
    """The benign pools, and each row's pool (None for a malign row)."""
    groups: dict[tuple[str | None, str], list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if row["label"] == "benign":
            executor = row.get("runtime_class") or f"configuration {row['configuration']}"
            groups[(row.get("reference_runtime_class"), executor)].append(index)
    pools: list[Pool] = []
    row_pool: list[str | None] = [None] * len(rows)
    for (reference_class, executor), members in sorted(
        groups.items(), key=lambda g: (sorted({rows[i]["configuration"] for i in g[1]}), str(g[0]))
    ):
        configurations = sorted({rows[i]["configuration"] for i in members})
        name = "+".join(configurations)
        if any(p.name == name for p in pools):  # the same configurations in another class pair
            name = f"{name}#{sum(1 for p in pools if p.name.split('#')[0] == name) + 1}"
        exact = sum(1 for i in members if rows[i]["video_exact"])
        with_segments = [i for i in members if rows[i].get("segments") is not None]
        pools.append(
            Pool(
                name=name,
                configurations=configurations,
                reference_runtime_class=reference_class,
                executor_runtime_class=None if executor.startswith("configuration ") else executor,
                pairs=len(members),
                exact_pairs=exact,
                scored_pairs=len(members) - exact,
                decided_by="thresholds" if exact < len(members) else "exact match",
                segments_exact=all(pair_exact(rows[i], True) for i in with_segments) if with_segments else None,
            )
        )
        for i in members:
            row_pool[i] = name
    return pools, row_pool


def analyze_rows(
    rows: list[dict[str, Any]],
    *,
    experiment: str,
    model: str,
    model_revision: str,
    runtime_class: str,
    fpr_target: float,
    method: Method | None = None,
    skipped_metrics: dict[str, str] | None = None,
    metric_weights: dict[str, dict[str, str]] | None = None,
    source: str = "scores",
    reference_trajectory: ReferenceTrajectory | None = None,
    notes: list[str] | None = None,
) -> Analysis:
    """The analysis of score rows (one dict per pair, the columns of ``scores.parquet``).

    ``reference_trajectory`` (where each checkpoint lies) is kept in the analysis for the
    thresholds file's trajectory entries; ``notes`` are added to the analysis's own.

    Raises:
        InvalidInputError: no rows, no benign or no malign configuration, fewer than two prompts, or
            a row without the columns the analysis needs.
    """
    method = method or Method()
    if not rows:
        raise InvalidInputError(f"{source}: no scored pairs; run `ditproof experiment run` and `score` first")
    scores_sha256 = sha256_bytes(canonical_json(rows_for_hash(rows)))
    rows = [_with_checkpoint_names(r) for r in rows]
    for index, row in enumerate(rows):
        missing = [c for c in ("prompt_id", "configuration", "label", "video_exact") if c not in row]
        if missing:
            raise InvalidInputError(f"{source}: row {index + 1} lacks the columns {missing}")
    labels = {r["configuration"]: r["label"] for r in rows}
    benign_classes = sorted(c for c, label in labels.items() if label == "benign")
    malign_classes = sorted(c for c, label in labels.items() if label == "malign")
    if not benign_classes or not malign_classes:
        raise InvalidInputError(
            f"{source}: scored pairs cover benign {benign_classes} and malign {malign_classes}; "
            "allowed: at least one configuration of each"
        )
    exact = {
        name: {
            "pairs": sum(1 for r in rows if r["configuration"] == name),
            "video_exact": sum(1 for r in rows if r["configuration"] == name and r["video_exact"]),
            "frames_exact": sum(1 for r in rows if r["configuration"] == name and r.get("frames_exact")),
            "final_latent_exact": sum(1 for r in rows if r["configuration"] == name and r.get("final_latent_exact")),
        }
        for name in (*benign_classes, *malign_classes)
    }
    prompt_ids = sorted({r["prompt_id"] for r in rows})
    prompt_index = {p: i for i, p in enumerate(prompt_ids)}
    if len(prompt_ids) < 2:
        raise InvalidInputError(f"{source}: {len(prompt_ids)} prompt; out-of-sample calibration needs at least 2")
    splits = prompt_splits(len(prompt_ids), method.repeats, method.seed, method.train_fraction)
    counts = bootstrap_counts(len(prompt_ids), method.resamples, method.seed + 1)
    pools, row_pool = _pools(rows)
    decided = [p for p in pools if p.decided_by == "thresholds"]
    # A checkpoints-mode validator compares segment ends, not the video: a pool counts for the
    # segment keys where some pair's segments are not all bit-exact, whatever its videos.
    segment_decided = [
        p for p in pools if any(not pair_exact(r, True) for r, q in zip(rows, row_pool, strict=True) if q == p.name)
    ]

    metric_keys, trajectory_keys = score_keys(_columns(rows))
    segment_keys = ordered_segment_keys(_columns(rows), reference_trajectory)
    jobs: list[tuple[str, list[str], Combined | None]] = [
        (k, [k], None) for k in (*metric_keys, *trajectory_keys, *segment_keys)
    ]
    block_notes: list[str] = []
    if trajectory_keys and FINAL_LATENT_KEY in metric_keys:
        trajectory = [*trajectory_keys, FINAL_LATENT_KEY]
        if method.full_blocks and trajectory_blocks(trajectory, reference_trajectory) is None:
            block_notes.append("full blocks: the reference trajectory's checkpoints are unknown; one block")

        def full_mode(columns: list[str]) -> Combined:
            return Combined(blocks=trajectory_blocks(columns, reference_trajectory) if method.full_blocks else None)

        jobs.append((COMBINED_TRAJECTORY_KEY, trajectory, full_mode(trajectory)))
        if FULL_MODE_FRAME_KEY in metric_keys:
            full = [*trajectory_keys, FINAL_LATENT_KEY, FULL_MODE_FRAME_KEY]
            jobs.append((FULL_MODE_KEY, full, full_mode(full)))
    if segment_keys:
        jobs.append((CHECKPOINTS_MODE_KEY, segment_keys, Combined()))
        phases = segment_phases(segment_keys, reference_trajectory)
        if phases is not None:
            jobs += [(spot_check_key(k), segment_keys, Combined(phases, k)) for k in SPOT_CHECK_KS]
    if method.normaliser is not None:
        distances = [k for k in (FINAL_LATENT_KEY, *trajectory_keys) if k in (*metric_keys, *trajectory_keys)]
        rows = _with_normalised(rows, distances, method.normaliser, benign_classes, source)
        for distance in distances:
            name = f"{distance}{NORMALISED_SEPARATOR}{method.normaliser}"
            jobs.append((name, [name], None))
    results: list[KeyResult] = []
    for key, columns, combined in jobs:
        normaliser = key.split(NORMALISED_SEPARATOR)[1] if NORMALISED_SEPARATOR in key else None
        calibrated: list[tuple[PoolCalibration, Draws]] = []
        for pool in decided if not is_segment_key(columns[0]) else segment_decided:
            if normaliser in pool.configurations:
                continue  # divided by itself: every ratio 1
            scores = key_scores(
                rows, columns, pool.name, row_pool, malign_classes, prompt_index, combined, method.cross_fit
            )
            if scores is not None:
                calibrated.append(
                    calibrate_pool(pool.name, scores, fpr_target, splits, counts, method.confidence, method.rule)
                )
        if not calibrated:
            continue
        summary = worst_pool(calibrated, method.confidence)
        key_direction = direction(key)
        loosest = max(r.threshold for r, _ in calibrated)
        oos = [c.oos_tpr_mean for c in summary.classes if c.oos_tpr_mean is not None]
        results.append(
            KeyResult(
                key=key,
                kind=key_kind(key),
                direction=key_direction,
                normalised_by=normaliser,
                threshold=None if combined is not None else loosest if key_direction == "lower-is-better" else -loosest,
                columns=columns if combined is not None else None,
                pools=[r for r, _ in calibrated],
                summary=summary,
                mean_tpr=float(np.mean(oos)) if oos else 0.0,
                mean_auc=float(np.mean([c.auc for c in summary.classes])) if summary.classes else 0.0,
            )
        )
    best = max(
        (k for k in results if k.kind in ("frame", "latent") and k.normalised_by is None),
        key=lambda k: (k.mean_tpr, k.mean_auc),
        default=None,
    )
    return Analysis(
        experiment=experiment,
        model=model,
        model_revision=model_revision,
        runtime_class=runtime_class,
        fpr_target=fpr_target,
        method=method,
        roc_fpr_grid=list(ROC_FPR_GRID),
        benign_classes=benign_classes,
        malign_classes=malign_classes,
        prompts=len(prompt_ids),
        exact_matches=exact,
        pools=pools,
        keys=results,
        best_key=best.key if best else None,
        skipped_metrics=skipped_metrics or {},
        metric_weights=metric_weights or {},
        scores_sha256=scores_sha256,
        notes=[*_notes(pools, fpr_target, method), *block_notes, *(notes or [])],
        noise_anchor=anchor_rows(rows, labels),
        reference_trajectory=reference_trajectory,
    )


def anchor_rows(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[AnchorRow]:
    """The noise anchor per configuration, over its jobs with a measurement (one per job, however
    many pairs it is in)."""
    by_config: dict[str, dict[str, tuple[float, float | None]]] = {}
    for index, row in enumerate(rows):
        ratio = row.get(NOISE_ANCHOR_COLUMN)
        if ratio is None:
            continue
        job = row.get("job_id") or f"row {index}"
        by_config.setdefault(row["configuration"], {})[job] = (ratio, row.get(NOISE_ANCHOR_EXCESS_COLUMN))
    found = []
    for name, jobs in sorted(by_config.items()):
        ratios = [ratio for ratio, _ in jobs.values()]
        excess = [e for _, e in jobs.values() if e is not None]
        found.append(
            AnchorRow(
                configuration=name,
                label=labels[name],
                jobs=len(jobs),
                largest_ratio=largest(ratios),
                with_excess=len(excess),
                smallest_excess=min(excess) if excess and not any(math.isnan(e) for e in excess) else None,
                largest_excess=largest(excess),
                refused=sum(1 for e in excess if not e <= 1.0),
            )
        )
    return found


def trajectory_of(record: InferenceRecord) -> ReferenceTrajectory:
    """Where each of a record's committed checkpoints lies: step, expert phase and fraction of it
    done, as the validator's full mode places it (the switch: the ``pre_switch`` checkpoint's step).
    The noise (step 0) is left out; the final latent is the checkpoint ``final``."""
    steps = record.request.num_inference_steps
    switch = record_switch(record)
    checkpoints = []
    for ref in sorted(record.checkpoints, key=lambda c: (c.step, c.name)):
        if ref.step < 1:
            continue  # the noise (and a pre_switch at 0): no regenerated latent is compared there
        phase, fraction = step_position(ref.step, steps, switch)
        key = FINAL_LATENT_KEY if ref.name == "final" else f"{CHECKPOINT_KEY_PREFIX}{ref.name}"
        checkpoints.append(CheckpointPosition(name=ref.name, key=key, step=ref.step, phase=phase, fraction=fraction))
    return ReferenceTrajectory(steps=steps, switch=switch, checkpoints=checkpoints)


def reference_trajectory(records: list[InferenceRecord]) -> tuple[ReferenceTrajectory | None, list[str]]:
    """The reference records' common trajectory (every checkpoint any of them commits to), and notes.

    Records of one step count and switch place a checkpoint name at one position whatever their
    schedules; records that disagree on those have no common positions: (None, a note saying so).
    """
    layouts = [trajectory_of(record) for record in records]
    shapes = sorted({(t.steps, t.switch) for t in layouts}, key=str)
    if len(shapes) != 1:
        return None, [
            f"reference records disagree on (steps, expert switch): {shapes}; no trajectory thresholds by position"
        ]
    by_name: dict[str, CheckpointPosition] = {}
    for layout in layouts:
        for checkpoint in layout.checkpoints:
            by_name.setdefault(checkpoint.name, checkpoint)
    (steps, switch), checkpoints = shapes[0], sorted(by_name.values(), key=lambda c: (c.step, c.name))
    return ReferenceTrajectory(steps=steps, switch=switch, checkpoints=checkpoints), []


def _with_checkpoint_names(row: dict[str, Any]) -> dict[str, Any]:
    """An older row's ``pre_switch_rel_l2`` under its checkpoint name (rows of two scorings then agree)."""
    if LEGACY_PRE_SWITCH_KEY not in row:
        return row
    renamed = {k: v for k, v in row.items() if k != LEGACY_PRE_SWITCH_KEY}
    renamed.setdefault(f"{CHECKPOINT_KEY_PREFIX}pre_switch", row[LEGACY_PRE_SWITCH_KEY])
    return renamed


def _with_normalised(
    rows: list[dict[str, Any]], keys: list[str], normaliser: str, benign: list[str], source: str
) -> list[dict[str, Any]]:
    """Rows with ``<key>/<normaliser>`` added: the row's distance over the normaliser's on its prompt.

    A prompt whose normaliser pair lacks the distance, or has it 0 (byte-identical), gives None.

    Raises:
        InvalidInputError: ``normaliser`` is not a benign configuration of the scores.
    """
    if normaliser not in benign:
        raise InvalidInputError(f"{source}: normaliser {normaliser!r} is not a benign configuration; allowed: {benign}")
    if all(r["video_exact"] for r in rows if r["configuration"] == normaliser):
        raise InvalidInputError(
            f"{source}: normaliser {normaliser!r}: every pair is byte-identical to its reference (distance 0); "
            "allowed: a benign configuration with other bytes"
        )
    scale = {r["prompt_id"]: r for r in rows if r["configuration"] == normaliser}
    out = []
    for row in rows:
        extra: dict[str, float | None] = {}
        base = scale.get(row["prompt_id"])
        for key in keys:
            value, divisor = row.get(key), None if base is None else base.get(key)
            ok = value is not None and divisor is not None and divisor > 0 and not math.isnan(divisor)
            ratio = float(value) / float(divisor) if ok else None  # type: ignore[arg-type]
            extra[f"{key}{NORMALISED_SEPARATOR}{normaliser}"] = ratio
        out.append(row | extra)
    return out


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of the rows, in first-seen order (rows scored at different times may differ)."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _notes(pools: list[Pool], target: float, method: Method) -> list[str]:
    needed = math.ceil(math.log(1.0 - method.confidence) / math.log(1.0 - target))
    notes = []
    for pool in pools:
        if pool.decided_by == "thresholds" and pool.scored_pairs < needed:
            notes.append(
                f"pool {pool.name}: {pool.scored_pairs} benign pairs; the FPR's {method.confidence:.0%} upper bound "
                f"cannot reach {target} (it needs at least {needed} with no false positive)"
            )
    return notes


def analyze_store(store_url: str, fpr_target: float | None = None, method: Method | None = None) -> Analysis:
    """Analyzes ``scores.parquet``; writes ``analysis.json`` and ``thresholds.json`` into the store.

    Raises:
        InvalidInputError: no scores, or no benign or no malign pairs to compare.
    """
    store = Store(store_url)
    experiment = load_experiment_from_store(store)
    rows = with_segment_columns(read_scores(store).to_pylist(), read_segment_rows(store))
    meta = store.read_json(SCORES_META_FILE)
    if not rows:
        raise InvalidInputError(f"store {store.url}: no scored pairs; run `ditproof experiment run` and `score` first")
    records = reference_records(store)
    revision, runtime_class = records[0].model.revision, records[0].runtime_class
    trajectory, notes = reference_trajectory(records)
    analysis = analyze_rows(
        rows,
        experiment=experiment.file.name,
        model=experiment.file.model,
        model_revision=revision,
        runtime_class=runtime_class,
        fpr_target=fpr_target if fpr_target is not None else experiment.file.fpr_target,
        method=method,
        skipped_metrics=meta.get("skipped_metrics", {}),
        metric_weights=meta.get("metric_weights", {}),
        source=f"store {store.url}",
        reference_trajectory=trajectory,
        notes=notes,
    )
    _write_outputs(store, analysis)
    return analysis


def analyze_folder(folder: str | Path, fpr_target: float | None = None, method: Method | None = None) -> Analysis:
    """Analyzes a committed report folder's ``scores-summary.csv``; rewrites its analysis and thresholds.

    The experiment, model, revision, reference class, FPR target (unless given), skipped metrics,
    metric weights and where the checkpoints lie come from the folder's ``analysis.json`` (any
    schema version; a ``/2`` one does not say where the checkpoints lie, so its trajectory keys get
    no thresholds-file entry): nothing but the committed files is read.

    Raises:
        InvalidInputError: a missing or malformed file.
    """
    path = Path(folder)
    store = Store(str(path))
    for name in (SCORES_CSV, ANALYSIS_FILE):
        if not (path / name).is_file() and not (name == SCORES_CSV and summary_path(path, name).is_file()):
            raise InvalidInputError(
                f"report folder {path}: no {name}; allowed: a folder written by `experiment report`"
            )
    previous = store.read_json(ANALYSIS_FILE)
    try:
        meta = {k: previous[k] for k in ("experiment", "model", "model_revision", "runtime_class", "fpr_target")}
    except (KeyError, TypeError) as exc:
        raise InvalidInputError(f"report folder {path}: {ANALYSIS_FILE} lacks {exc}") from exc
    trajectory = None
    if previous.get("reference_trajectory") is not None:
        try:
            trajectory = ReferenceTrajectory.model_validate(previous["reference_trajectory"])
        except ValueError as exc:
            raise InvalidInputError(f"report folder {path}: {ANALYSIS_FILE}: reference_trajectory: {exc}") from exc
    analysis = analyze_rows(
        read_scores_csv(summary_path(path, SCORES_CSV)),
        experiment=meta["experiment"],
        model=meta["model"],
        model_revision=meta["model_revision"],
        runtime_class=meta["runtime_class"],
        fpr_target=fpr_target if fpr_target is not None else float(meta["fpr_target"]),
        method=method,
        skipped_metrics=previous.get("skipped_metrics", {}),
        metric_weights=previous.get("metric_weights", {}),
        source=str(summary_path(path, SCORES_CSV)),
        reference_trajectory=trajectory,
    )
    _write_outputs(store, analysis)
    return analysis


def _write_outputs(store: Store, analysis: Analysis) -> None:
    store.write_model(ANALYSIS_FILE, analysis)
    store.write_bytes(THRESHOLDS_FILE, canonical_json(thresholds_file(analysis).model_dump(mode="json")) + b"\n")


def rows_for_hash(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score rows with non-finite floats made JSON-safe (NaN → None, ±inf → a string) for the provenance hash."""
    return [
        {k: (None if v != v else str(v)) if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
        for r in rows
    ]


def reference_records(store: Store) -> list[InferenceRecord]:
    """The records of the experiment's finished reference jobs, in plan order (the first names the
    model revision and the reference's runtime class).

    Raises:
        InvalidInputError: no reference job has finished.
    """
    records = []
    for job in load_plan(store):
        if job.is_reference:
            result = read_result(store, job.job_id)
            if result is not None:
                artifact = result.artifact("record")
                records.append(InferenceRecord.model_validate_json(store.read_bytes(artifact.path, artifact.sha256)))
    if not records:
        raise InvalidInputError(f"store {store.url}: no finished reference job")
    return records
