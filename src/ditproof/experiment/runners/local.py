"""The local runner: one worker process per visible GPU (or CPU worker processes), resumable.

* GPUs: one process per visible GPU (``cuda:0`` … ``cuda:N-1``), each holding its model, or
  ``workers_per_gpu`` processes per GPU for models too small to fill one (CPU threads are then
  shared out among all worker processes).
* CPU: ``workers`` processes sharing the cores (torch threads = cores // workers); ``workers=0``
  runs in this process (tests, debugging).
* Jobs that need several processes (tensor or context parallelism; on a CPU, tensor parallelism
  runs over gloo) run after the others, one group of jobs sharing weights and layout per launch
  of ``torchrun --standalone --nproc-per-node W -m ditproof.experiment.runners.torchrun_job
  --store URL --job ID ...`` (one process per GPU, as the generation code's parallel modes need).
  A host with at least 2·W GPUs splits the group over disjoint sets of W GPUs
  (``CUDA_VISIBLE_DEVICES``) and runs the launches side by side: ``cp2`` on four GPUs is two
  launches at once.

A job that raises is recorded in its ``failure.json`` and retried up to ``retries`` more times,
then reported as failed; a worker process that dies takes its job down with it the same way and
is replaced. Jobs already done are never redone, so a killed run restarts where it stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ditproof.experiment.jobs import load_plan, read_failure, read_result
from ditproof.experiment.plan import Job
from ditproof.experiment.runners.common import (
    Event,
    ProgressCallback,
    RunSummary,
    finish_run,
    new_run_id,
    select_jobs,
)
from ditproof.experiment.runners.worker import JobWorker, detect_environment, load_key, write_failure
from ditproof.experiment.store import Store


def _worker_main(store_url: str, device: str, run_id: str, threads: int | None, tasks: Any, events: Any) -> None:
    """Body of a worker process: take (job JSON, attempt) from ``tasks`` until None."""
    worker = JobWorker(store_url, device, run_id, threads)
    while True:
        item = tasks.get()
        if item is None:
            return
        job = Job.model_validate_json(item[0])
        attempt = item[1]
        events.put(("start", job.job_id, worker.name, ""))
        started = time.perf_counter()
        try:
            worker.run(job, attempt)
        except Exception as exc:  # the worker's edge: every failure is recorded and reported, never hidden
            worker.record_failure(job, attempt, exc)
            events.put(("failed", job.job_id, worker.name, f"{type(exc).__name__}: {exc}"))
            continue
        events.put(("done", job.job_id, worker.name, f"{time.perf_counter() - started:.3f}"))


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


def torchrun_command(store_url: str, jobs: list[Job], run_id: str, attempt: int) -> list[str]:
    """The command that runs a group of multi-GPU jobs (same weights and layout), one process per GPU."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={jobs[0].world_size}",
        "-m",
        "ditproof.experiment.runners.torchrun_job",
        "--store",
        store_url,
        *(arg for job in jobs for arg in ("--job", job.job_id)),
        "--run-id",
        run_id,
        "--attempt",
        str(attempt),
    ]


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
    store = Store(store_url)
    jobs = load_plan(store)
    env = detect_environment()
    selection = select_jobs(store, jobs, env, configurations, shard)
    run_id = new_run_id()
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu: got {workers_per_gpu}; allowed: 1 or more")
    devices, threads = _devices(workers, workers_per_gpu)
    total = len(selection.todo) + len(selection.multi_gpu)
    failed: list[str] = []
    executed = 0

    def report(event: Event, resolved: int) -> None:
        if progress is not None:
            progress(event, resolved, total)

    if selection.todo and not devices:
        executed, failed = _run_in_process(store_url, selection.todo, run_id, threads, retries, report)
    elif selection.todo:
        executed, failed = _run_pool(store_url, selection.todo, devices, run_id, threads, retries, report)
    for group in _launch_groups(selection.multi_gpu):
        slots = launch_slots(group[0].world_size, parallel_launches)
        chunks = [group[i :: len(slots)] for i in range(len(slots)) if group[i :: len(slots)]]
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            futures = [
                pool.submit(_timed_torchrun, store, store_url, chunk, run_id, retries, slot)
                for chunk, slot in zip(chunks, slots, strict=False)
            ]
            for chunk, future in zip(chunks, futures, strict=True):
                done, seconds = future.result()
                for job in chunk:
                    if job.job_id in done:
                        executed += 1
                        report(Event("done", job.job_id, job.configuration, "", seconds), executed + len(failed))
                    else:
                        failed.append(job.job_id)
                        report(Event("gave-up", job.job_id, job.configuration, ""), executed + len(failed))
    return finish_run(store, jobs, selection, "local", run_id, executed, failed, started)


