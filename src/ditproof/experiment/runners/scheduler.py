"""The one experiment scheduler: which jobs run, in what order, how often, and what a run did.

Every launcher (:mod:`~ditproof.experiment.runners.launchers`: in this process, a process pool,
torchrun; :mod:`~ditproof.experiment.runners.ray`: a Ray cluster) only says *how* a task is
executed. The scheduler decides the rest, the same way for all of them:

* **which jobs** (:func:`select_jobs`): the plan's jobs minus those done in the store (a valid
  ``result.json``: never redone), those of other configurations or prompt shards, and those this
  machine cannot run (skipped with the reason); ordered so that jobs sharing a loaded model follow
  each other, references first;
* **what runs next** (:meth:`Scheduler.run`): the pending tasks in order, as many as the launcher
  has free slots; a launcher whose launches run several jobs in one process group (torchrun) gets
  the pending jobs shared out evenly over its free slots;
* **the retry policy** (:class:`RetryPolicy`): a failed attempt is recorded in the job's
  ``failure.json`` and the job is tried again next, ahead of the jobs not started yet, until it
  has failed ``retries + 1`` times; then it is given up (reported as failed) and the run goes on.
  A task a launch never reached (``not-run``) goes back to the front without using up an attempt.
  Where jobs share a launch, the rest of the group is given up once ``give_up_group_after`` jobs in
  a row were given up with none done in between (the layout itself fails: a parallel mode this
  host cannot run), so a broken layout costs a few launches, not one per job;
* **the summary** (:func:`finish_run`): the manifest rebuilt and a :class:`RunSummary`.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from ditproof.errors import InvalidInputError
from ditproof.experiment.jobs import read_result, refresh_manifest
from ditproof.experiment.plan import Job
from ditproof.experiment.runners.worker import Environment, Outcome, Task, load_key, why_not_runnable, write_failure
from ditproof.experiment.store import Store

EventKind = Literal["start", "done", "failed", "gave-up"]


@dataclass(frozen=True)
class Event:
    """Progress of a run: a job started, finished, failed (and will be retried or not), or skipped."""

    kind: EventKind
    job_id: str
    configuration: str
    detail: str = ""
    seconds: float = 0.0


ProgressCallback = Callable[[Event, int, int], None]
"""Called with (event, jobs resolved so far, jobs to run)."""


class RunSummary(BaseModel):
    """What a run did."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    runner: str
    planned: int
    already_done: int
    executed: int
    failed: list[str]
    skipped: dict[str, str]
    seconds: float


@dataclass
class Selection:
    """The jobs of a plan that a run will execute, and why the others are left out."""

    todo: list[Job]
    done: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    multi_gpu: list[Job] = field(default_factory=list)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parses ``"I/N"`` (0 ≤ I < N).

    Raises:
        InvalidInputError: when the text is not of that form.
    """
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InvalidInputError(f"shard: got {text!r}; allowed: I/N with 0 <= I < N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise InvalidInputError(f"shard: got {text!r}; allowed: I/N with 0 <= I < N, e.g. 0/4")
    return index, count


def prompt_shard(prompt_id: str, shards: int) -> int:
    """The shard of a prompt: its reference and deviations run on the same host, so a host's store
    can be scored on its own before the stores are merged."""
    return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") % shards


def select_jobs(
    store: Store,
    jobs: list[Job],
    env: Environment,
    configurations: list[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> Selection:
    """Splits the plan into jobs done already, jobs to run here, and jobs skipped (with reasons).

    Jobs to run are ordered so that jobs sharing a loaded model follow each other, references
    first; jobs needing several GPUs come apart (they run under torchrun).

    Raises:
        InvalidInputError: a configuration name not in the plan.
    """
    if configurations:
        known = {j.configuration for j in jobs}
        unknown = [c for c in configurations if c not in known]
        if unknown:
            raise InvalidInputError(f"configurations: got {unknown}; allowed: {', '.join(sorted(known))}")
    selection = Selection(todo=[], done=[])
    for job in jobs:
        if configurations and job.configuration not in configurations:
            continue
        if shard and prompt_shard(job.prompt_id, shard[1]) != shard[0]:
            continue
        if read_result(store, job.job_id) is not None:
            selection.done.append(job.job_id)
            continue
        reason = why_not_runnable(job, env)
        if reason:
            selection.skipped[job.job_id] = reason
        elif job.world_size > 1:
            selection.multi_gpu.append(job)
        else:
            selection.todo.append(job)
    order = {key: index for index, key in enumerate(dict.fromkeys(load_key(j) for j in selection.todo))}
    selection.todo.sort(key=lambda j: (order[load_key(j)], not j.is_reference))
    return selection


def new_run_id() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex[:12]


def finish_run(
    store: Store,
    jobs: list[Job],
    selection: Selection,
    runner: Literal["local", "ray"],
    run_id: str,
    executed: int,
    failed: list[str],
    started: float,
) -> RunSummary:
    """Rewrites the manifest after a run and summarizes it."""
    refresh_manifest(store, jobs, selection.skipped)
    return RunSummary(
        run_id=run_id,
        runner=runner,
        planned=len(jobs),
        already_done=len(selection.done),
        executed=executed,
        failed=failed,
        skipped=selection.skipped,
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing job is tried (see the module docstring).

    Args:
        retries: extra attempts after a job's first failure (0: one attempt).
        give_up_group_after: jobs given up in a row, none done in between, after which a launcher
            that runs jobs in shared launches gives up the rest of the group without launching it.
    """

    retries: int = 1
    give_up_group_after: int = 2

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise InvalidInputError(f"retries: got {self.retries}; allowed: 0 or more")
        if self.give_up_group_after < 1:
            raise InvalidInputError(f"give_up_group_after: got {self.give_up_group_after}; allowed: 1 or more")

    def retry(self, attempt: int) -> bool:
        """Whether a job whose attempt number ``attempt`` just failed is tried again."""
        return attempt <= self.retries


