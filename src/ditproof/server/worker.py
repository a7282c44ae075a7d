"""The GPU worker: the one thread that owns the accelerator, its task queue and the job runner.

Everything that touches the model runs on the worker thread, one thing at a time: loading and
unloading, video jobs from the persistent queue, validations and PoC work. So two generations
never run at once, and a validation never races a generation for GPU memory.

The worker does not own the node's state (:class:`~ditproof.server.node.Node` does); it follows
it. A load asked for (``inference_up``) queues the load; a change to STOPPED cancels the jobs
and unloads. It reports what became of a load back to the node. Work that runs when nothing
else waits (a PoC round's batches) plugs in as :class:`IdleWork`, so the worker knows nothing of
PoC.

Rules for jobs, so that none is silently lost:

* jobs wait in the queue only while the node is in INFERENCE; leaving INFERENCE (down, stop, a
  failed load) fails every queued job with code ``cancelled`` and cancels the running one at its
  next denoising step;
* a clean shutdown puts the running job back in the queue without counting the attempt;
* after a crash, :mod:`ditproof.server.recovery` settles the jobs left ``in_progress``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ditproof.api import LoadedModel, execute, load_model
from ditproof.errors import DitproofError, IntegrityError, InvalidInputError
from ditproof.protocol.options import RuntimeOptions
from ditproof.server.artifacts import ArtifactStore
from ditproof.server.config import ServerConfig
from ditproof.server.errors import ApiError, conflict
from ditproof.server.jobs import JobSpec, JobStore, VideoJob
from ditproof.server.loading import ModelChoice
from ditproof.server.node import Change, Node, ServiceState

log = logging.getLogger("ditproof.server")

T = TypeVar("T")


class IdleWork(Protocol):
    """Work the worker runs in slices whenever no task or job waits (a PoC round's batches)."""

    def has_batch_locked(self) -> bool:
        """Whether a slice should run now (the node's lock is held)."""
        ...

    def run_batch(self) -> None:
        """Runs one slice (on the worker thread, without the lock)."""
        ...


class _Cancelled(Exception):
    """Raised from the step callback to stop a running job."""

    def __init__(self, reason: str, requeue: bool):
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


@dataclass
class _Task:
    """A unit of accelerator work other than a queued job (load, unload, validate, PoC)."""

    name: str
    fn: Callable[[], Any]
    future: Future[Any]
    counts_in_queue: bool


class GpuWorker:
    """The worker thread, its task queue, the video jobs and the model's life cycle.

    Public methods are called from the HTTP event loop; they only take the node's lock for a
    moment and never run model code themselves. The worker's own fields are guarded by that
    same lock (:attr:`Node.cond`).
    """

    def __init__(self, node: Node, config: ServerConfig, store: JobStore, artifacts: ArtifactStore):
        self.node = node
        self.config = config
        self.store = store
        self.artifacts = artifacts
        self._cond = node.cond
        self._tasks: deque[_Task] = deque()
        self._idle_work: IdleWork | None = None
        self._running: str | None = None
        self._cancel: tuple[str, bool] | None = None
        self._stopping = False
        self._delete_after: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="ditproof-worker", daemon=True)
        node.subscribe(self._follow)

    def set_idle_work(self, work: IdleWork) -> None:
        """Runs ``work`` in slices whenever nothing else waits."""
        with self._cond:
            self._idle_work = work

    # Life cycle.
    def start(self) -> None:
        """Starts the worker thread (after recovery: the thread claims jobs from the store)."""
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stops the worker; a running job goes back to the queue (resumed at next start)."""
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._cancel = ("the server shut down", True)
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive()

    # Queries.
    def pending_tasks(self) -> int:
        """Accelerator tasks (validations, PoC requests) waiting besides the queued jobs."""
        with self._cond:
            return self.pending_tasks_locked()

    def pending_tasks_locked(self) -> int:
        """:meth:`pending_tasks` with the lock held."""
        return sum(1 for task in self._tasks if task.counts_in_queue)

    def queue_summary(self) -> dict[str, int]:
        """The ``queue`` field of ``GET /api/v1/state``."""
        counts = self.store.counts()
        return {
            "queued": counts["queued"],
            "in_progress": counts["in_progress"],
            "pending_tasks": self.pending_tasks(),
            "capacity": self.config.max_queue,
        }

    # Following the node (lock held, in the thread that asked for the change).
    def _follow(self, change: Change) -> None:
        if change.load is not None:
            choice = change.load
            self._tasks.append(_Task("load", lambda: self._load(choice), Future(), counts_in_queue=False))
        if change.now == "STOPPED":
            self._leave_inference(change)

    def _leave_inference(self, change: Change) -> None:
        # Under the lock: the worker cannot claim a job in between.
        reason = change.reason
        for job in self.store.with_status("queued"):
            self.store.fail(job.id, "cancelled", f"{reason} before the job started")
        if self._running is not None:
            self._cancel = (f"{reason} while the job ran", False)
        for task in list(self._tasks):
            if task.counts_in_queue:
                self._tasks.remove(task)
                task.future.set_exception(conflict(f"state: {reason} before this task ran"))
        if change.was != "STOPPED" or self.node.model is not None:
            self._tasks.append(_Task("unload", self._unload, Future(), counts_in_queue=False))

    # Work submission (called from the event loop).
    def submit_job(self, spec: JobSpec) -> VideoJob:
        """Queues a video job (the store enforces the bound).

        Raises:
            ApiError: 409 ``not_ready`` outside INFERENCE.
            QueueFullError: the queue is full.
        """
        with self._cond:
            self.node.check_serves(("INFERENCE",))
            job = self.store.submit(spec, self.config.max_queue, other_waiting=self.pending_tasks_locked())
            self._cond.notify_all()
        return job

    def run_task(
        self,
        name: str,
        fn: Callable[[LoadedModel, RuntimeOptions], T],
        states: tuple[ServiceState, ...] = ("INFERENCE",),
    ) -> Future[T]:
        """Queues ``fn(model, options)`` on the worker ahead of the waiting jobs.

        Args:
            name: what the task is (``cancel_tasks_locked`` finds tasks by name).
            fn: the work, given the loaded model and its runtime options.
            states: service states in which the task may be queued.

        Raises:
            ApiError: 409 when no model is up or in another state, 429 when the queue is full.
        """
        future: Future[T] = Future()
        node = self.node
        with self._cond:
            node.check_serves(states)
            waiting = self.store.waiting() + self.pending_tasks_locked()
            if waiting >= self.config.max_queue:
                raise ApiError(
                    429,
                    "queue_full",
                    f"queue: {waiting} tasks waiting; allowed: at most {self.config.max_queue}",
                    headers={"Retry-After": "5"},
                )

            def call() -> T:
                model, loaded = node.model, node.loaded_choice
                if model is None or loaded is None or loaded is not node.choice:
                    raise conflict("state: the model was unloaded before this task ran")
                return fn(model, loaded.options)

            self._tasks.append(_Task(name, call, future, counts_in_queue=True))
            self._cond.notify_all()
        return future

    def count_tasks_locked(self, name: str) -> int:
        """Waiting tasks called ``name`` (lock held)."""
        return sum(1 for task in self._tasks if task.name == name)

    def cancel_tasks_locked(self, name: str, reason: str) -> None:
        """Drops the waiting tasks called ``name``; their callers get a 409 with ``reason`` (lock held)."""
        for task in [task for task in self._tasks if task.name == name]:
            self._tasks.remove(task)
            task.future.set_exception(conflict(f"state: {reason}"))

    def delete_job(self, job_id: str) -> bool:
        """Deletes a job and its files.

        Returns:
            True when the job is running: the worker stops it at its next step and then deletes it.
        """
        with self._cond:
            if self._running == job_id:
                self._cancel = (f"deleted by DELETE /v1/videos/{job_id}", False)
                self._delete_after.add(job_id)
                return True
            # Under the lock: the worker cannot claim this job while its row goes.
            self.store.delete(job_id)
        self.artifacts.remove(job_id)
        return False

    # The worker thread.
    def _loop(self) -> None:
        while True:
            with self._cond:
                task: _Task | None = None
                job: VideoJob | None = None
                idle: IdleWork | None = None
                while True:
                    if self._stopping:
                        return
                    if self._tasks:
                        task = self._tasks.popleft()
                        break
                    if self.node.healthy:
                        job = self.store.claim_next()
                        if job is not None:
                            self._running, self._cancel = job.id, None
                            break
                    if self._idle_work is not None and self._idle_work.has_batch_locked():
                        idle = self._idle_work
                        break
                    self._cond.wait(timeout=1.0)
            if task is not None:
                self._run_task(task)
            elif idle is not None:
                idle.run_batch()
            elif job is not None:
                try:
                    self._run_job(job)
                finally:
                    with self._cond:
                        self._running, self._cancel = None, None
                        if job.id in self._delete_after:
                            self._delete_after.discard(job.id)
                            self.store.delete(job.id)
                            self.artifacts.remove(job.id)
                        self._cond.notify_all()

    def _run_task(self, task: _Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        try:
            task.future.set_result(task.fn())
        except BaseException as exc:  # handed to the waiting request, which reports it
            if not isinstance(exc, ApiError | DitproofError):
                log.exception("task %s failed", task.name)
            task.future.set_exception(exc)

    # The model's life cycle (on the worker thread).
    def _load(self, choice: ModelChoice) -> None:
        started = time.perf_counter()
        self._drop_model()  # never hold two models at once
        try:
            model = load_model(choice.preset, choice.options.load, model_path=choice.path)
        except Exception as exc:
            log.error("loading %s failed: %s", choice.name, exc)
            self.node.load_failed(choice, f"{type(exc).__name__}: {exc}")
            raise
        if not self.node.model_loaded(choice, model):
            return  # brought down while loading: drop it
        log.info("model %s loaded in %.1f s", choice.name, time.perf_counter() - started)

    def _unload(self) -> None:
        node = self.node
        with self._cond:
            if node.loaded_choice is not None and node.loaded_choice is node.choice:
                return  # brought up again with this very model since: keep it
        self._drop_model()

    def _drop_model(self) -> None:
        self.node.model_dropped()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # The job runner (on the worker thread).
    def _run_job(self, job: VideoJob) -> None:
        choice, model = self.node.loaded_choice, self.node.model
        if choice is None or model is None or job.spec.model != choice.name:
            loaded = choice.name if choice else None
            self.store.fail(
                job.id, "model_mismatch", f"model: the job needs {job.spec.model!r}; this node has {loaded!r} loaded"
            )
            return
        total = job.spec.request.num_inference_steps
        last = [-1]

        def on_step(done: int, steps: int) -> None:
            cancel = self._cancel
            if cancel is not None:
                raise _Cancelled(*cancel)
            percent = min(99, done * 100 // max(steps, total))
            if percent != last[0]:
                last[0] = percent
                self.store.set_progress(job.id, percent)

        staged = self.artifacts.staging(job.id)
        try:
            record = execute(
                job.spec.request,
                model,
                choice.options.run,
                staged,
                request_id=job.spec.request_id,
                entropy=job.spec.entropy,
                on_step=on_step,
                entropy_source=job.spec.entropy_source,
            )
            if record.seed != job.spec.seed:
                raise IntegrityError(
                    f"seed: the job was accepted with seed {job.spec.seed}, the run used {record.seed}"
                )
            self.artifacts.publish(job.id, staged)
            self.store.complete(job.id, record.sha256(), record.video.sha256)
        except _Cancelled as stop:
            self.artifacts.remove(job.id)
            if stop.requeue:
                self.store.requeue(job.id, refund_attempt=True)
            else:
                self.store.fail(job.id, "cancelled", stop.reason)
        except DitproofError as exc:
            self.artifacts.remove(job.id)
            code = "invalid_request" if isinstance(exc, InvalidInputError) else "generation_failed"
            self.store.fail(job.id, code, str(exc))
        except Exception as exc:  # the job fails visibly; the worker lives on
            log.exception("job %s failed", job.id)
            self.artifacts.remove(job.id)
            self.store.fail(job.id, "internal_error", f"{type(exc).__name__}: {exc}")
