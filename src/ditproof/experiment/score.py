"""Scoring: every finished job against the reference job of the same prompt.

Per pair (a deviation's job, its prompt's reference job), one row of ``scores.parquet``:

* exact matches: ``video_exact`` (mp4 bytes), ``frames_exact`` (decoded frames),
  ``final_latent_exact`` (final latent tensor bytes), ``noise_equal`` (the sanity check that both
  started from the same noise; false only for seed deviations);
* every frame metric of the experiment, through ``ditproof.metrics`` exactly as the validator
  computes it (decoded frames of both encoded videos), as ``"{metric}:{statistic}"`` columns;
* ``latent_rel_l2:value`` and ``latent_cosine:value`` of the final latents, and
  ``checkpoint_rel_l2:<name>``, the relative L2 distance at every other trajectory checkpoint both
  records hold under one name (``pre_switch``, the latent entering the low-noise expert;
  ``step_NNN``, the latent after NNN steps), whatever the schedule: no fixed list (older scores
  named the pre-switch one ``pre_switch_rel_l2``);
* ``runtime_class`` and ``reference_runtime_class``: the two runtime classes compared (the
  analysis pools benign pairs per pair of classes);
* ``first_divergence_step``: 0 when the initial noise differs, else the first step (1-based:
  the latent after that many steps) whose JL trajectory fingerprint differs from the reference's;
  null when all compared steps agree. ``fingerprint_steps`` says how many steps were compared.

A learned metric whose weight files are missing is skipped for the whole run and listed, with
the reason, in ``scores-meta.json`` (never silently). Scores are queryable with DuckDB::

    duckdb -c "SELECT configuration, avg(\\"psnr:mean\\") FROM 'STORE/scores.parquet' GROUP BY 1"
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors

from ditproof.errors import DitproofError
from ditproof.experiment.jobs import JobResult, load_experiment_from_store, load_plan, read_result, refresh_manifest
from ditproof.experiment.plan import Job
from ditproof.experiment.store import Store
from ditproof.hashing import sha256_bytes
from ditproof.metrics import score_latents, score_videos
from ditproof.metrics.registry import metric_spec, metric_weights, score_key
from ditproof.metrics.weights import MetricWeightsInvalidError, MetricWeightsMissingError
from ditproof.protocol.record import InferenceRecord
from ditproof.video import decode_video

SCORES_FILE = "scores.parquet"
SAVE_EVERY_S = 30.0
"""Scores so far are written at least this often, so a stopped scoring run resumes where it was."""
SCORES_META_FILE = "scores-meta.json"
LATENT_KEYS = (score_key("latent_rel_l2", "value"), score_key("latent_cosine", "value"))
CHECKPOINT_KEY_PREFIX = "checkpoint_rel_l2:"
"""Score column of a trajectory checkpoint's distance: ``checkpoint_rel_l2:<checkpoint name>``."""
_NOT_COMPARED = ("initial", "final")  # the noise (``noise_equal``) and the final latent (``latent_*``)


class _Loaded:
    """A finished job's artifacts, read from the store and verified against its result."""

    def __init__(self, store: Store, result: JobResult):
        self.result = result
        video = store.read_bytes(result.artifact("video").path, result.artifact("video").sha256)
        self.video_sha256 = result.video_sha256
        self.frames = decode_video(video)
        record_bytes = store.read_bytes(result.artifact("record").path, result.artifact("record").sha256)
        self.record = InferenceRecord.model_validate_json(record_bytes)
        self.latents: dict[str, torch.Tensor] = {}
        for checkpoint in self.record.checkpoints:
            if checkpoint.name == "initial":
                continue
            try:
                artifact = result.artifact(f"latent:{checkpoint.name}")
            except DitproofError:
                if checkpoint.name == "final":
                    raise
                continue
            if checkpoint.name != "final" and not store.exists(artifact.path):
                continue  # a thin copy may leave out the trajectory checkpoints
            data = store.read_bytes(artifact.path, artifact.sha256)
            self.latents[checkpoint.name] = load_safetensors(data)["latent"]
        fingerprints = self.record.fingerprints
        self.fingerprints = fingerprints.values if fingerprints else []


def usable_metrics(metrics: list[str], device: str) -> tuple[list[str], dict[str, str], dict[str, dict[str, str]]]:
    """The metrics that can run here, the skipped ones with the reason, and learned weights' hashes."""
    usable, skipped, weights = [], {}, {}
    for metric in metrics:
        metric_spec(metric)
        try:
            weights[metric] = metric_weights(metric, device)
        except (MetricWeightsMissingError, MetricWeightsInvalidError) as exc:
            skipped[metric] = str(exc)
            continue
        usable.append(metric)
    return usable, skipped, weights


