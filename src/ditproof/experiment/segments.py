"""Segment scores: the evidence of the checkpoints and spot-check modes, per job.

The validator of the checkpoints mode re-runs every segment of the executor's committed trajectory
from the executor's own checkpoint (the first from the seed's noise) and compares the segment's
end with the executor's next checkpoint; a spot check does the same for a few segments drawn per
expert phase (docs/validation.md). ``ditproof experiment segments`` measures exactly that for every
finished non-reference job of a store: the **validator** is the reference configuration (loaded
once, its own run options), the **executor** the job, and each job is judged as the record a
cheater would submit — claiming the reference's request, seed and options (a liar's record) while
committing its own latents:

* the claimed segments are the reference record's (its checkpoint steps, in order);
* for each claimed checkpoint the job commits the latent and solver history of its own checkpoint
  nearest in the trajectory (the same step when its schedule has the reference's step count; a
  job with another step count, such as ``steps-39``, commits the checkpoint at the nearest fraction
  of its run: what it can forge without paying for the steps it claims).

One row per job in ``segments.parquet``: ``noise_anchor_ratio`` (the largest norm, over the seed's
noise's, of the clean latent a claimed checkpoint implies) and ``noise_anchor_excess`` (the largest
such norm over its bound at its noise level, half what another noise implies: the validator's noise
anchor refuses above 1), ``segment_rel_l2:<end checkpoint name>`` per segment (the
larger of the end latent's and the solver history's relative L2, as the validator scores a
segment; ``inf`` when the segment cannot be re-run from the job's file), ``segments`` and
``segments_exact`` (end states equal bit for bit), the classes compared and ``inputs_sha256``
(the job's and reference's results and the validator's load and run options): rows stay valid
while those do. Rows are saved every ``SAVE_EVERY_S`` seconds; a stopped run resumes, and
``--shard I/N`` splits the jobs over processes (each writes ``segments-I-of-N.parquet``; the
analysis reads them all).

Cost: re-running every segment is one generation per job (the denoising steps; the last segment
decodes the frames too). ``max_prompts`` limits the work to N of the plan's prompts: the first N,
or with ``spread`` N spread evenly over the plan (as a configuration's ``prompt_selection``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors

from ditproof.errors import InvalidInputError
from ditproof.experiment.config import selected_prompts
from ditproof.experiment.findings import SEGMENT_KEY_PREFIX, segment_key
from ditproof.experiment.jobs import JobResult, load_plan, read_result
from ditproof.experiment.plan import Job
from ditproof.experiment.score import pair_columns, rows_table
from ditproof.experiment.store import Store
from ditproof.generation.solver_state import ResumePoint, SolverState
from ditproof.hashing import canonical_json, sha256_bytes
from ditproof.protocol.options import check_device
from ditproof.protocol.record import CheckpointRef, InferenceRecord

SEGMENTS_FILE = "segments.parquet"
NOISE_ANCHOR_COLUMN = "noise_anchor_ratio"
"""A segment row's largest implied clean-latent norm over the seed's noise (rows of older runs lack it)."""
NOISE_ANCHOR_EXCESS_COLUMN = "noise_anchor_excess"
"""The largest implied norm over its bound at its noise level: above 1 the validator refuses."""
SAVE_EVERY_S = 30.0
UNMEASURABLE = float("inf")
"""A segment the validator cannot re-run from the job's file scores this (caught at any threshold)."""


def shard_file(shard: tuple[int, int] | None) -> str:
    """``segments.parquet``, or ``segments-I-of-N.parquet`` for one shard's process."""
    return SEGMENTS_FILE if shard is None else f"segments-{shard[0]}-of-{shard[1]}.parquet"


@dataclass(frozen=True)
class _Side:
    """One job's record and checkpoint files, read from the store and checked against its result."""

    record: InferenceRecord
    points: dict[str, ResumePoint]

    @classmethod
    def read(cls, store: Store, result: JobResult) -> _Side:
        record = InferenceRecord.model_validate_json(
            store.read_bytes(result.artifact("record").path, result.artifact("record").sha256)
        )
        points = {}
        for ref in record.checkpoints:
            artifact = result.artifact(f"latent:{ref.name}")
            tensors = load_safetensors(store.read_bytes(artifact.path, artifact.sha256))
            solver = SolverState.from_tensors(tensors)
            points[ref.name] = ResumePoint(step=solver.step_index, latent=tensors["latent"], solver=solver)
        return cls(record, points)


def _nearest(job: InferenceRecord, step: int, steps: int) -> CheckpointRef:
    """The job's checkpoint nearest to the claimed ``step`` of ``steps`` (same step when the step
    counts agree; else the nearest fraction of the run; ties: the later checkpoint)."""
    own = job.request.num_inference_steps
    candidates = [c for c in job.checkpoints if c.step >= 1]
    return min(candidates, key=lambda c: (abs(c.step * steps - step * own), -c.step, c.name))


