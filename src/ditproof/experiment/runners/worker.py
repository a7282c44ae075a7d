"""Running one job: the code every launcher's worker calls (in process, pool processes, Ray
actors, torchrun ranks).

A worker holds one loaded model at a time (reloaded when a job needs other load options), runs
the job through :func:`ditproof.generation.execute.execute` into a local temporary folder, copies
the artifacts into the store, and writes ``result.json`` last. :func:`run_task` is the worker's
edge: a job that raises comes back as a failed :class:`Outcome` for the scheduler
(:mod:`ditproof.experiment.runners.scheduler`) to record and retry.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ditproof.experiment.jobs import Artifact, JobFailure, JobResult, failure_path, read_result, result_path
from ditproof.experiment.plan import Job
from ditproof.experiment.store import Store, job_prefix
from ditproof.models.quiet import quiet_libraries
from ditproof.protocol.options import GPU_ONLY_BACKENDS


@dataclass(frozen=True)
class Environment:
    """What this machine offers jobs: CUDA or not, how many GPUs, their names."""

    cuda: bool
    gpu_names: tuple[str, ...]

    @property
    def gpu_count(self) -> int:
        """Visible GPUs."""
        return len(self.gpu_names)


def detect_environment() -> Environment:
    """The visible GPUs of this process (none on a CPU machine)."""
    import torch

    if not torch.cuda.is_available():
        return Environment(cuda=False, gpu_names=())
    names = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Environment(cuda=True, gpu_names=names)


def why_not_runnable(job: Job, env: Environment) -> str | None:
    """None when ``job`` can run here, else the reason it cannot (the job is skipped, not failed)."""
    needs_cuda = job.options.device == "cuda" or job.options.attention_backend in GPU_ONLY_BACKENDS
    if needs_cuda and not env.cuda:
        return f"needs a CUDA GPU (device {job.options.device}, attention {job.options.attention_backend})"
    tp, cp, cfg = job.options.tp_degree, job.options.cp_degree, job.options.cfg_degree
    if tp > 1 and (cp > 1 or cfg > 1):
        return f"tp {tp} with cp {cp}, cfg {cfg}: tensor parallelism runs alone"
    if cp > 1 and not env.cuda:
        return f"needs {cp * cfg} GPUs (context parallelism uses NCCL all-to-all)"
    layout = f"tp {tp} × cp {cp} × cfg {cfg}"
    if job.world_size > 1 and env.cuda and env.gpu_count < job.world_size:
        return f"needs {job.world_size} GPUs ({layout}); {env.gpu_count} here"
    if job.world_size > 1 and job.options.device == "cuda" and not env.cuda:
        return f"needs {job.world_size} GPUs ({layout}); none here"
    if job.gpu_model is not None and not any(job.gpu_model.lower() in name.lower() for name in env.gpu_names):
        here = ", ".join(env.gpu_names) or "no GPU"
        return f"needs a GPU whose name contains {job.gpu_model!r} (hardware deviation); here: {here}"
    return None


def load_key(job: Job) -> tuple[Any, ...]:
    """What decides the loaded model: jobs with the same key share one load (its load options:
    placement, dtypes, weights, sharding, kernels, engine)."""
    return (job.model, job.model_path, job.options.load)


def now() -> str:
    """UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class JobWorker:
    """Runs jobs on one device, keeping the last loaded model.

    Args:
        store_url: the experiment store.
        device: ``cpu`` or ``cuda:N`` (replaces the job options' device class; a job whose
            configuration runs on the CPU runs on the CPU whatever the worker's device).
        run_id: the id of the run (recorded in each result).
        threads: CPU threads for torch (None: torch's default).
    """

    def __init__(self, store_url: str, device: str, run_id: str, threads: int | None = None):
        self.store = Store(store_url)
        self.device = device
        self.run_id = run_id
        self.name = f"{socket.gethostname()}:{os.getpid()}:{device}"
        self._key: tuple[Any, ...] | None = None
        self._model: Any = None
        self._load_s = 0.0
        quiet_libraries()
        if threads:
            import torch

            torch.set_num_threads(threads)

    def _model_for(self, job: Job, options: Any) -> Any:
        from ditproof.models.registry import load_model

        key = (*load_key(job), options.device)
        if key != self._key:
            self._model = None  # free the previous model before loading the next one
            started = time.perf_counter()
            self._model = load_model(job.model, options.load, job.model_path)
            self._load_s = time.perf_counter() - started
            self._key = key
        return self._model

    def run(self, job: Job, attempt: int = 1) -> JobResult:
        """Runs ``job`` unless it is already done; returns its result.

        Raises:
            Exception: whatever the generation raised (the runner records it and retries).
        """
        existing = read_result(self.store, job.job_id)
        if existing is not None:
            return existing
        from ditproof.generation.execute import execute
        from ditproof.protocol.record import RECORD_FILE, VIDEO_FILE

        device = "cpu" if job.options.device == "cpu" else self.device
        options = job.options.model_copy(update={"device": device})
        if job.world_size > 1:
            from ditproof.models.parallel import init_parallel

            # Under torchrun: joins the process group (NCCL on GPUs, gloo for CPU tensor parallelism).
            options = init_parallel(options)
        model = self._model_for(job, options)
        prefix = job_prefix(job.job_id)
        self.store.write_model(f"{prefix}/job.json", job)
        with tempfile.TemporaryDirectory(prefix="ditproof-job-") as tmp:
            record = execute(
                job.request,
                model,
                options.run,
                tmp,
                request_id=job.request_id,
                entropy=job.entropy,
                load_seconds=self._load_s,
            )
            self._load_s = 0.0
            artifacts = []
            files = [("video", VIDEO_FILE), ("record", RECORD_FILE)]
            files += [(f"latent:{c.name}", c.file) for c in record.checkpoints]
            for name, relative in files:
                sha, size = self.store.put_file(Path(tmp) / relative, f"{prefix}/{relative}")
                artifacts.append(Artifact(name=name, path=f"{prefix}/{relative}", sha256=sha, size=size))
        final = next(c for c in record.checkpoints if c.name == "final")
        result = JobResult(
            job_id=job.job_id,
            configuration=job.configuration,
            artifacts=artifacts,
            video_sha256=record.video.sha256,
            final_latent_sha256=final.tensor_sha256,
            noise_sha256=record.noise.sha256,
            seed=record.seed,
            device=device,
            device_name=record.runtime.device_name,
            runtime_class=record.runtime_class,
            total_s=record.timings.total_s,
            forward_passes=record.timings.forward_passes,
            worker=self.name,
            run_id=self.run_id,
            attempt=attempt,
            finished_at=now(),
        )
        self.store.write_model(result_path(job.job_id), result)
        self.store.remove(failure_path(job.job_id))
        return result


