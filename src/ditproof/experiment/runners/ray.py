"""The Ray runner: the same jobs and store as the local runner, spread over a Ray cluster.

Needs the optional extra ``ditproof[ray]``. One actor per slot (a GPU on GPU clusters, a CPU
otherwise) holds a :class:`~ditproof.experiment.runners.worker.JobWorker` and its loaded model;
the driver hands each actor one job at a time, retries failed jobs (a dead actor is replaced) and
reports the rest. The store must be reachable from every node (a shared folder or ``s3://``).

Authentication: Ray 2.60 turns token authentication on by default.

* ``address=None`` starts a local cluster. Unless ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN`` or
  ``RAY_AUTH_TOKEN_PATH`` is set, the runner puts a fresh random token in ``RAY_AUTH_TOKEN``
  (inherited by the cluster's processes): Ray turns token authentication on with it, never writes
  ``~/.ray/auth_token``, and nothing else on the machine can join.
* ``address="host:port"`` (``--ray-address``) joins a running cluster. If it uses tokens, set
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (or ``RAY_AUTH_TOKEN_PATH``) as printed by
  ``ray get-auth-token``; a refused connection is reported with that advice.

Multi-GPU jobs (tensor or context parallelism) are not run through Ray: they are skipped with a
reason and run with the local runner, which launches them under torchrun.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from ditproof.errors import RuntimeUnavailableError
from ditproof.experiment.jobs import load_plan
from ditproof.experiment.plan import Job
from ditproof.experiment.runners.common import Event, ProgressCallback, RunSummary, finish_run, new_run_id, select_jobs
from ditproof.experiment.runners.worker import Environment, write_failure
from ditproof.experiment.store import Store


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeUnavailableError(
            "ray: not installed; allowed: install the extra (pip install 'ditproof[ray]') or use the local runner"
        ) from None
    return ray


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """Starts a local Ray cluster (``address=None``) or joins one, handling token authentication.

    Raises:
        RuntimeUnavailableError: Ray missing, or the cluster refused the connection.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    if address is None and not any(
        os.environ.get(n) for n in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    ):
        # Only the token is set: ray.init then turns token mode on itself (refreshing the config it
        # may have read at import), finds this token, and writes no ~/.ray/auth_token.
        os.environ["RAY_AUTH_TOKEN"] = uuid.uuid4().hex + uuid.uuid4().hex
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as exc:
        raise RuntimeUnavailableError(
            f"ray-address: cannot join {address or 'a new local cluster'} ({type(exc).__name__}: {exc}). If the "
            "cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) "
            "from `ray get-auth-token`"
        ) from None
    return ray