def claimed_checkpoints(reference: InferenceRecord, job: _Side) -> list[Any]:
    """The liar's checkpoints (module docstring): the reference record's names and steps, each
    holding the job's nearest checkpoint (its hashes, latent and solver history)."""
    from ditproof.validation.segments import Checkpoint

    steps = reference.request.num_inference_steps
    checkpoints = []
    for ref in sorted(reference.checkpoints, key=lambda c: (c.step, c.name)):
        if ref.step == 0:
            source = next(c for c in job.record.checkpoints if c.step == 0)
        else:
            source = _nearest(job.record, ref.step, steps)
        point = job.points[source.name]
        claimed = ref.model_copy(
            update={"sha256": source.sha256, "tensor_sha256": source.tensor_sha256, "file": source.file}
        )
        checkpoints.append(Checkpoint(claimed, point))
    return checkpoints


def score_job(
    reference: InferenceRecord,
    job: _Side,
    model: Any,
    options: Any,
    anchor: tuple[torch.Tensor, list[float]] | None = None,
) -> dict[str, Any]:
    """Every segment of one job re-run by the validator: ``segment_rel_l2:<end>`` and the counts;
    with ``anchor`` (the seed's noise and the schedule's noise level after each step), also
    ``noise_anchor_ratio``: the largest clean-latent norm (over the noise's) that the claimed
    checkpoints imply, as the validator's noise anchor measures it, and ``noise_anchor_excess``:
    the largest such norm over its bound."""
    from ditproof.validation.segments import (
        noise_anchor_bound,
        noise_anchor_ratios,
        rerun_segment,
        trajectory_segments,
    )

    claimed = claimed_checkpoints(reference, job)
    segments = trajectory_segments(claimed)
    row: dict[str, Any] = {"segments": len(segments), "segments_exact": 0}
    if anchor is not None:
        found = noise_anchor_ratios(anchor[0], claimed[1:], anchor[1])
        row[NOISE_ANCHOR_COLUMN] = largest([ratio for _, _, ratio in found])
        row[NOISE_ANCHOR_EXCESS_COLUMN] = largest([ratio / noise_anchor_bound(sigma) for _, sigma, ratio in found])
    for segment in segments:
        run = rerun_segment(reference, model, options, segment)
        score = run.score
        row[segment_key(segment.end.name)] = UNMEASURABLE if score is None else float(score)
        row["segments_exact"] += int(run.exact)
    return row


def largest(values: list[float]) -> float | None:
    """The largest of ``values``; NaN if any is (a latent that is not finite); None if there are none."""
    return float("nan") if any(v != v for v in values) else max(values, default=None)


def _inputs_sha256(result: JobResult, reference: JobResult, validator: Job) -> str:
    spec = {
        "job": [result.video_sha256, result.final_latent_sha256],
        "reference": [reference.video_sha256, reference.final_latent_sha256],
        "validator": validator.options.model_dump(mode="json", exclude={"device"}),
    }
    return sha256_bytes(canonical_json(spec))


def read_segment_rows(store: Store) -> list[dict[str, Any]]:
    """Every segment row of the store (``segments.parquet`` and the shards'), first per job wins."""
    rows: dict[str, dict[str, Any]] = {}
    names = [SEGMENTS_FILE, *sorted(_shard_files(store))]
    for name in names:
        if store.exists(name):
            for row in store.read_parquet(name).to_pylist():
                rows.setdefault(row["job_id"], row)
    return list(rows.values())


def _shard_files(store: Store) -> list[str]:
    try:
        found = store.fs.glob(store.path("segments-*-of-*.parquet"))
    except (OSError, ValueError):
        return []
    return [str(path).rsplit("/", 1)[-1] for path in found]


SEGMENT_COLUMNS = ("segments", "segments_exact", NOISE_ANCHOR_COLUMN, NOISE_ANCHOR_EXCESS_COLUMN)


