"""The experiment scheduler's one retry policy, under each shape of launcher.

The launchers here execute nothing: each follows a script of which attempts fail, and has the
shape of a real launcher (one task at a time like ``InProcessLauncher``; several slots finishing
out of order like ``ProcessPoolLauncher`` and ``RayLauncher``; shared launches that stop at their
first failure like ``TorchrunLauncher``). The real launchers run real jobs in
tests/test_experiment_e2e.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ditproof.errors import InvalidInputError
from ditproof.experiment.config import load_experiment
from ditproof.experiment.jobs import read_failure
from ditproof.experiment.plan import Job, plan_jobs
from ditproof.experiment.runners.launchers import InProcessLauncher, ProcessPoolLauncher, TorchrunLauncher
from ditproof.experiment.runners.ray import RayLauncher
from ditproof.experiment.runners.scheduler import Event, Launcher, RetryPolicy, Scheduler
from ditproof.experiment.runners.worker import Outcome, Task
from ditproof.experiment.store import Store

CONFIG = """
schema_version = "ditproof.experiment/1"
name = "sched"
model = "wan-tiny-random"
prompts = "grammar"
max_prompts = 1
entropy = "{entropy}"

[reference]
request = {{ width = 64, height = 48, num_frames = 5, num_inference_steps = 4 }}

[[benign]]
name = "cfg-batched"
options = {{ cfg_mode = "batched" }}

[[malign]]
name = "steps-3"
request = {{ num_inference_steps = 3 }}