def _cluster_environment(ray: Any) -> tuple[Environment, int]:
    """What the cluster offers (GPU or not) and how many slots (actors) to start."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        # GPU names are not in the resources; the jobs' hardware requirement is checked by name when
        # a name is given (gpu_model), so report a generic name here and let such jobs be skipped.
        return Environment(cuda=True, gpu_names=tuple("cuda" for _ in range(gpus))), gpus
    return Environment(cuda=False, gpu_names=()), max(1, int(resources.get("CPU", 1)))


def run_ray(
    store_url: str,
    address: str | None = None,
    workers: int | None = None,
    retries: int = 1,
    configurations: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    progress: ProgressCallback | None = None,
    num_cpus: int | None = None,
    shutdown: bool = True,
) -> RunSummary:
    """Runs every pending job of the store's plan on a Ray cluster (see the module docstring).

    Args:
        store_url: the experiment store, reachable from every node.
        address: a running cluster's address; None starts a local one (with ``num_cpus``).
        workers: actors to start (default: one per GPU of the cluster, or per CPU).
        retries: extra attempts of a failing job.
        configurations: only these configurations.
        shard: ``(i, n)``: only the jobs of prompts in shard i of n (see ``prompt_shard``).
        progress: called after each event.
        num_cpus: CPUs of a local cluster (default: Ray's choice).
        shutdown: disconnect from (and stop a local) cluster at the end.
    """
    started = time.perf_counter()
    ray = connect(address, num_cpus)
    try:
        store = Store(store_url)
        jobs = load_plan(store)
        env, slots = _cluster_environment(ray)
        selection = select_jobs(store, jobs, env, configurations, shard)
        for job in selection.multi_gpu:
            selection.skipped[job.job_id] = "multi-GPU job: run it with the local runner (torchrun)"
        run_id = new_run_id()
        executed, failed = _dispatch(ray, store_url, selection.todo, env, workers or slots, run_id, retries, progress)
        return finish_run(store, jobs, selection, "ray", run_id, executed, failed, started)
    finally:
        if shutdown:
            ray.shutdown()


class _ActorBody:
    """The Ray actor: a JobWorker on the actor's device."""

    def __init__(self, store_url: str, device: str, run_id: str, threads: int | None):
        from ditproof.experiment.runners.worker import JobWorker

        self.worker = JobWorker(store_url, device, run_id, threads)

    def run(self, job_json: str, attempt: int) -> tuple[str, str, float]:
        job = Job.model_validate_json(job_json)
        t0 = time.perf_counter()
        try:
            self.worker.run(job, attempt)
        except Exception as exc:  # recorded in failure.json and returned to the driver
            self.worker.record_failure(job, attempt, exc)
            return "failed", f"{type(exc).__name__}: {exc}", 0.0
        return "done", "", time.perf_counter() - t0


def _dispatch(
    ray: Any,
    store_url: str,
    jobs: list[Job],
    env: Environment,
    slots: int,
    run_id: str,
    retries: int,
    progress: ProgressCallback | None,
) -> tuple[int, list[str]]:
    if not jobs:
        return 0, []
    resources = {"num_gpus": 1} if env.cuda else {"num_cpus": 1}
    actor_class = ray.remote(**resources)(_ActorBody)
    device = "cuda" if env.cuda else "cpu"

    def start_actor() -> Any:
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so its one GPU is cuda:0.
        return actor_class.remote(store_url, "cuda:0" if env.cuda else device, run_id, 1 if not env.cuda else None)

    pending = [(job, 1) for job in jobs]
    idle = [start_actor() for _ in range(min(slots, len(jobs)))]
    running: dict[Any, tuple[Any, Job, int]] = {}
    try:
        return _loop(ray, pending, idle, running, start_actor, store_url, run_id, retries, progress, len(jobs))
    finally:
        # Stop every actor before the cluster goes away: an actor still busy (or importing) when the
        # raylet stops can outlive it as an orphan process.
        for actor in idle + [entry[0] for entry in running.values()]:
            ray.kill(actor, no_restart=True)


def _loop(
    ray: Any,
    pending: list[tuple[Job, int]],
    idle: list[Any],
    running: dict[Any, tuple[Any, Job, int]],
    start_actor: Any,
    store_url: str,
    run_id: str,
    retries: int,
    progress: ProgressCallback | None,
    total: int,
) -> tuple[int, list[str]]:
    executed, failed = 0, list[str]()

    def report(event: Event) -> None:
        if progress is not None:
            progress(event, executed + len(failed), total)

    while pending or running:
        while pending and idle:
            job, attempt = pending.pop(0)
            actor = idle.pop()
            running[actor.run.remote(job.model_dump_json(), attempt)] = (actor, job, attempt)
            report(Event("start", job.job_id, job.configuration))
        ready, _ = ray.wait(list(running), num_returns=1)
        actor, job, attempt = running.pop(ready[0])
        try:
            status, detail, seconds = ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            status, detail, seconds = "failed", f"actor died: {exc}", 0.0
            write_failure(Store(store_url), job, attempt, "ActorDied", detail, "ray", run_id)
            actor = start_actor()
        idle.append(actor)
        if status == "done":
            executed += 1
            report(Event("done", job.job_id, job.configuration, "", seconds))
        elif attempt <= retries:
            pending.append((job, attempt + 1))
            report(Event("failed", job.job_id, job.configuration, detail))
        else:
            failed.append(job.job_id)
            report(Event("gave-up", job.job_id, job.configuration, detail))
    return executed, failed