def with_segment_columns(rows: list[dict[str, Any]], segment_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score rows with their job's segment columns added (``segment_rel_l2:*``, ``segments``,
    ``segments_exact`` and the noise anchor's); a job without a segment row gets none."""
    by_job = {
        r["job_id"]: {k: v for k, v in r.items() if k.startswith(SEGMENT_KEY_PREFIX) or k in SEGMENT_COLUMNS}
        for r in segment_rows
    }
    return [row | by_job.get(row.get("job_id"), {}) for row in rows]


def merged_segment_rows(stores: list[Store], results: dict[str, JobResult | None]) -> list[dict[str, Any]]:
    """The segment rows of ``stores`` (first per job wins) whose job is done in ``results``."""
    rows: dict[str, dict[str, Any]] = {}
    for store in stores:
        for row in read_segment_rows(store):
            if results.get(row["job_id"]) is not None:
                rows.setdefault(row["job_id"], row)
    return list(rows.values())


def write_segment_rows(store: Store, rows: list[dict[str, Any]]) -> pa.Table:
    """Writes ``rows`` as the store's ``segments.parquet``."""
    return _write(store, SEGMENTS_FILE, {row["job_id"]: row for row in rows})


def _write(store: Store, name: str, rows: dict[str, dict[str, Any]]) -> pa.Table:
    table = rows_table(list(rows.values()))
    store.write_parquet(name, table)
    return table


def score_segments(
    store_url: str,
    device: str = "cpu",
    *,
    max_prompts: int | None = None,
    spread: bool = False,
    configurations: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """Re-runs every segment of the finished non-reference jobs (module docstring); writes the rows.

    Args:
        store_url: the experiment store (with the jobs' checkpoint files: not a thin copy).
        device: where the validator runs (``cpu`` or ``cuda``).
        max_prompts: only jobs of ``max_prompts`` of the plan's prompts (the first ones).
        spread: ``max_prompts`` spread evenly over the plan's prompts instead of the first.
        configurations: only these configurations (default: every non-reference one).
        shard: ``(I, N)``: only every N-th job from the I-th (one of N processes side by side).
        progress: called with (jobs done now, jobs to do).

    Returns:
        This process's rows (also written: ``segments.parquet`` or the shard's file).

    Raises:
        InvalidInputError: an unknown configuration, or no finished reference job to load.
    """
    from ditproof.generation.generate import step_sigmas
    from ditproof.models.registry import load_model

    try:
        check_device(device)
    except ValueError as exc:
        raise InvalidInputError(f"device: {exc}") from None
    if max_prompts is not None and max_prompts < 1:
        raise InvalidInputError(f"max_prompts: got {max_prompts}; allowed: 1 or more")
    store = Store(store_url)
    jobs = load_plan(store)
    known = sorted({j.configuration for j in jobs if not j.is_reference})
    unknown = sorted(set(configurations or []) - set(known))
    if unknown:
        raise InvalidInputError(f"configurations: got {unknown}; allowed: {', '.join(known)}")
    prompts = list(dict.fromkeys(j.prompt_id for j in jobs))
    chosen = selected_prompts(len(prompts), max_prompts or len(prompts), "spread" if spread else "first")
    kept_prompts = {prompts[i] for i in chosen}
    by_id = {j.job_id: j for j in jobs}
    results = {j.job_id: read_result(store, j.job_id) for j in jobs if j.prompt_id in kept_prompts}
    todo = [
        j
        for j in jobs
        if not j.is_reference
        and j.prompt_id in kept_prompts
        and (configurations is None or j.configuration in configurations)
        and results.get(j.job_id) is not None
        and results.get(j.reference_job_id) is not None
    ]
    if shard is not None:
        todo = todo[shard[0] :: shard[1]]
    name = shard_file(shard)
    rows: dict[str, dict[str, Any]] = {}
    if store.exists(name):
        rows = {r["job_id"]: r for r in store.read_parquet(name).to_pylist()}
    references = [by_id[j.reference_job_id] for j in todo]
    if not references:
        return _write(store, name, rows)
    validator = references[0]
    options = validator.options.model_copy(update={"device": device})
    model = None
    saved_at = time.monotonic()
    cached: tuple[str, InferenceRecord, tuple[torch.Tensor, list[float]]] | None = None
    for index, job in enumerate(todo):
        result, reference = results[job.job_id], results[job.reference_job_id]
        assert result is not None and reference is not None
        digest = _inputs_sha256(result, reference, validator)
        if rows.get(job.job_id, {}).get("inputs_sha256") == digest:
            continue
        if model is None:
            model = load_model(validator.model, options.load, validator.model_path)
        if cached is None or cached[0] != job.reference_job_id:
            record_artifact = reference.artifact("record")
            record = InferenceRecord.model_validate_json(store.read_bytes(record_artifact.path, record_artifact.sha256))
            initial = reference.artifact("latent:initial")  # the seed's noise
            noise = load_safetensors(store.read_bytes(initial.path, initial.sha256))["latent"]
            cached = (
                job.reference_job_id,
                record,
                (noise, step_sigmas(model.pipeline.scheduler.config, record.request)),
            )
        row = pair_columns(job, result, reference) | {"inputs_sha256": digest}
        row.update(score_job(cached[1], _Side.read(store, result), model, options.run, cached[2]))
        rows[job.job_id] = row
        if time.monotonic() - saved_at >= SAVE_EVERY_S:
            _write(store, name, rows)
            saved_at = time.monotonic()
        if progress is not None:
            progress(index + 1, len(todo))
    return _write(store, name, rows)