[[malign]]
name = "cfg-off"
request = {{ guidance_scale = 1.0, guidance_scale_2 = 1.0 }}
"""

Script = Callable[[Task], bool]
"""Whether an attempt succeeds."""


class Serial:
    """One task at a time (the in-process launcher's shape)."""

    name = "serial"
    shares_launches = False

    def __init__(self, script: Script):
        self.script = script
        self.task: Task | None = None
        self.launches: list[list[str]] = []
        self.closed = False

    def free_slots(self) -> int:
        return 0 if self.task else 1

    def submit(self, tasks: list[Task]) -> None:
        (self.task,) = tasks
        self.launches.append([t.job.job_id for t in tasks])

    def wait(self) -> list[Outcome]:
        task, self.task = self.task, None
        assert task is not None
        return [run(self.script, task)]

    def close(self) -> None:
        self.closed = True


class Pool(Serial):
    """Three slots whose tasks end last-submitted first (the pool's and Ray's shape)."""

    name = "pool"

    def __init__(self, script: Script):
        super().__init__(script)
        self.running: list[Task] = []

    def free_slots(self) -> int:
        return 3 - len(self.running)

    def submit(self, tasks: list[Task]) -> None:
        (task,) = tasks
        self.running.append(task)
        self.launches.append([task.job.job_id])

    def wait(self) -> list[Outcome]:
        return [run(self.script, self.running.pop())]


class Shared(Serial):
    """Two slots; a launch runs its tasks in order and stops at the first failure (torchrun's shape)."""

    name = "shared"
    shares_launches = True

    def __init__(self, script: Script):
        super().__init__(script)
        self.running: list[list[Task]] = []

    def free_slots(self) -> int:
        return 2 - len(self.running)

    def submit(self, tasks: list[Task]) -> None:
        self.running.append(tasks)
        self.launches.append([t.job.job_id for t in tasks])

    def wait(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for task in self.running.pop(0):
            if outcomes and outcomes[-1].status != "done":
                outcomes.append(Outcome(task.job.job_id, task.attempt, "not-run"))
            else:
                outcomes.append(run(self.script, task))
        return outcomes


def run(script: Script, task: Task) -> Outcome:
    if script(task):
        return Outcome(task.job.job_id, task.attempt, "done", 1.0, worker="fake")
    return Outcome(task.job.job_id, task.attempt, "failed", 0.0, "RuntimeError", f"attempt {task.attempt}", "fake")


LAUNCHERS = [Serial, Pool, Shared]


@pytest.fixture
def jobs(tmp_path: Path) -> list[Job]:
    config = tmp_path / "sched.toml"
    config.write_text(CONFIG.format(entropy="5e" * 32))
    return plan_jobs(load_experiment(config))


def scheduler(tmp_path: Path, retries: int, events: list[Event]) -> Scheduler:
    return Scheduler(
        Store(str(tmp_path / "store")), "run1", RetryPolicy(retries), 4, lambda e, _done, _total: events.append(e)
    )


@pytest.mark.parametrize("launcher_class", LAUNCHERS)
@pytest.mark.parametrize("retries", [0, 1, 3])
def test_transient_failures_are_retried_up_to_the_limit(
    tmp_path: Path, jobs: list[Job], launcher_class: type[Serial], retries: int
) -> None:
    # jobs[1] fails its first `retries` attempts: the last attempt allowed succeeds.
    flaky = jobs[1].job_id
    launcher = launcher_class(lambda task: task.job.job_id != flaky or task.attempt > retries)
    events: list[Event] = []
    sched = scheduler(tmp_path, retries, events)
    sched.run(jobs, launcher)
    assert sched.executed == len(jobs) and sched.failed == [] and launcher.closed
    assert sum(1 for launch in launcher.launches for job_id in launch if job_id == flaky) >= retries + 1
    assert [e.kind for e in events if e.job_id == flaky and e.kind != "start"] == ["failed"] * retries + ["done"]
    if retries:  # every failed attempt was recorded (a real worker removes the record once the job is done)
        failure = read_failure(Store(str(tmp_path / "store")), flaky)
        assert failure is not None and failure.attempt == retries and failure.run_id == "run1"


@pytest.mark.parametrize("launcher_class", LAUNCHERS)
@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_permanent_failure_is_recorded_and_the_run_goes_on(
    tmp_path: Path, jobs: list[Job], launcher_class: type[Serial], retries: int
) -> None:
    broken = jobs[0].job_id
    attempts: list[int] = []

    def script(task: Task) -> bool:
        if task.job.job_id == broken:
            attempts.append(task.attempt)
            return False
        return True

    launcher = launcher_class(script)
    events: list[Event] = []
    sched = scheduler(tmp_path, retries, events)
    sched.run(jobs, launcher)
    assert attempts == list(range(1, retries + 2))  # tried retries + 1 times, no more
    assert sched.failed == [broken] and sched.executed == len(jobs) - 1  # every other job done
    failure = read_failure(Store(str(tmp_path / "store")), broken)
    assert failure is not None
    assert (failure.attempt, failure.error_type, failure.message, failure.worker) == (
        retries + 1,
        "RuntimeError",
        f"attempt {retries + 1}",
        "fake",
    )
    gave_up = [e for e in events if e.kind == "gave-up"]
    assert [e.job_id for e in gave_up] == [broken] and gave_up[0].detail == f"RuntimeError: attempt {retries + 1}"


def test_a_shared_launch_requeues_the_tasks_it_never_reached(tmp_path: Path, jobs: list[Job]) -> None:
    # One slot: the launch of all four jobs stops at the first job's first failure; the next launch
    # retries it, followed by the three it never reached (unattempted).
    first = jobs[0].job_id
    launcher = Shared(lambda task: task.job.job_id != first or task.attempt > 1)
    launcher.free_slots = lambda: 1 - len(launcher.running)  # type: ignore[method-assign]
    sched = scheduler(tmp_path, 1, [])
    sched.run(jobs, launcher)
    ids = [j.job_id for j in jobs]
    assert launcher.launches == [ids, ids]
    assert sched.executed == 4 and sched.failed == []


def test_shared_launches_split_the_pending_jobs_evenly(tmp_path: Path, jobs: list[Job]) -> None:
    launcher = Shared(lambda task: True)
    sched = scheduler(tmp_path, 1, [])
    sched.run(jobs, launcher)
    ids = [j.job_id for j in jobs]
    assert launcher.launches == [ids[:2], ids[2:]]


def test_a_failing_layout_gives_up_the_rest_of_its_group(tmp_path: Path, jobs: list[Job]) -> None:
    # Every launch fails: once two jobs in a row are given up, the others are not launched.
    launcher = Shared(lambda task: False)
    launcher.free_slots = lambda: 1 - len(launcher.running)  # type: ignore[method-assign]
    sched = scheduler(tmp_path, 1, [])
    sched.run(jobs, launcher)
    ids = [j.job_id for j in jobs]
    assert launcher.launches == [ids, ids, ids[1:], ids[1:]]  # each job retried in its place
    assert sorted(sched.failed) == sorted(ids)
    store = Store(str(tmp_path / "store"))
    kinds = [f.error_type if (f := read_failure(store, j.job_id)) else None for j in jobs]
    assert kinds == ["RuntimeError", "RuntimeError", "GroupGivenUp", "GroupGivenUp"]


def test_one_at_a_time_launchers_never_give_up_a_group(tmp_path: Path, jobs: list[Job]) -> None:
    launcher = Serial(lambda task: False)
    sched = scheduler(tmp_path, 1, [])
    sched.run(jobs, launcher)
    assert len(launcher.launches) == 2 * len(jobs)  # every job had both its attempts


def test_retry_policy_limits() -> None:
    policy = RetryPolicy(2)
    assert [policy.retry(attempt) for attempt in (1, 2, 3)] == [True, True, False]
    with pytest.raises(InvalidInputError, match="retries: got -1"):
        RetryPolicy(-1)


def test_the_real_launchers_have_the_launcher_shape() -> None:
    for launcher in (InProcessLauncher, ProcessPoolLauncher, TorchrunLauncher, RayLauncher):
        for attribute in ("name", "shares_launches", "free_slots", "submit", "wait", "close"):
            assert hasattr(launcher, attribute), (launcher, attribute)
    assert TorchrunLauncher.shares_launches and not ProcessPoolLauncher.shares_launches
    _: type[Launcher] = Serial  # the fakes satisfy the same protocol (checked by mypy)


def test_a_pool_process_that_dies_fails_its_task_and_is_replaced(tmp_path: Path, jobs: list[Job]) -> None:
    import os
    import signal

    launcher = ProcessPoolLauncher(str(tmp_path / "store"), "run1", ["cpu"], threads=1)
    try:
        launcher.submit([Task(jobs[0], 1)])
        (pid,) = launcher._busy
        os.kill(pid, signal.SIGKILL)
        (outcome,) = launcher.wait()
        assert (outcome.job_id, outcome.attempt, outcome.status, outcome.error_type) == (
            jobs[0].job_id,
            1,
            "failed",
            "WorkerDied",
        )
        assert launcher.free_slots() == 1 and pid not in launcher._processes  # a new process took its place
    finally:
        launcher.close()
