"""Proof-of-Compute on the node: continuous rounds and one-off requests, on the GPU worker.

State (the node owns it, :mod:`ditproof.server.node`; this side asks for changes)::

    INFERENCE --init/generate--> POW --pow/stop--> INFERENCE
    POW --/api/v1/stop--> STOPPED

* ``init/generate`` needs a loaded model and an idle video queue (409 otherwise: a video job
  would otherwise wait for the whole round), then asks the node for POW; in ``POW`` video
  requests are 409 ``not_ready``. Whenever the node leaves POW (``pow/stop``, ``/api/v1/stop``,
  a failed batch) the round ends: a round runs exactly while the node is in POW.
* The round runs on the worker one batch at a time, as its idle work: between batches the worker
  takes queued tasks first, so ``generate`` requests interleave with a running round, and
  ``stop`` takes effect after the batch in flight (whose artifacts are then dropped: the round
  has ended).
* ``generate`` requests run as worker tasks (ahead of waiting video jobs, bounded by the same
  queue: 429 past it) in ``INFERENCE`` and ``POW``. Their results stay in memory (the last
  :data:`MAX_RESULTS`): a PoC request lives for minutes, and after a restart its id is 404 and
  the caller asks again.

The math is the library's: :func:`ditproof.poc.compute.compute_artifacts` for the vectors,
:mod:`ditproof.poc.service` for Gonka's params, nonce assignment and the validation-mode check.
The HTTP routes and wire models keep Gonka's ``pow`` names (:mod:`ditproof.server.poc_schemas`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ditproof.errors import DitproofError, InvalidInputError
from ditproof.poc.compute import PocModel, check_params, compute_artifacts
from ditproof.poc.service import assigned_nonces, check_batch, params_for_seq_len, policy_from_stat_test
from ditproof.protocol.poc import PocParams
from ditproof.server.callbacks import RoundSender, post_result
from ditproof.server.config import ServerConfig
from ditproof.server.errors import ApiError, conflict, invalid
from ditproof.server.node import Change, Node
from ditproof.server.poc_schemas import (
    PocWireParams,
    PowGenerateRequest,
    PowGenerateResponse,
    PowInitGenerateRequest,
    PowRoundConfig,
    PowStats,
    PowStatusResponse,
)
from ditproof.server.worker import GpuWorker

if TYPE_CHECKING:
    from ditproof.models.registry import LoadedModel
    from ditproof.protocol.options import RuntimeOptions

log = logging.getLogger("ditproof.server")

MAX_RESULTS = 1000
TASK_NAME = "poc-generate"


def new_request_id() -> str:
    """``poc_`` and 32 random hex digits."""
    return f"poc_{uuid.uuid4().hex}"


@dataclass
class PocRequest:
    """A ``generate`` request and, once done, its answer."""

    id: str
    nonce_count: int
    status: str = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)

    def response(self) -> PowGenerateResponse:
        """The body of ``GET generate/{id}``."""
        body: dict[str, Any] = {"status": self.status, "request_id": self.id}
        if self.status == "queued":
            body["queued_count"] = self.nonce_count
        if self.result is not None:
            body.update(self.result)
        if self.error is not None:
            body["error"] = self.error
        return PowGenerateResponse.model_validate(body)


@dataclass
class Round:
    """A continuous round started by ``init/generate``."""

    request: PowInitGenerateRequest
    params: PocParams
    model: str
    sender: RoundSender | None
    started_at: float = field(default_factory=time.monotonic)
    next_index: int = 0
    total_processed: int = 0
    stopped: bool = False

    def config(self) -> PowRoundConfig:
        r = self.request
        return PowRoundConfig(
            block_hash=r.block_hash,
            block_height=r.block_height,
            public_key=r.public_key,
            node_id=r.node_id,
            node_count=r.node_count,
            group_id=r.group_id,
            n_groups=r.n_groups,
            seq_len=self.params.tokens(),
            k_dim=self.params.k_dim,
            batch_size=r.batch_size,
            model=self.model,
        )


class PocService:
    """The PoC side of the node: asks the node for POW and back, runs on the GPU worker.

    It follows the node (a round ends whenever the node leaves POW) and plugs into the worker as
    its idle work (the round's batches).
    """

    def __init__(self, node: Node, worker: GpuWorker, config: ServerConfig):
        self.node = node
        self.worker = worker
        self.config = config
        self.round: Round | None = None
        self.last_error: str | None = None
        self._requests: OrderedDict[str, PocRequest] = OrderedDict()
        self._lock = threading.Lock()  # the in-memory requests only; the node's lock guards the round
        node.subscribe(self._follow)
        worker.set_idle_work(self)

    # Called from the event loop.
    def _resolve(self, wire: PocWireParams, batch_size: int) -> PocParams:
        """Checks the node can run ``wire`` now and maps it to PoC parameters (node lock held)."""
        node, limits = self.node, self.config
        if wire.seq_len > limits.poc_max_seq_len:
            raise invalid(
                "params.seq_len", f"got {wire.seq_len}; allowed: at most {limits.poc_max_seq_len} on this node"
            )
        if batch_size * wire.seq_len > limits.poc_max_batch_tokens:
            raise invalid(
                "batch_size",
                f"got {batch_size} nonces of {wire.seq_len} tokens; allowed: batch_size × seq_len at most "
                f"{limits.poc_max_batch_tokens} on this node",
            )
        model, choice = node.model, node.choice
        if (
            node.state not in ("INFERENCE", "POW")
            or model is None
            or choice is None
            or node.loading
            or node.loaded_choice is not choice
        ):
            raise conflict(
                f"state: the node is {node.state}{' (loading)' if node.loading else ''}; allowed: a loaded model "
                "(POST /api/v1/inference/up, then poll /api/v1/state until inference_healthy)",
                code="not_ready",
            )
        if wire.model not in (choice.name, model.preset):
            raise ApiError(
                409,
                "params_mismatch",
                f"params.model: got {wire.model!r}; this node has {choice.name!r} loaded",
                [("params.model", f"got {wire.model!r}; allowed: {choice.name!r} (or its preset {model.preset!r})")],
            )
        runner = PocModel.from_loaded(model)
        params = params_for_seq_len(wire.seq_len, wire.k_dim, latent_channels=runner.in_channels)
        check_params(runner, params)
        return params

    def init_generate(self, body: PowInitGenerateRequest) -> None:
        """Starts a continuous round: asks the node for POW.

        Raises:
            ApiError: 409 when a round runs, video jobs wait or run, or no model is up; 422 for params.
        """
        node = self.node
        with node.cond:
            if self.round is not None:
                r = self.round.request
                raise conflict(
                    f"pow: a round is already generating (block_hash {r.block_hash}, node {r.node_id} of "
                    f"{r.node_count}); allowed: POST /api/v1/inference/pow/stop first"
                )
            params = self._resolve(body.params, body.batch_size)
            counts = self.worker.store.counts()
            busy = counts["queued"] + counts["in_progress"]
            if busy:
                raise conflict(
                    f"state: {busy} video jobs are queued or running; allowed: init/generate on a node without video "
                    "jobs (wait for them or DELETE them first)"
                )
            assert node.choice is not None  # _resolve checked it
            model = node.choice.name
            node.start_poc()  # refuses (409) unless INFERENCE with a loaded model; nothing started yet
            sender = None
            if body.url is not None:
                metadata = {
                    "public_key": body.public_key,
                    "block_hash": body.block_hash,
                    "block_height": body.block_height,
                    "node_id": body.node_id,
                }
                sender = RoundSender(body.url, metadata, params.k_dim, self.config.poc_callback_interval_s).start()
            self.round = Round(request=body, params=params, model=model, sender=sender)
            self.last_error = None
            node.cond.notify_all()
        log.info("PoC round started: block %s, node %d of %d", body.block_hash, body.node_id, body.node_count)

    def stop(self) -> None:
        """Ends the round and cancels queued ``generate`` requests; POW goes back to INFERENCE."""
        node = self.node
        with node.cond:
            if node.state == "POW":
                node.end_poc("the PoC round was stopped (POST /api/v1/inference/pow/stop)")
            self.worker.cancel_tasks_locked(TASK_NAME, "the PoC round was stopped before this request ran")
            node.cond.notify_all()

    def shutdown(self, reason: str) -> None:
        """Ends the round without a state change (the server is going down)."""
        with self.node.cond:
            self._end_round_locked(reason)

    def status(self) -> PowStatusResponse:
        """``GET status``."""
        node = self.node
        with node.cond:
            current = self.round
            queued = self.worker.count_tasks_locked(TASK_NAME)
            state = node.state
        if current is None:
            return PowStatusResponse(
                status="IDLE", config=None, stats=None, state=state, queued_requests=queued, last_error=self.last_error
            )
        elapsed = time.monotonic() - current.started_at
        sender = current.sender
        stats = PowStats(
            total_processed=current.total_processed,
            nonces_per_second=round(current.total_processed / elapsed, 3) if elapsed > 0 else 0.0,
            callbacks_sent=sender.sent if sender else 0,
            callbacks_failed=sender.failed if sender else 0,
            artifacts_pending=sender.pending() if sender else 0,
        )
        return PowStatusResponse(
            status="GENERATING",
            config=current.config(),
            stats=stats,
            state=state,
            queued_requests=queued,
            last_error=self.last_error,
        )

    def submit(self, body: PowGenerateRequest) -> tuple[PocRequest, Future[dict[str, Any]]]:
        """Queues a ``generate`` request on the worker.

        Raises:
            ApiError: 409 (no model, params mismatch), 422 (params, stat_test), 429 (queue full).
        """
        if len(body.nonces) > self.config.poc_max_nonces:
            raise invalid("nonces", f"got {len(body.nonces)} nonces; allowed: at most {self.config.poc_max_nonces}")
        with self.node.cond:
            params = self._resolve(body.params, body.batch_size)
        policy = None
        if body.validation is not None:
            test = body.stat_test.model_dump() if body.stat_test is not None else {}
            try:
                policy = policy_from_stat_test(**test)
            except InvalidInputError as exc:
                raise invalid("stat_test", str(exc)) from None
        request = PocRequest(id=new_request_id(), nonce_count=len(body.nonces))

        def run(model: LoadedModel, options: RuntimeOptions) -> dict[str, Any]:
            with self._lock:
                request.status = "running"
            artifacts = compute_artifacts(
                PocModel.from_loaded(model), params, body.block_hash, body.public_key, body.nonces, body.batch_size
            )
            if body.validation is None or policy is None:
                return {
                    "artifacts": [a.model_dump() for a in artifacts],
                    "encoding": {"dtype": "f16", "k_dim": params.k_dim, "endian": "le"},
                }
            return check_batch(artifacts, body.validation.artifacts, params.k_dim, policy).model_dump()

        future = self.worker.run_task(TASK_NAME, run, states=("INFERENCE", "POW"))
        with self._lock:
            self._requests[request.id] = request
            self._evict()
        future.add_done_callback(lambda done: self._finish(request, body, done))
        return request, future

    def get(self, request_id: str) -> PocRequest | None:
        """A request by id (None when unknown or evicted)."""
        with self._lock:
            return self._requests.get(request_id)

    def _finish(self, request: PocRequest, body: PowGenerateRequest, future: Future[dict[str, Any]]) -> None:
        exc = future.exception()
        with self._lock:
            if exc is None:
                request.status, request.result = "completed", future.result()
            elif isinstance(exc, ApiError) and exc.status == 409:
                request.status, request.error = "cancelled", exc.message
            else:
                request.status = "failed"
                request.error = (
                    str(exc) if isinstance(exc, DitproofError | ApiError) else f"internal error ({type(exc).__name__})"
                )
        if body.url is None or body.wait or request.status != "completed":
            return  # as Gonka's node: only finished results are reported; failures show in generate/{id}
        # Gonka's queued requests report to {url}/generated or {url}/validated.
        meta = {
            "request_id": request.id,
            "block_hash": body.block_hash,
            "block_height": body.block_height,
            "public_key": body.public_key,
            "node_id": body.node_id,
        }
        path = "validated" if body.validation is not None else "generated"
        post_result(f"{body.url}/{path}", {**meta, **request.response().model_dump(exclude_none=True)})

    def _evict(self) -> None:
        while len(self._requests) > MAX_RESULTS:
            oldest = next((key for key, r in self._requests.items() if r.status not in ("queued", "running")), None)
            if oldest is None:
                return
            del self._requests[oldest]

    # Following the node (lock held).
    def _follow(self, change: Change) -> None:
        if change.now != "POW":
            self._end_round_locked(change.reason)

    def _end_round_locked(self, reason: str) -> None:
        """Stops the round, if any (its sender sends what is buffered once more, then ends)."""
        current = self.round
        if current is None:
            return
        current.stopped = True
        if current.sender is not None:
            current.sender.stop()
        self.round = None
        log.info("PoC round ended after %d nonces: %s", current.total_processed, reason)

    # The worker's idle work.
    def has_batch_locked(self) -> bool:
        """Whether the worker should run a round batch now."""
        return self.node.state == "POW" and self.round is not None

    def run_batch(self) -> None:
        """Computes the round's next batch and hands it to the callback sender (worker thread)."""
        node = self.node
        with node.cond:
            current, model = self.round, node.model
            if current is None or model is None:
                return
            r = current.request
            try:
                nonces = assigned_nonces(
                    r.node_id, r.node_count, current.next_index, r.batch_size, r.group_id, r.n_groups
                )
            except InvalidInputError as exc:
                self._fail_locked(current, str(exc))
                return
            current.next_index += r.batch_size
        try:
            artifacts = compute_artifacts(
                PocModel.from_loaded(model), current.params, r.block_hash, r.public_key, nonces, r.batch_size
            )
        except Exception as exc:  # the round fails visibly (status and state); the worker lives on
            log.exception("PoC round batch failed")
            with node.cond:
                self._fail_locked(current, f"{type(exc).__name__}: {exc}")
            return
        with node.cond:
            if self.round is current and not current.stopped:
                current.total_processed += len(artifacts)
                if current.sender is not None:
                    current.sender.add(artifacts)

    def _fail_locked(self, current: Round, message: str) -> None:
        if self.round is not current:
            return
        self.last_error = f"the PoC round stopped: {message}"
        if self.node.state == "POW":
            self.node.end_poc(self.last_error)  # the round ends as the node leaves POW
        else:
            self._end_round_locked(self.last_error)