def first_divergence(reference: _Loaded, job: _Loaded) -> tuple[int | None, int]:
    """(first diverging step or None, steps compared) from the JL fingerprints (see the module docstring)."""
    if job.record.noise.sha256 != reference.record.noise.sha256:
        return 0, 0
    steps = min(len(reference.fingerprints), len(job.fingerprints))
    for index in range(steps):
        if reference.fingerprints[index] != job.fingerprints[index]:
            return index + 1, steps
    if len(reference.fingerprints) != len(job.fingerprints):
        return steps + 1, steps
    return None, steps


def score_pair(reference: _Loaded, job: _Loaded, metrics: list[str], device: str) -> dict[str, Any]:
    """Every score of one (job, reference) pair."""
    row: dict[str, Any] = {
        "video_exact": job.video_sha256 == reference.video_sha256,
        "frames_exact": bool(job.frames.shape == reference.frames.shape and (job.frames == reference.frames).all()),
        "final_latent_exact": job.result.final_latent_sha256 == reference.result.final_latent_sha256,
        "noise_equal": job.record.noise.sha256 == reference.record.noise.sha256,
    }
    row.update(score_videos(metrics, job.frames, reference.frames, device=device))
    row.update(score_latents(job.latents["final"], reference.latents["final"]))
    row.update(checkpoint_distances(job.latents, reference.latents))
    step, compared = first_divergence(reference, job)
    row["first_divergence_step"] = step
    row["fingerprint_steps"] = compared
    return row


