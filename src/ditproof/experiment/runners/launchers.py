"""How tasks are executed on this host: in this process, in a pool of worker processes, under torchrun.

Launchers only execute: the :class:`~ditproof.experiment.runners.scheduler.Scheduler` decides
what runs next, retries and records failures (the Ray launcher is in
:mod:`~ditproof.experiment.runners.ray`).

* :class:`InProcessLauncher`: one task at a time in this process (``--workers 0``: tests, debugging).
* :class:`ProcessPoolLauncher`: one worker process per device entry (a GPU, a share of a GPU, or
  CPU threads), each keeping its loaded model; a process that dies (killed, out of memory) fails
  its task (``WorkerDied``) and is replaced.
* :class:`TorchrunLauncher`: jobs that need several processes (tensor or context parallelism; on a
  CPU, tensor parallelism runs over gloo), one launch of ``torchrun --standalone --nproc-per-node W
  -m ditproof.experiment.runners.torchrun_job`` per batch of jobs sharing weights and layout (the
  process group is set up and the model sharded once per launch). Each slot is a disjoint set of W
  GPUs (``CUDA_VISIBLE_DEVICES``): a host with at least 2·W GPUs runs launches side by side. A
  launch stops at its first failing job (the ranks must stay in step); the jobs after it come back
  ``not-run``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from ditproof.experiment.jobs import read_result
from ditproof.experiment.runners.worker import JobWorker, Outcome, Task, detect_environment, run_task
from ditproof.experiment.store import Store

OUTCOME_PREFIX = "ditproof-outcome "
"""Rank 0 of a torchrun launch prints one line per job: this prefix, then the Outcome as JSON."""


class InProcessLauncher:
    """Runs one task at a time in this process, on the CPU."""

    name = "in-process"
    shares_launches = False

    def __init__(self, store_url: str, run_id: str, threads: int | None = None):
        self.worker = JobWorker(store_url, "cpu", run_id, threads)
        self._task: Task | None = None

    def free_slots(self) -> int:
        return 0 if self._task is not None else 1

    def submit(self, tasks: list[Task]) -> None:
        (self._task,) = tasks

    def wait(self) -> list[Outcome]:
        task, self._task = self._task, None
        assert task is not None, "wait() without a submitted task"
        return [run_task(self.worker, task)]

    def close(self) -> None:
        self._task = None


def _pool_worker(store_url: str, device: str, run_id: str, threads: int | None, tasks: Any, outcomes: Any) -> None:
    """Body of a pool process: runs the tasks of its own queue until None."""
    worker = JobWorker(store_url, device, run_id, threads)
    while (task := tasks.get()) is not None:
        outcomes.put((os.getpid(), run_task(worker, task)))


class ProcessPoolLauncher:
    """One worker process per entry of ``devices`` (``cpu`` or ``cuda:N``), one task each at a time.

    Each process has its own task queue, so the launcher knows which task a process that dies was
    running.
    """

    name = "pool"
    shares_launches = False

    def __init__(self, store_url: str, run_id: str, devices: list[str], threads: int | None = None):
        self._args = (store_url, run_id, threads)
        self._ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn also keeps workers independent
        self._outcomes: Any = self._ctx.Queue()
        self._processes: dict[int, tuple[Any, Any, str]] = {}  # pid -> (process, its task queue, device)
        self._idle: list[int] = []
        self._busy: dict[int, Task] = {}
        for device in devices:
            self._spawn(device)

    def _spawn(self, device: str) -> None:
        store_url, run_id, threads = self._args
        tasks: Any = self._ctx.Queue()
        process = self._ctx.Process(
            target=_pool_worker, args=(store_url, device, run_id, threads, tasks, self._outcomes), daemon=True
        )
        process.start()
        pid = process.pid
        assert pid is not None, "a started process has a pid"
        self._processes[pid] = (process, tasks, device)
        self._idle.append(pid)

    def free_slots(self) -> int:
        return len(self._idle)

    def submit(self, tasks: list[Task]) -> None:
        (task,) = tasks
        pid = self._idle.pop(0)
        self._busy[pid] = task
        self._processes[pid][1].put(task)

    def wait(self) -> list[Outcome]:
        while True:
            try:
                pid, outcome = self._outcomes.get(timeout=1.0)
            except queue.Empty:
                died = self._replace_dead()
                if died:
                    return died
                continue
            task = self._busy.get(pid)
            if task is None or task.job.job_id != outcome.job_id:  # a process already counted as dead
                continue
            del self._busy[pid]
            self._idle.append(pid)
            return [outcome]

    def _replace_dead(self) -> list[Outcome]:
        """Fails the task of each process that died and starts another process on its device."""
        outcomes = []
        for pid, (process, _, device) in list(self._processes.items()):
            if process.is_alive():
                continue
            del self._processes[pid]
            if pid in self._idle:
                self._idle.remove(pid)
            task = self._busy.pop(pid, None)
            if task is not None:
                detail = f"worker process {pid} on {device} died (exit code {process.exitcode})"
                outcomes.append(
                    Outcome(task.job.job_id, task.attempt, "failed", 0.0, "WorkerDied", detail, f"pid {pid}")
                )
            self._spawn(device)
        return outcomes

    def close(self) -> None:
        for _, tasks, _ in self._processes.values():
            tasks.put(None)
        for process, _, _ in self._processes.values():
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()


def torchrun_command(store_url: str, tasks: list[Task], run_id: str) -> list[str]:
    """The command of one launch of multi-process jobs (same weights and layout), one process per GPU."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={tasks[0].job.world_size}",
        "-m",
        "ditproof.experiment.runners.torchrun_job",
        "--store",
        store_url,
        *(arg for task in tasks for arg in ("--job", task.job.job_id, "--attempt", str(task.attempt))),
        "--run-id",
        run_id,
    ]


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


