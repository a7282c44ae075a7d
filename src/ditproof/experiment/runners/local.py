"""The local runner: this host's pending jobs, through the scheduler and this host's launchers.

* GPUs: one worker process per visible GPU (``cuda:0`` … ``cuda:N-1``), each holding its model,
  or ``workers_per_gpu`` processes per GPU for models too small to fill one (CPU threads are then
  shared out among all worker processes).
* CPU: ``workers`` processes sharing the cores (torch threads = cores // workers); ``workers=0``
  runs in this process (tests, debugging).
* Jobs that need several processes (tensor or context parallelism) run after the others, one
  group of jobs sharing weights and layout at a time, under torchrun; a host with at least 2·W
  GPUs runs launches of W processes side by side (``cp2`` on four GPUs is two launches at once).

Retries, failure records and resuming are the scheduler's
(:mod:`ditproof.experiment.runners.scheduler`): a killed run restarts where it stopped.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ditproof.experiment.jobs import load_plan
from ditproof.experiment.plan import Job
from ditproof.experiment.runners.launchers import (
    InProcessLauncher,
    ProcessPoolLauncher,
    TorchrunLauncher,
    launch_slots,
)
from ditproof.experiment.runners.scheduler import (
    ProgressCallback,
    RetryPolicy,
    RunSummary,
    Scheduler,
    finish_run,
    new_run_id,
    select_jobs,
)
from ditproof.experiment.runners.worker import detect_environment, load_key
from ditproof.experiment.store import Store


def _devices(workers: int | None, workers_per_gpu: int = 1) -> tuple[list[str], int | None]:
    """Worker devices and torch threads per worker."""
    env = detect_environment()
    cores = os.cpu_count() or 1
    if env.cuda:
        count = env.gpu_count if workers is None else min(workers, env.gpu_count)
        devices = [f"cuda:{i}" for i in range(count) for _ in range(workers_per_gpu)]
        return devices, (max(1, cores // len(devices)) if workers_per_gpu > 1 and devices else None)
    count = 1 if workers is None else workers
    return ["cpu"] * max(count, 0), max(1, cores // max(count, 1))


def launch_groups(jobs: list[Job]) -> list[list[Job]]:
    """Multi-process jobs grouped by weights and parallel layout: a group's launches share both."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault((*load_key(job), job.world_size), []).append(job)
    return list(groups.values())


def run_local(
    store_url: str,
    workers: int | None = None,
    retries: int = 1,
    configurations: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    progress: ProgressCallback | None = None,
    workers_per_gpu: int = 1,
    parallel_launches: int | None = None,
) -> RunSummary:
    """Runs every pending job of the store's plan that this machine can run.

    Args:
        store_url: the experiment store (with a plan).
        workers: worker processes (default: one per GPU, or 1 on a CPU machine; 0: in this process).
        retries: extra attempts of a failing job before it is reported as failed.
        configurations: only these configurations (default: all).
        shard: ``(i, n)``: only the jobs of prompts in shard i of n (see ``prompt_shard``).
        progress: called after each event.
        workers_per_gpu: worker processes sharing each GPU (for small models).
        parallel_launches: torchrun launches of a multi-GPU group side by side (default: as many
            disjoint GPU sets of the group's size as this host has, 1 on a CPU).
    """
    started = time.perf_counter()
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu: got {workers_per_gpu}; allowed: 1 or more")
    policy = RetryPolicy(retries)
    store = Store(store_url)
    jobs = load_plan(store)
    selection = select_jobs(store, jobs, detect_environment(), configurations, shard)
    run_id = new_run_id()
    devices, threads = _devices(workers, workers_per_gpu)
    scheduler = Scheduler(store, run_id, policy, len(selection.todo) + len(selection.multi_gpu), progress)
    if selection.todo:
        launcher = (
            ProcessPoolLauncher(store_url, run_id, devices, threads)
            if devices
            else InProcessLauncher(store_url, run_id, threads)
        )
        scheduler.run(selection.todo, launcher)
    for group in launch_groups(selection.multi_gpu):
        slots = launch_slots(group[0].world_size, parallel_launches)
        scheduler.run(group, TorchrunLauncher(store_url, run_id, slots))
    return finish_run(store, jobs, selection, "local", run_id, scheduler.executed, scheduler.failed, started)
