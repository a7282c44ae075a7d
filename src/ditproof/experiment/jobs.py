"""Jobs in the store: the plan, per-job results and failures, and the Parquet manifest.

The plan is stored twice: ``jobs.json`` (checksummed JSON, what runners read, so running needs no
pyarrow: GPU hosts may lack it) and ``jobs.parquet`` (for queries). The manifest is rebuilt at the
end of each run where pyarrow is installed, and by ``score`` otherwise.

A job is done when its ``result.json`` exists and verifies; it is written after every artifact,
so a run killed at any moment leaves each job either done (all artifacts present and listed with
their sha256) or not done (redone on the next run). A finished job is never redone.
"""

from __future__ import annotations

import importlib.util
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from ditproof.errors import IntegrityError, InvalidInputError
from ditproof.experiment.config import Experiment
from ditproof.experiment.plan import Job
from ditproof.experiment.store import Store, job_prefix
from ditproof.hashing import canonical_json

if TYPE_CHECKING:
    import pyarrow as pa

EXPERIMENT_FILE = "experiment.json"
PLAN_FILE = "jobs.json"
PLAN_TABLE_FILE = "jobs.parquet"
MANIFEST_FILE = "manifest.parquet"
SKIPPED_FILE = "skipped.json"
RESULT_SCHEMA: Literal["ditproof.experiment-result/1"] = "ditproof.experiment-result/1"