class Launcher(Protocol):
    """How tasks are executed: in this process, in worker processes, under torchrun, on Ray.

    A launcher runs what it is given and reports how each task ended; it never decides what runs
    next, retries, or records failures (the :class:`Scheduler` does).
    """

    name: str
    """Names the launcher in failure records the scheduler writes itself (e.g. ``torchrun``)."""
    shares_launches: bool
    """Whether one launch runs several tasks in one process group, stopping at the first failure."""

    def free_slots(self) -> int:
        """How many more launches may start now."""
        ...

    def submit(self, tasks: list[Task]) -> None:
        """Starts one launch of ``tasks`` (a single task unless ``shares_launches``)."""
        ...

    def wait(self) -> list[Outcome]:
        """Blocks until at least one task has ended; the outcome of every task of the launches that ended."""
        ...

    def close(self) -> None:
        """Stops the launcher's workers (called once, also after an error)."""
        ...


class Scheduler:
    """Runs jobs through launchers under one retry policy, counting and reporting as it goes.

    One scheduler serves a whole run, which may call :meth:`run` several times with different
    launchers (single-process jobs in a pool, then each multi-GPU group under torchrun); progress
    counts across them.

    Args:
        store: the experiment store (failure records go there).
        run_id: the run's id (in every failure record).
        policy: the retry policy.
        total: the jobs the whole run will resolve (for progress).
        progress: called after each event.
    """

    def __init__(
        self, store: Store, run_id: str, policy: RetryPolicy, total: int, progress: ProgressCallback | None = None
    ):
        self.store = store
        self.run_id = run_id
        self.policy = policy
        self.total = total
        self.progress = progress
        self.executed = 0
        self.failed: list[str] = []

    def _report(self, kind: EventKind, job: Job, detail: str = "", s: float = 0.0) -> None:
        if self.progress is not None:
            self.progress(
                Event(kind, job.job_id, job.configuration, detail, s), self.executed + len(self.failed), self.total
            )

    def _give_up(self, job: Job, detail: str) -> None:
        self.failed.append(job.job_id)
        self._report("gave-up", job, detail)

    def run(self, jobs: list[Job], launcher: Launcher) -> None:
        """Runs ``jobs`` (in this order) through ``launcher`` until each is done or given up; closes it."""
        pending = deque(Task(job, 1) for job in jobs)
        running: dict[str, Task] = {}
        given_up_in_a_row = 0
        try:
            while pending or running:
                if launcher.shares_launches and given_up_in_a_row >= self.policy.give_up_group_after:
                    self._give_up_group(pending, launcher.name)
                while pending and launcher.free_slots() > 0:
                    size = math.ceil(len(pending) / launcher.free_slots()) if launcher.shares_launches else 1
                    batch = [pending.popleft() for _ in range(size)]
                    for task in batch:
                        running[task.job.job_id] = task
                        self._report("start", task.job)
                    launcher.submit(batch)
                if not running:
                    if pending:  # a launcher bug, not a job failure: never spin
                        raise RuntimeError(f"launcher {launcher.name}: no free slot and nothing running")
                    continue
                again: list[Task] = []  # retries and tasks never reached, in launch order: they go first
                for outcome in launcher.wait():
                    task = running.pop(outcome.job_id)
                    if outcome.status == "not-run":
                        again.append(task)
                    elif outcome.status == "done":
                        self.executed += 1
                        given_up_in_a_row = 0
                        self._report("done", task.job, "", outcome.seconds)
                    elif (retry := self._failed(task, outcome)) is not None:
                        again.append(retry)
                    else:
                        given_up_in_a_row += 1
                pending.extendleft(reversed(again))
        finally:
            launcher.close()

    def _failed(self, task: Task, outcome: Outcome) -> Task | None:
        """Records a failed attempt; returns the job's next attempt, or None when it is given up."""
        write_failure(
            self.store, task.job, task.attempt, outcome.error_type, outcome.message, outcome.worker, self.run_id
        )
        detail = f"{outcome.error_type}: {outcome.message}"
        if self.policy.retry(task.attempt):
            self._report("failed", task.job, detail)
            return Task(task.job, task.attempt + 1)
        self._give_up(task.job, detail)
        return None

    def _give_up_group(self, pending: deque[Task], worker: str) -> None:
        """Gives up every pending task of a group whose layout fails, with a failure record each."""
        detail = f"not launched: the {self.policy.give_up_group_after} jobs before it in its group failed every attempt"
        while pending:
            task = pending.popleft()
            write_failure(self.store, task.job, task.attempt, "GroupGivenUp", detail, worker, self.run_id)
            self._give_up(task.job, f"GroupGivenUp: {detail}")