def checkpoint_distances(job: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """``checkpoint_rel_l2:<name>`` for every checkpoint name both hold (but ``initial`` and ``final``).

    Checkpoints pair by name (``step_010`` is the latent after 10 steps on both sides); a pair of
    unequal shapes has no distance (None). A checkpoint only one side holds has no column.
    """
    distances: dict[str, float | None] = {}
    for name in sorted(set(job) & set(reference)):
        if name in _NOT_COMPARED:
            continue
        a, b = job[name], reference[name]
        distances[f"{CHECKPOINT_KEY_PREFIX}{name}"] = (
            score_latents(a, b)[LATENT_KEYS[0]] if a.shape == b.shape else None
        )
    return distances


def pair_columns(job: Job, result: JobResult, reference: JobResult) -> dict[str, Any]:
    """The columns that name a pair (a deviation's job and its prompt's reference job) in every
    row about it: ids, prompt, configuration, label and the two runtime classes."""
    return {
        "job_id": job.job_id,
        "reference_job_id": job.reference_job_id,
        "prompt_id": job.prompt_id,
        "configuration": job.configuration,
        "label": job.label,
        "runtime_class": result.runtime_class,
        "reference_runtime_class": reference.runtime_class,
    }


def pair_inputs_sha256(result: JobResult, reference: JobResult) -> str:
    """What a score row was computed from: both jobs' video and final-latent sha256."""
    parts = (result.video_sha256, result.final_latent_sha256, reference.video_sha256, reference.final_latent_sha256)
    return sha256_bytes("|".join(parts).encode())


def exact_by_hashes(store: Store, result: JobResult, reference: JobResult) -> dict[str, Any] | None:
    """The row columns of a pair decided from its records alone, or None.

    A thin store holds the records but not the videos and latents. When a job's record commits the
    reference's video, noise, final latent, every trajectory checkpoint (tensor sha256, by name) and
    every step's fingerprint, the two runs are the same bytes: the pair is an exact match, kept out
    of the pools, with nothing left to measure (its metric columns stay empty). Anything that
    differs, or a record that is not here, gives None: such a pair needs its artifacts.
    """
    if (result.video_sha256, result.final_latent_sha256) != (reference.video_sha256, reference.final_latent_sha256):
        return None
    records = []
    for side in (result, reference):
        artifact = side.artifact("record")
        if not store.exists(artifact.path):
            return None
        records.append(InferenceRecord.model_validate_json(store.read_bytes(artifact.path, artifact.sha256)))
    job, ref = records
    steps = [record.fingerprints.values if record.fingerprints else [] for record in (job, ref)]
    checkpoints = [{c.name: c.tensor_sha256 for c in record.checkpoints} for record in (job, ref)]
    if job.noise.sha256 != ref.noise.sha256 or checkpoints[0] != checkpoints[1] or steps[0] != steps[1]:
        return None
    return {
        "video_exact": True,
        "frames_exact": True,
        "final_latent_exact": True,
        "noise_equal": True,
        "first_divergence_step": None,
        "fingerprint_steps": len(steps[0]),
        "scored_from": "hashes",
    }


def _has_artifacts(store: Store, result: JobResult) -> bool:
    needed = [result.artifact("video"), result.artifact("record"), result.artifact("latent:final")]
    return all(store.exists(a.path) for a in needed)


def _valid_rows(
    tables: list[pa.Table], jobs: list[Job], results: dict[str, JobResult | None]
) -> tuple[dict[str, dict[str, Any]], int]:
    """Rows (first per job) computed from the results the store holds now, and how many were dropped."""
    expected = {
        job.job_id: pair_inputs_sha256(results[job.job_id], results[job.reference_job_id])  # type: ignore[arg-type]
        for job in jobs
        if not job.is_reference and results[job.job_id] is not None and results[job.reference_job_id] is not None
    }
    kept: dict[str, dict[str, Any]] = {}
    dropped = 0
    for table in tables:
        for row in table.to_pylist():
            job_id = row.get("job_id")
            if job_id in kept:
                continue
            if job_id in expected and row.get("inputs_sha256") == expected[job_id]:
                kept[job_id] = row
            else:
                dropped += 1
    return kept, dropped


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as one table. Rows may differ in columns (checkpoints a pair lacks, rows kept from an
    older scoring): every column of any row, None where a row lacks it (pyarrow would keep the
    first row's only); no rows give an empty ``job_id`` column."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    ordered = [{c: row.get(c) for c in columns} for row in rows]
    return pa.Table.from_pylist(ordered) if ordered else pa.table({"job_id": pa.array([], pa.string())})


def _write_scores(store: Store, jobs: list[Job], rows: dict[str, dict[str, Any]]) -> pa.Table:
    table = rows_table([rows[job.job_id] for job in jobs if job.job_id in rows])  # plan order, whatever the sources
    store.write_parquet(SCORES_FILE, table)
    return table


def merge_score_rows(
    store: Store, jobs: list[Job], results: dict[str, JobResult | None], tables: list[pa.Table]
) -> tuple[int, int]:
    """Writes the valid rows of ``tables`` (first wins) as the store's scores; returns (kept, dropped).

    Used by :mod:`ditproof.experiment.merge`; the sources' ``scores-meta.json`` must agree on the
    metrics (the merge checks), and the merged meta is the first source's with the new count.
    """
    rows, dropped = _valid_rows(tables, jobs, results)
    _write_scores(store, jobs, rows)
    return len(rows), dropped


def score_store(
    store_url: str,
    device: str = "cpu",
    metrics: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    rescore: bool = False,
    workers: int = 1,
) -> pa.Table:
    """Scores every finished non-reference job whose reference is finished; writes ``scores.parquet``.

    Rows already in the store that were computed with the same metrics from the same results (their
    ``inputs_sha256``) are kept unless ``rescore``; the other pairs are scored, which needs their
    artifacts: pairs of a thin store (results without videos or latents) that have no valid row are
    counted in ``scores-meta.json`` as ``pairs_without_artifacts``, unless their records show them
    to be exact matches (:func:`exact_by_hashes`: rows with ``scored_from`` ``hashes``). Rows are written every
    ``SAVE_EVERY_S`` seconds too: a scoring run that is stopped (a host's time limit) loses at most
    that much work, and the next run goes on from there.

    Args:
        store_url: the experiment store.
        device: where the frame metrics run.
        metrics: frame metrics (default: the experiment's ``metrics``).
        progress: called with (pairs scored, pairs to score).
        rescore: recompute every row.
        workers: processes scoring side by side (each a share of the prompts, torch threads shared
            out among them); the rows are those of one process.

    Returns:
        The scores table (also written to the store, with ``scores-meta.json``).
    """
    store = Store(store_url)
    experiment = load_experiment_from_store(store)
    jobs = load_plan(store)
    wanted = metrics if metrics is not None else list(experiment.file.metrics)
    usable, skipped, weights = usable_metrics(wanted, device)
    results = {job.job_id: read_result(store, job.job_id) for job in jobs}
    pairs: list[Job] = [
        job
        for job in jobs
        if not job.is_reference and results[job.job_id] is not None and results[job.reference_job_id] is not None
    ]
    rows: dict[str, dict[str, Any]] = {}
    reusable = not rescore and store.exists(SCORES_FILE) and store.exists(SCORES_META_FILE)
    if reusable and store.read_json(SCORES_META_FILE).get("metrics") == usable:
        rows, _ = _valid_rows([store.read_parquet(SCORES_FILE)], jobs, results)
    todo = [job for job in pairs if job.job_id not in rows]
    without_artifacts = [
        job.job_id
        for job in todo
        if not (_has_artifacts(store, results[job.job_id]) and _has_artifacts(store, results[job.reference_job_id]))  # type: ignore[arg-type]
    ]
    todo = [job for job in todo if job.job_id not in set(without_artifacts)]
    by_id = {job.job_id: job for job in pairs}
    for job_id in list(without_artifacts):  # exact matches need no artifacts: their records say so
        job = by_id[job_id]
        result, reference = results[job_id], results[job.reference_job_id]
        assert result is not None and reference is not None
        exact = exact_by_hashes(store, result, reference)
        if exact is not None:
            rows[job_id] = (
                pair_columns(job, result, reference)
                | {
                    "device_name": result.device_name,
                    "reference_device_name": reference.device_name,
                    "inputs_sha256": pair_inputs_sha256(result, reference),
                }
                | exact
            )
            without_artifacts.remove(job_id)
    jobs_without_reference = sum(
        1 for j in jobs if not j.is_reference and results[j.job_id] and not results[j.reference_job_id]
    )

    def save(scored_now: int) -> pa.Table:
        table = _write_scores(store, jobs, rows)
        store.write_json(
            SCORES_META_FILE,
            {
                "metrics": usable,
                "skipped_metrics": skipped,
                "metric_weights": weights,
                "device": device,
                "pairs": table.num_rows,
                "pairs_scored_now": scored_now,
                "pairs_without_artifacts": len(without_artifacts),
                "jobs_without_reference": jobs_without_reference,
            },
        )
        return table

    saved_at = time.monotonic()
    done = 0
    for scored in _scored_rows(store_url, todo, usable, device, workers, results):
        rows.update(scored)
        done += len(scored)
        if time.monotonic() - saved_at >= SAVE_EVERY_S and done < len(todo):
            save(done)  # a scoring run that is stopped keeps what it scored
            saved_at = time.monotonic()
        if progress is not None:
            progress(done, len(todo))
    refresh_manifest(store, jobs)  # runs on GPU hosts without pyarrow leave it to this step
    return save(len(todo))


PROMPTS_PER_TASK = 4
"""Prompts a scoring process takes at a time (each loads its prompts' references once)."""


def _score_jobs(store_url: str, todo: list[Job], metrics: list[str], device: str) -> dict[str, dict[str, Any]]:
    """The rows of ``todo``'s pairs (a scoring process's task: it reads the results itself)."""
    store = Store(store_url)
    ids = {i for job in todo for i in (job.job_id, job.reference_job_id)}
    return dict(_each_row(store, todo, metrics, device, {i: read_result(store, i) for i in ids}))


def _each_row(
    store: Store, todo: list[Job], metrics: list[str], device: str, results: dict[str, JobResult | None]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each of ``todo``'s pairs' job id and row, one at a time (jobs in prompt order: each prompt's
    reference loaded once)."""
    cache: dict[str, _Loaded] = {}
    for job in todo:
        result, reference = results[job.job_id], results[job.reference_job_id]
        assert result is not None and reference is not None
        if job.reference_job_id not in cache:
            cache.clear()  # jobs are in prompt order: keep only the current prompt's reference
            cache[job.reference_job_id] = _Loaded(store, reference)
        loaded = _Loaded(store, result)
        row = pair_columns(job, result, reference) | {
            "device_name": loaded.result.device_name,
            "reference_device_name": cache[job.reference_job_id].result.device_name,
            "inputs_sha256": pair_inputs_sha256(result, reference),
        }
        row.update(score_pair(cache[job.reference_job_id], loaded, metrics, device))
        yield job.job_id, row


def _worker_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _scored_rows(
    store_url: str,
    todo: list[Job],
    metrics: list[str],
    device: str,
    workers: int,
    results: dict[str, JobResult | None],
) -> Iterator[dict[str, dict[str, Any]]]:
    """``todo``'s rows: one pair at a time in this process (from ``results``, read already), or a
    few prompts' pairs at a time over ``workers`` processes (spawned: a CUDA metric device cannot
    be forked)."""
    by_prompt: dict[str, list[Job]] = {}
    for job in todo:
        by_prompt.setdefault(job.reference_job_id, []).append(job)
    groups = list(by_prompt.values())
    tasks = [
        [job for group in groups[i : i + PROMPTS_PER_TASK] for job in group]
        for i in range(0, len(groups), PROMPTS_PER_TASK)
    ]
    if workers <= 1 or len(tasks) <= 1:
        for job_id, row in _each_row(Store(store_url), todo, metrics, device, results):
            yield {job_id: row}
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    processes = min(workers, len(tasks))
    threads = max(1, torch.get_num_threads() // processes)
    with ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_threads, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(_score_jobs, store_url, task, metrics, device) for task in tasks]
        for future in as_completed(futures):
            yield future.result()


def read_scores(store: Store) -> pa.Table:
    """The scores table of a store."""
    return store.read_parquet(SCORES_FILE)


def parquet_bytes(table: pa.Table) -> bytes:
    """The Parquet bytes of a table (for copying scores out of a store)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