def _run_in_process(
    store_url: str, jobs: list[Job], run_id: str, threads: int | None, retries: int, report: Any
) -> tuple[int, list[str]]:
    worker = JobWorker(store_url, "cpu", run_id, threads)
    executed, failed = 0, list[str]()
    for job in jobs:
        for attempt in range(1, retries + 2):
            report(Event("start", job.job_id, job.configuration), executed + len(failed))
            t0 = time.perf_counter()
            try:
                worker.run(job, attempt)
            except Exception as exc:  # recorded in failure.json and retried or reported
                worker.record_failure(job, attempt, exc)
                if attempt == retries + 1:
                    failed.append(job.job_id)
                    report(Event("gave-up", job.job_id, job.configuration, str(exc)), executed + len(failed))
                else:
                    report(Event("failed", job.job_id, job.configuration, str(exc)), executed + len(failed))
                continue
            executed += 1
            report(Event("done", job.job_id, job.configuration, "", time.perf_counter() - t0), executed + len(failed))
            break
    return executed, failed


def _run_pool(
    store_url: str,
    jobs: list[Job],
    devices: list[str],
    run_id: str,
    threads: int | None,
    retries: int,
    report: Any,
) -> tuple[int, list[str]]:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn also keeps workers independent
    tasks: Any = ctx.Queue()
    events: Any = ctx.Queue()
    by_id = {j.job_id: j for j in jobs}
    attempts = dict.fromkeys(by_id, 1)
    for job in jobs:
        tasks.put((job.model_dump_json(), 1))
    processes: dict[str, Any] = {}
    device_of: dict[str, str] = {}
    in_flight: dict[str, str] = {}  # worker name -> job id

    def spawn(device: str) -> None:
        process = ctx.Process(
            target=_worker_main, args=(store_url, device, run_id, threads, tasks, events), daemon=True
        )
        process.start()
        processes[str(process.pid)] = process
        device_of[str(process.pid)] = device

    for device in devices:
        spawn(device)
    executed, failed = 0, list[str]()
    remaining = set(by_id)

    def failure(job_id: str, detail: str) -> None:
        job = by_id[job_id]
        if attempts[job_id] <= retries:
            attempts[job_id] += 1
            tasks.put((job.model_dump_json(), attempts[job_id]))
            report(Event("failed", job_id, job.configuration, detail), executed + len(failed))
        else:
            failed.append(job_id)
            remaining.discard(job_id)
            report(Event("gave-up", job_id, job.configuration, detail), executed + len(failed))

    try:
        while remaining:
            try:
                kind, job_id, worker, detail = events.get(timeout=1.0)
            except queue.Empty:
                _replace_dead(processes, device_of, in_flight, spawn, failure, by_id, store_url, run_id, attempts)
                continue
            pid = worker.split(":")[1]
            job = by_id[job_id]
            if job_id not in remaining:  # a late event of a job already resolved
                continue
            if kind == "start":
                in_flight[pid] = job_id
                report(Event("start", job_id, job.configuration), executed + len(failed))
            elif kind == "done":
                in_flight.pop(pid, None)
                executed += 1
                remaining.discard(job_id)
                report(Event("done", job_id, job.configuration, "", float(detail)), executed + len(failed))
            else:
                in_flight.pop(pid, None)
                failure(job_id, detail)
    finally:
        for _ in processes:
            tasks.put(None)
        for process in processes.values():
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    return executed, failed


def _replace_dead(
    processes: dict[str, Any],
    device_of: dict[str, str],
    in_flight: dict[str, str],
    spawn: Any,
    failure: Any,
    by_id: dict[str, Job],
    store_url: str,
    run_id: str,
    attempts: dict[str, int],
) -> None:
    """A worker process that died (killed, out of memory) fails its job and is replaced."""
    for pid, process in list(processes.items()):
        if process.is_alive():
            continue
        del processes[pid]
        device = device_of.pop(pid)
        job_id = in_flight.pop(pid, None)
        if job_id is not None:
            detail = f"worker process {pid} on {device} died (exit code {process.exitcode})"
            write_failure(Store(store_url), by_id[job_id], attempts[job_id], "WorkerDied", detail, f"pid {pid}", run_id)
            failure(job_id, detail)
        spawn(device)


GIVE_UP_GROUP_AFTER = 2
"""A multi-GPU group is given up after this many of its jobs in a row failed every attempt."""