@dataclass(frozen=True)
class Task:
    """One attempt of one job, as the scheduler hands it to a launcher (attempts count from 1)."""

    job: Job
    attempt: int


@dataclass(frozen=True)
class Outcome:
    """How one task ended, as a launcher reports it to the scheduler.

    ``done``: the job's result is in the store; ``failed``: this attempt failed (``error_type`` and
    ``message`` say how, ``worker`` where); ``not-run``: the launch stopped before reaching the task
    (torchrun launches stop at their first failing job), so the attempt is not used up.
    """

    job_id: str
    attempt: int
    status: Literal["done", "failed", "not-run"]
    seconds: float = 0.0
    error_type: str = ""
    message: str = ""
    worker: str = ""


def run_task(worker: JobWorker, task: Task) -> Outcome:
    """Runs one task on ``worker`` and says how it ended; never raises for a failing job."""
    started = time.perf_counter()
    try:
        worker.run(task.job, task.attempt)
    except Exception as exc:  # the worker's edge: every failure goes back to the scheduler, which records it
        return Outcome(task.job.job_id, task.attempt, "failed", 0.0, type(exc).__name__, str(exc), worker.name)
    return Outcome(task.job.job_id, task.attempt, "done", time.perf_counter() - started, worker=worker.name)


def write_failure(
    store: Store, job: Job, attempt: int, error_type: str, message: str, worker: str, run_id: str
) -> JobFailure:
    """Records the last failure of ``job`` in the store."""
    failure = JobFailure(
        job_id=job.job_id,
        configuration=job.configuration,
        attempt=attempt,
        error_type=error_type,
        message=message[:2000],
        worker=worker,
        run_id=run_id,
        failed_at=now(),
    )
    store.write_model(failure_path(job.job_id), failure)
    return failure
