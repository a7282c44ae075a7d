"""The Ray runner: the same jobs, store and scheduler as the local runner, on a Ray cluster.

Needs the optional extra ``ditproof[ray]``. :class:`RayLauncher` starts one actor per slot (a GPU
on GPU clusters, a CPU otherwise), each holding a
:class:`~ditproof.experiment.runners.worker.JobWorker` and its loaded model, and hands each actor
one task at a time; an actor that dies fails its task (``ActorDied``) and is replaced. What runs
next, retries and failure records are the scheduler's
(:mod:`ditproof.experiment.runners.scheduler`). The store must be reachable from every node (a
shared folder or ``s3://``).

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
from ditproof.experiment.runners.scheduler import (
    ProgressCallback,
    RetryPolicy,
    RunSummary,
    Scheduler,
    finish_run,
    new_run_id,
    select_jobs,
)
from ditproof.experiment.runners.worker import Environment, Outcome, Task, run_task
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
    policy = RetryPolicy(retries)
    ray = connect(address, num_cpus)
    try:
        store = Store(store_url)
        jobs = load_plan(store)
        env, slots = _cluster_environment(ray)
        selection = select_jobs(store, jobs, env, configurations, shard)
        for job in selection.multi_gpu:
            selection.skipped[job.job_id] = "multi-GPU job: run it with the local runner (torchrun)"
        run_id = new_run_id()
        scheduler = Scheduler(store, run_id, policy, len(selection.todo), progress)
        if selection.todo:
            actors = min(workers or slots, len(selection.todo))
            scheduler.run(selection.todo, RayLauncher(ray, store_url, run_id, env, actors))
        return finish_run(store, jobs, selection, "ray", run_id, scheduler.executed, scheduler.failed, started)
    finally:
        if shutdown:
            ray.shutdown()


class _ActorBody:
    """The Ray actor: a JobWorker on the actor's device."""

    def __init__(self, store_url: str, device: str, run_id: str, threads: int | None):
        from ditproof.experiment.runners.worker import JobWorker

        self.worker = JobWorker(store_url, device, run_id, threads)

    def run(self, task: Task) -> Outcome:
        return run_task(self.worker, task)


class RayLauncher:
    """Runs tasks on Ray actors, one task per actor at a time.

    Args:
        ray: the connected ``ray`` module (see :func:`connect`).
        store_url: the experiment store, reachable from every node.
        run_id: the run's id.
        env: what the cluster offers (GPU actors or CPU actors).
        actors: how many actors to start.
    """

    name = "ray"
    shares_launches = False

    def __init__(self, ray: Any, store_url: str, run_id: str, env: Environment, actors: int):
        self._ray = ray
        resources = {"num_gpus": 1} if env.cuda else {"num_cpus": 1}
        actor_class = ray.remote(**resources)(_ActorBody)
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so its one GPU is cuda:0.
        args = (store_url, "cuda:0", run_id, None) if env.cuda else (store_url, "cpu", run_id, 1)
        self._start = lambda: actor_class.remote(*args)
        self._idle = [self._start() for _ in range(actors)]
        self._running: dict[Any, tuple[Any, Task]] = {}

    def free_slots(self) -> int:
        return len(self._idle)

    def submit(self, tasks: list[Task]) -> None:
        (task,) = tasks
        actor = self._idle.pop()
        self._running[actor.run.remote(task)] = (actor, task)

    def wait(self) -> list[Outcome]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        actor, task = self._running.pop(ready[0])
        try:
            outcome: Outcome = self._ray.get(ready[0])
        except self._ray.exceptions.RayActorError as exc:
            detail = f"actor died: {exc}"
            outcome = Outcome(task.job.job_id, task.attempt, "failed", 0.0, "ActorDied", detail, self.name)
            actor = self._start()
        self._idle.append(actor)
        return [outcome]

    def close(self) -> None:
        # Stop every actor before the cluster goes away: an actor still busy (or importing) when the
        # raylet stops can outlive it as an orphan process.
        for actor in self._idle + [entry[0] for entry in self._running.values()]:
            self._ray.kill(actor, no_restart=True)
        self._idle, self._running = [], {}