class Artifact(BaseModel):
    """One file of a job in the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str
    sha256: str
    size: int


class JobResult(BaseModel):
    """What a finished job produced (``result.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.experiment-result/1"] = RESULT_SCHEMA
    job_id: str
    configuration: str
    artifacts: list[Artifact]
    video_sha256: str
    final_latent_sha256: str
    noise_sha256: str
    seed: int
    device: str
    device_name: str
    runtime_class: str
    total_s: float
    forward_passes: int
    worker: str
    run_id: str
    attempt: int
    finished_at: str

    def artifact(self, name: str) -> Artifact:
        """The artifact called ``name``.

        Raises:
            IntegrityError: when the result lists no such artifact.
        """
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise IntegrityError(f"job {self.job_id}: result lists no artifact {name!r}")


class JobFailure(BaseModel):
    """The last failure of a job (``failure.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    configuration: str
    attempt: int
    error_type: str
    message: str
    worker: str
    run_id: str
    failed_at: str


def result_path(job_id: str) -> str:
    """Where a job's result document lives."""
    return f"{job_prefix(job_id)}/result.json"


def failure_path(job_id: str) -> str:
    """Where a job's last failure lives."""
    return f"{job_prefix(job_id)}/failure.json"


def save_plan(store: Store, experiment: Experiment, jobs: list[Job]) -> None:
    """Writes the experiment and its jobs into the store (replacing an earlier plan)."""
    store.write_json(EXPERIMENT_FILE, experiment.model_dump(mode="json"))
    store.write_json(PLAN_FILE, [j.model_dump(mode="json") for j in jobs])
    if not have_pyarrow():
        return
    import pyarrow as pa

    table = pa.table(
        {
            "job_id": [j.job_id for j in jobs],
            "reference_job_id": [j.reference_job_id for j in jobs],
            "prompt_id": [j.prompt_id for j in jobs],
            "configuration": [j.configuration for j in jobs],
            "label": [j.label for j in jobs],
            "world_size": [j.world_size for j in jobs],
            "gpu_model": [j.gpu_model for j in jobs],
            "job_json": [canonical_json(j.model_dump(mode="json")).decode() for j in jobs],
        }
    )
    store.write_parquet(PLAN_TABLE_FILE, table)


def load_experiment_from_store(store: Store) -> Experiment:
    """The experiment saved by ``plan``.

    Raises:
        InvalidInputError: when the store has no plan.
    """
    if not store.exists(EXPERIMENT_FILE):
        raise InvalidInputError(f"store {store.url}: no experiment here; run `ditproof experiment plan` first")
    # JSON mode: the strict option models accept JSON arrays for their tuples.
    return Experiment.model_validate_json(json.dumps(store.read_json(EXPERIMENT_FILE)))


def load_plan(store: Store) -> list[Job]:
    """The jobs saved by ``plan``, in plan order.

    Raises:
        InvalidInputError: when the store has no plan.
    """
    if not store.exists(PLAN_FILE):
        raise InvalidInputError(f"store {store.url}: no plan here; run `ditproof experiment plan` first")
    # JSON mode: the strict option models accept JSON arrays for their tuples.
    return [Job.model_validate_json(json.dumps(job)) for job in store.read_json(PLAN_FILE)]


def have_pyarrow() -> bool:
    """Whether pyarrow is importable (GPU hosts may run jobs without it)."""
    return importlib.util.find_spec("pyarrow") is not None


def read_result(store: Store, job_id: str) -> JobResult | None:
    """The job's result, or None when it is not done (missing, or unreadable: then it is redone)."""
    path = result_path(job_id)
    if not store.exists(path):
        return None
    try:
        return store.read_model(path, JobResult)
    except IntegrityError:
        return None


def read_failure(store: Store, job_id: str) -> JobFailure | None:
    """The job's last recorded failure, if any."""
    path = failure_path(job_id)
    if not store.exists(path):
        return None
    try:
        return store.read_model(path, JobFailure)
    except IntegrityError:
        return None


def verify_result(store: Store, result: JobResult) -> None:
    """Re-reads every artifact of a finished job and checks its sha256.

    Raises:
        IntegrityError: naming the first artifact that differs.
    """
    for artifact in result.artifacts:
        store.read_bytes(artifact.path, artifact.sha256)


def refresh_manifest(store: Store, jobs: list[Job], skipped: dict[str, str] | None = None) -> pa.Table | None:
    """Rebuilds ``manifest.parquet``: the plan with each job's status, checksums, device and timings.

    ``status`` is ``done``, ``failed`` (a failure recorded and no result), ``skipped`` (not runnable
    where the last run ran: ``reason`` says why) or ``pending``. Returns None (and writes nothing)
    without pyarrow; skip reasons are also kept in ``skipped.json`` so a later rebuild has them.
    """
    if skipped is None:
        skipped = store.read_json(SKIPPED_FILE) if store.exists(SKIPPED_FILE) else {}
    else:
        store.write_json(SKIPPED_FILE, skipped)
    if not have_pyarrow():
        return None
    import pyarrow as pa

    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "job_id",
            "reference_job_id",
            "prompt_id",
            "configuration",
            "label",
            "status",
            "reason",
            "attempt",
            "video_sha256",
            "final_latent_sha256",
            "noise_sha256",
            "seed",
            "device_name",
            "runtime_class",
            "total_s",
            "forward_passes",
            "video_bytes",
            "result_path",
        )
    }
    for job in jobs:
        result = read_result(store, job.job_id)
        failure = None if result else read_failure(store, job.job_id)
        if result is not None:
            status, reason = "done", ""
        elif failure is not None:
            status, reason = "failed", f"{failure.error_type}: {failure.message}"
        elif job.job_id in skipped:
            status, reason = "skipped", skipped[job.job_id]
        else:
            status, reason = "pending", ""
        row: dict[str, object] = {
            "job_id": job.job_id,
            "reference_job_id": job.reference_job_id,
            "prompt_id": job.prompt_id,
            "configuration": job.configuration,
            "label": job.label,
            "status": status,
            "reason": reason,
            "attempt": result.attempt if result else (failure.attempt if failure else 0),
            "video_sha256": result.video_sha256 if result else None,
            "final_latent_sha256": result.final_latent_sha256 if result else None,
            "noise_sha256": result.noise_sha256 if result else None,
            "seed": result.seed if result else None,
            "device_name": result.device_name if result else None,
            "runtime_class": result.runtime_class if result else None,
            "total_s": result.total_s if result else None,
            "forward_passes": result.forward_passes if result else None,
            "video_bytes": result.artifact("video").size if result else None,
            "result_path": result_path(job.job_id) if result else None,
        }
        for name, value in row.items():
            columns[name].append(value)
    table = pa.table(columns)
    store.write_parquet(MANIFEST_FILE, table)
    return table