def _launch_groups(jobs: list[Job]) -> list[list[Job]]:
    """Multi-GPU jobs grouped by weights and parallel layout: one torchrun launch per group."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault((*load_key(job), job.world_size), []).append(job)
    return list(groups.values())


def launch_slots(world_size: int, parallel_launches: int | None = None) -> list[str | None]:
    """The GPU sets that torchrun launches of ``world_size`` processes run on side by side.

    Each entry is a ``CUDA_VISIBLE_DEVICES`` value (a disjoint slice of the GPUs this process sees),
    or None on a CPU host (the launch inherits the environment). ``parallel_launches`` caps the
    count on GPUs and sets it on a CPU.
    """
    env = detect_environment()
    if not env.cuda:
        return [None] * max(1, parallel_launches or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(env.gpu_count)]
    return list(gpu_sets(ids[: env.gpu_count], world_size, parallel_launches))


def gpu_sets(ids: list[str], world_size: int, cap: int | None = None) -> list[str]:
    """Disjoint ``CUDA_VISIBLE_DEVICES`` values of ``world_size`` GPUs each, at most ``cap`` of them."""
    count = max(1, len(ids) // world_size)
    if cap is not None:
        count = max(1, min(count, cap))
    return [",".join(ids[i * world_size : (i + 1) * world_size]) for i in range(count)]


def _timed_torchrun(
    store: Store, store_url: str, jobs: list[Job], run_id: str, retries: int, gpus: str | None
) -> tuple[set[str], float]:
    """``_run_torchrun`` on one GPU set; returns the finished ids and the seconds per job."""
    t0 = time.perf_counter()
    done = _run_torchrun(store, store_url, jobs, run_id, retries, gpus)
    return done, (time.perf_counter() - t0) / len(jobs)


def _run_torchrun(
    store: Store, store_url: str, jobs: list[Job], run_id: str, retries: int, gpus: str | None = None
) -> set[str]:
    """Runs a group of multi-GPU jobs under torchrun; returns the ids of those that finished.

    A launch stops at its first failing job (the ranks must stay in step); the jobs not done are
    relaunched, and a job is given up once it has failed ``retries + 1`` times.
    """
    done: set[str] = set()
    failures = dict.fromkeys((j.job_id for j in jobs), 0)
    given_up_in_a_row = 0  # jobs given up since the last launch that finished one
    while True:
        pending = [j for j in jobs if j.job_id not in done and failures[j.job_id] <= retries]
        if not pending:
            return done
        if given_up_in_a_row >= GIVE_UP_GROUP_AFTER:
            # The layout itself fails (e.g. a parallel mode this host cannot run): one failure
            # record per remaining job, no more launches.
            for job in pending:
                detail = f"not launched: the {GIVE_UP_GROUP_AFTER} jobs before it in its group failed every attempt"
                write_failure(store, job, failures[job.job_id] + 1, "GroupGivenUp", detail, "torchrun", run_id)
            return done
        attempt = 1 + max(failures[j.job_id] for j in pending)
        env = None if gpus is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpus}
        completed = subprocess.run(
            torchrun_command(store_url, pending, run_id, attempt), capture_output=True, text=True, check=False, env=env
        )
        finished = {j.job_id for j in pending if read_result(store, j.job_id) is not None}
        done |= finished
        if all(j.job_id in done for j in pending):
            return done
        # The launch stopped at the first job that is not done.
        stopped = next(j for j in pending if j.job_id not in done)
        failures[stopped.job_id] += 1
        given_up_in_a_row = 0 if finished else given_up_in_a_row + (failures[stopped.job_id] > retries)
        recorded = read_failure(store, stopped.job_id)
        if recorded is None or recorded.run_id != run_id or recorded.attempt != attempt:
            tail = (completed.stderr or completed.stdout)[-1500:]
            detail = f"exit {completed.returncode}: {tail}"
            write_failure(store, stopped, attempt, "TorchrunFailed", detail, "torchrun", run_id)


def main(argv: list[str] | None = None) -> int:
    """``python -m ditproof.experiment.runners.local --store URL``: the local runner without the CLI's
    typer/rich (for GPU hosts that only have torch, diffusers and the carried wheels). Prints one line
    per event; exit code 1 when a job failed."""
    import argparse

    from ditproof.experiment.runners.common import parse_shard

    parser = argparse.ArgumentParser(description="Run the pending jobs of an experiment store.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--workers-per-gpu", type=int, default=1, help="worker processes per GPU (small models)")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--configurations", default=None, help="comma-separated")
    parser.add_argument("--shard", default=None, help="I/N")
    parser.add_argument(
        "--parallel-launches", type=int, default=None, help="multi-GPU launches side by side (default: fill the GPUs)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def progress(event: Event, resolved: int, total: int) -> None:
        if event.kind == "start":
            return
        elapsed = time.perf_counter() - started
        eta = elapsed / resolved * (total - resolved) if resolved else float("nan")
        print(
            f"[{resolved}/{total}] {event.kind} {event.configuration} {event.job_id} {event.detail} (ETA {eta:.0f} s)"
        )

    names = args.configurations.split(",") if args.configurations else None
    summary = run_local(
        args.store,
        args.workers,
        args.retries,
        names,
        parse_shard(args.shard),
        progress,
        args.workers_per_gpu,
        args.parallel_launches,
    )
    print(summary.model_dump_json(indent=1))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
