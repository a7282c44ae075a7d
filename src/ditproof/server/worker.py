"""The node's engine: its service state and the one worker thread that owns the accelerator.

Everything that touches the model runs on the worker thread, one thing at a time: loading and
unloading, video jobs from the persistent queue, and validations. So two generations never run
at once, and a validation never races a generation for GPU memory.

State machine (Gonka ML-node states; one service at a time)::

    STOPPED --inference/up--> INFERENCE (loading, then healthy) --inference/down, stop--> STOPPED
    INFERENCE --pow init/generate--> POW --pow/stop--> INFERENCE;  POW --stop--> STOPPED
    (TRAIN is reserved for training.)

PoC (:mod:`ditproof.server.pow`) shares this worker: a round runs one batch at a time whenever
no task waits, and PoC ``generate`` requests are tasks like validations.

Rules for jobs, so that none is silently lost:

* jobs wait in the queue only while the node is in INFERENCE; leaving INFERENCE (down, stop, a
  failed load) fails every queued job with code ``cancelled`` and cancels the running one at its
  next denoising step;
* after a crash, a job found ``in_progress`` is published if its folder is whole (the crash hit
  between publishing and recording), else queued again at its old place, or failed with code
  ``interrupted`` once it has been started ``max_attempts`` times;
* a node restarted without a model to load fails its queued jobs with code ``node_restarted``;
* a clean shutdown puts the running job back in the queue without counting the attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ditproof import __version__
from ditproof.errors import DitproofError, IntegrityError, InvalidInputError
from ditproof.generation.execute import execute
from ditproof.models.registry import LoadedModel, load_model
from ditproof.protocol.options import RuntimeOptions
from ditproof.server.artifacts import ArtifactStore
from ditproof.server.config import ServerConfig
from ditproof.server.errors import ApiError, conflict
from ditproof.server.jobs import Job, JobSpec, JobStore
from ditproof.server.loading import ModelChoice
from ditproof.server.pow import PowService

log = logging.getLogger("ditproof.server")

ServiceState = Literal["POW", "INFERENCE", "TRAIN", "STOPPED"]
T = TypeVar("T")


class _Cancelled(Exception):
    """Raised from the step callback to stop a running job."""

    def __init__(self, reason: str, requeue: bool):
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


@dataclass
class _Task:
    """A unit of accelerator work other than a queued job (load, unload, validate)."""

    name: str
    fn: Callable[[], Any]
    future: Future[Any]
    counts_in_queue: bool


class Engine:
    """Service state, the loaded model and the worker thread.

    Public methods are called from the HTTP event loop; they only take short locks and never
    run model code themselves.
    """

    def __init__(self, config: ServerConfig, store: JobStore, artifacts: ArtifactStore):
        self.config = config
        self.store = store
        self.artifacts = artifacts
        self.state: ServiceState = "STOPPED"
        self.loading = False
        self.model: LoadedModel | None = None
        self.choice: ModelChoice | None = None
        self._model_choice: ModelChoice | None = None
        self.last_error: str | None = None
        self.started_at = time.time()
        self._cond = threading.Condition()
        self._tasks: deque[_Task] = deque()
        self._running: str | None = None
        self._cancel: tuple[str, bool] | None = None
        self._stopping = False
        self._delete_after: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="ditproof-worker", daemon=True)
        self.pow = PowService(self)

    @property
    def cond(self) -> threading.Condition:
        """The lock (and wake-up signal) of the state, the task queue and the worker."""
        return self._cond

    @property
    def loaded_choice(self) -> ModelChoice | None:
        """The model choice whose weights are in memory now (None while loading or unloaded)."""
        return self._model_choice

    # Life cycle.
    def start(self, startup_model: ModelChoice | None) -> dict[str, list[str]]:
        """Recovers the queue after a restart, starts the worker, and loads the start-up model.

        Returns:
            What recovery did: ``published``, ``requeued``, ``failed`` (job ids) and ``cleaned``.
        """
        report = self._recover(startup_model is not None)
        self._thread.start()
        if startup_model is not None:
            self.inference_up(startup_model)
        return report

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stops the worker; a running job goes back to the queue (resumed at next start)."""
        with self._cond:
            self._stopping = True
            self.pow.end_round_locked("the server shut down")
            if self._running is not None:
                self._cancel = ("the server shut down", True)
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _recover(self, will_load: bool) -> dict[str, list[str]]:
        report: dict[str, list[str]] = {"published": [], "requeued": [], "failed": [], "cleaned": []}
        for job in self.store.with_status("in_progress"):
            if self.artifacts.exists(job.id):
                try:
                    record = self.artifacts.verify(job.id)
                except (IntegrityError, InvalidInputError) as exc:
                    log.warning("job %s: discarding an incomplete artifact folder (%s)", job.id, exc)
                    self.artifacts.remove(job.id)
                else:
                    self.store.complete(job.id, record.sha256(), record.video.sha256)
                    report["published"].append(job.id)
                    continue
            if job.attempts >= self.config.max_attempts:
                self.store.fail(
                    job.id,
                    "interrupted",
                    f"the node stopped while running this job {job.attempts} times (allowed attempts: "
                    f"{self.config.max_attempts}); it is not retried",
                )
                report["failed"].append(job.id)
            else:
                self.store.requeue(job.id, refund_attempt=False)
                report["requeued"].append(job.id)
        if not will_load:
            for job in self.store.with_status("queued"):
                self.store.fail(
                    job.id,
                    "node_restarted",
                    "the node restarted without a model to load, so this job cannot run; submit it again "
                    "once the node is in state INFERENCE",
                )
                report["failed"].append(job.id)
        report["cleaned"] = self.artifacts.clean(self.store.ids())
        return report

    # State queries.
    @property
    def healthy(self) -> bool:
        """A model is loaded and the node serves inference."""
        return (
            self.state == "INFERENCE"
            and not self.loading
            and self.model is not None
            and (self._model_choice is self.choice)
        )

    @property
    def worker_alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive()

    def pending_tasks(self) -> int:
        """Accelerator tasks (validations) waiting besides the queued jobs."""
        with self._cond:
            return sum(1 for task in self._tasks if task.counts_in_queue)

    def running_job(self) -> str | None:
        """The id of the job on the accelerator now."""
        return self._running

    def snapshot(self) -> dict[str, Any]:
        """The fields of ``GET /api/v1/state``."""
        counts = self.store.counts()
        return {
            "state": self.state,
            "version": __version__,
            "poc_status": {"INFERENCE": "IDLE", "POW": "GENERATING"}.get(self.state),
            "inference_healthy": self.healthy if self.state == "INFERENCE" else None,
            "loaded_model": self._model_choice.name if self._model_choice is not None else None,
            "loading": self.loading,
            "last_error": self.last_error,
            "queue": {
                "queued": counts["queued"],
                "in_progress": counts["in_progress"],
                "pending_tasks": self.pending_tasks(),
                "capacity": self.config.max_queue,
            },
        }

    # State changes (called from the event loop).
    def inference_up(self, choice: ModelChoice) -> bool:
        """Moves to INFERENCE and loads ``choice`` on the worker.

        Returns:
            False when the same model with the same options is already loaded or loading.

        Raises:
            ApiError: 409 in another service state or with another model up.
        """
        with self._cond:
            if self.state not in ("STOPPED", "INFERENCE"):
                raise conflict(
                    f"state: the node is in {self.state}; allowed: STOPPED or INFERENCE (POST /api/v1/stop first)"
                )
            if self.state == "INFERENCE" and self.choice is not None:
                if (self.choice.name, self.choice.options) == (choice.name, choice.options):
                    return False
                raise conflict(
                    f"model: {self.choice.name!r} is up with {_describe(self.choice.options)}; requested {choice.name!r} "
                    f"with {_describe(choice.options)}; allowed: POST /api/v1/inference/down first"
                )
            self.state = "INFERENCE"
            self.loading = True
            self.choice = choice
            self.last_error = None
            self._tasks.append(_Task("load", lambda: self._load(choice), Future(), counts_in_queue=False))
            self._cond.notify_all()
        return True

    def inference_down(self, reason: str) -> None:
        """Leaves INFERENCE: cancels the jobs and unloads the model.

        Raises:
            ApiError: 409 in POW or TRAIN.
        """
        with self._cond:
            if self.state not in ("STOPPED", "INFERENCE"):
                raise conflict(
                    f"state: the node is in {self.state}; allowed: INFERENCE or STOPPED (use POST /api/v1/stop)"
                )
            self._leave_inference(reason)

    def stop(self, reason: str) -> None:
        """Stops whatever runs (any state) and goes to STOPPED."""
        with self._cond:
            self._leave_inference(reason)

    def _leave_inference(self, reason: str) -> None:
        # Called with the condition held: the worker cannot claim a job in between.
        was = self.state
        self.state = "STOPPED"
        self.choice = None
        self.loading = False
        self.pow.end_round_locked(reason)
        for job in self.store.with_status("queued"):
            self.store.fail(job.id, "cancelled", f"{reason} before the job started")
        if self._running is not None:
            self._cancel = (f"{reason} while the job ran", False)
        for task in list(self._tasks):
            if task.counts_in_queue:
                self._tasks.remove(task)
                task.future.set_exception(conflict(f"state: {reason} before this task ran"))
        if was != "STOPPED" or self.model is not None:
            self._tasks.append(_Task("unload", self._unload, Future(), counts_in_queue=False))
        self._cond.notify_all()

    # Work submission (called from the event loop).
    def submit_job(self, spec: JobSpec) -> Job:
        """Queues a video job (the store enforces the bound)."""
        with self._cond:
            if not self.state == "INFERENCE" or self.choice is None:
                raise conflict(
                    f"state: the node is in {self.state}; allowed: INFERENCE (POST /api/v1/inference/up first)",
                    code="not_ready",
                )
            job = self.store.submit(spec, self.config.max_queue, other_waiting=self.pending_tasks_locked())
            self._cond.notify_all()
        return job

    def pending_tasks_locked(self) -> int:
        return sum(1 for task in self._tasks if task.counts_in_queue)

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
        with self._cond:
            if self.state not in states or self.choice is None:
                raise conflict(
                    f"state: the node is in {self.state}; allowed: {' or '.join(states)} "
                    "(POST /api/v1/inference/up first)",
                    code="not_ready",
                )
            waiting = self.store.waiting() + self.pending_tasks_locked()
            if waiting >= self.config.max_queue:
                raise ApiError(
                    429,
                    "queue_full",
                    f"queue: {waiting} tasks waiting; allowed: at most {self.config.max_queue}",
                    headers={"Retry-After": "5"},
                )

            def call() -> T:
                model, loaded = self.model, self._model_choice
                if model is None or loaded is None or loaded is not self.choice:
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
            # Under the condition: the worker cannot claim this job while its row goes.
            self.store.delete(job_id)
        self.artifacts.remove(job_id)
        return False

    # The worker.
    def _loop(self) -> None:
        while True:
            with self._cond:
                task: _Task | None = None
                job: Job | None = None
                pow_batch = False
                while True:
                    if self._stopping:
                        return
                    if self._tasks:
                        task = self._tasks.popleft()
                        break
                    if self.healthy:
                        job = self.store.claim_next()
                        if job is not None:
                            self._running, self._cancel = job.id, None
                            break
                    if self.pow.has_batch_locked():
                        pow_batch = True
                        break
                    self._cond.wait(timeout=1.0)
            if task is not None:
                self._run_task(task)
            elif pow_batch:
                self.pow.run_batch()
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

    def _load(self, choice: ModelChoice) -> None:
        started = time.perf_counter()
        self._drop_model()  # never hold two models at once
        try:
            model = load_model(choice.preset, choice.options.load, model_path=choice.path)
        except Exception as exc:
            log.error("loading %s failed: %s", choice.name, exc)
            with self._cond:
                if self.choice is choice:
                    self.last_error = f"loading {choice.name!r} failed: {type(exc).__name__}: {exc}"
                    self._leave_inference(f"loading {choice.name!r} failed")
            raise
        with self._cond:
            if self.choice is not choice:
                return  # brought down while loading: drop it
            self.model, self._model_choice = model, choice
            self.loading = False
            self._cond.notify_all()
        log.info("model %s loaded in %.1f s", choice.name, time.perf_counter() - started)

    def _unload(self) -> None:
        with self._cond:
            if self._model_choice is not None and self._model_choice is self.choice:
                return  # brought up again with this very model since: keep it
        self._drop_model()

    def _drop_model(self) -> None:
        with self._cond:
            self.model, self._model_choice = None, None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _run_job(self, job: Job) -> None:
        choice, model = self._model_choice, self.model
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


def _describe(options: RuntimeOptions) -> str:
    return f"device={options.device}, dtype={options.dtype}, attention={options.attention_backend}"