class TorchrunLauncher:
    """Launches batches of multi-process jobs under torchrun, one launch per slot at a time.

    Args:
        store_url: the experiment store.
        run_id: the run's id.
        slots: one entry per launch that may run at once (see :func:`launch_slots`).
    """

    name = "torchrun"
    shares_launches = True

    def __init__(self, store_url: str, run_id: str, slots: list[str | None]):
        self.store_url = store_url
        self.run_id = run_id
        self._free = list(slots)
        self._threads = ThreadPoolExecutor(max_workers=len(slots))
        self._running: dict[Future[list[Outcome]], str | None] = {}

    def free_slots(self) -> int:
        return len(self._free)

    def submit(self, tasks: list[Task]) -> None:
        gpus = self._free.pop(0)
        self._running[self._threads.submit(self._launch, tasks, gpus)] = gpus

    def wait(self) -> list[Outcome]:
        finished, _ = wait_futures(list(self._running), return_when=FIRST_COMPLETED)
        outcomes = []
        for future in finished:
            self._free.append(self._running.pop(future))
            outcomes += future.result()
        return outcomes

    def close(self) -> None:
        self._threads.shutdown(wait=True)

    def _launch(self, tasks: list[Task], gpus: str | None) -> list[Outcome]:
        """One torchrun launch; the outcome of each task (store results decide what is done)."""
        started = time.perf_counter()
        env = None if gpus is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpus}
        completed = subprocess.run(
            torchrun_command(self.store_url, tasks, self.run_id), capture_output=True, text=True, check=False, env=env
        )
        average = (time.perf_counter() - started) / len(tasks)
        reported = {}
        for line in completed.stdout.splitlines():
            if line.startswith(OUTCOME_PREFIX):
                outcome = Outcome(**json.loads(line[len(OUTCOME_PREFIX) :]))
                reported[outcome.job_id] = outcome
        store = Store(self.store_url)
        outcomes: list[Outcome] = []
        stopped = False
        for task in tasks:
            job_id = task.job.job_id
            if read_result(store, job_id) is not None:
                seconds = reported[job_id].seconds if job_id in reported else average
                outcomes.append(Outcome(job_id, task.attempt, "done", seconds, worker=self.name))
            elif stopped:
                outcomes.append(Outcome(job_id, task.attempt, "not-run"))
            else:
                stopped = True
                known = reported.get(job_id)
                if known is not None and known.status == "failed":
                    outcomes.append(known)
                else:
                    tail = (completed.stderr or completed.stdout)[-1500:]
                    detail = f"exit {completed.returncode}: {tail}"
                    outcomes.append(Outcome(job_id, task.attempt, "failed", 0.0, "TorchrunFailed", detail, self.name))
        return outcomes
