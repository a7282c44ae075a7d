"""The node's service state: one owner, one lock, every change through a method that checks it.

States (Gonka's ML-node states; one service at a time)::

    STOPPED --inference_up--> INFERENCE (loading, then healthy) --inference_down, stop--> STOPPED
    INFERENCE --start_poc--> POW --end_poc--> INFERENCE;  POW --stop--> STOPPED
    (TRAIN is reserved for training: no transition leads there yet.)

:class:`Node` alone writes the state, the model asked for, the model in memory and the last
error, always under :attr:`Node.cond`, the node's one lock. A transition that is not allowed
raises a 409 that names the state and what is allowed. The others ask and follow:

* the GPU worker (:mod:`ditproof.server.worker`) loads and unloads the model, reports the result
  with :meth:`Node.model_loaded`, :meth:`Node.load_failed` and :meth:`Node.model_dropped`, and
  follows changes (a load asked for: it queues the load; STOPPED: it cancels the jobs and
  unloads);
* the PoC side (:mod:`ditproof.server.poc`) asks for POW with :meth:`Node.start_poc` and back
  with :meth:`Node.end_poc`, and ends its round whenever the node leaves POW.

Followers subscribe with :meth:`Node.subscribe`; the node calls them after each change, in the
thread that asked for it and with the lock held, so nothing runs between a change and what
follows from it. This module imports neither of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ditproof import __version__
from ditproof.server.errors import conflict

if TYPE_CHECKING:
    from ditproof.models.registry import LoadedModel
    from ditproof.protocol.options import RuntimeOptions
    from ditproof.server.loading import ModelChoice

ServiceState = Literal["POW", "INFERENCE", "TRAIN", "STOPPED"]


@dataclass(frozen=True)
class Change:
    """A change of the node's state, as its followers see it.

    Attributes:
        was: the state before.
        now: the state after (may equal ``was``: ``stop`` in STOPPED still cancels and unloads).
        reason: why, in words that end up in job errors and the log.
        load: the model to load, when the change asks for one (``inference_up``).
    """

    was: ServiceState
    now: ServiceState
    reason: str
    load: ModelChoice | None = None


Follower = Callable[[Change], None]


class Node:
    """The node's service state and its one lock.

    Reads need no lock for a single field; anything that must see several fields together, or
    act on them, holds :attr:`cond`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()  # re-entrant: followers and callers may nest
        self._state: ServiceState = "STOPPED"
        self._loading = False
        self._choice: ModelChoice | None = None
        self._model: LoadedModel | None = None
        self._loaded: ModelChoice | None = None
        self._last_error: str | None = None
        self._followers: list[Follower] = []
        self.started_at = time.time()

    @property
    def cond(self) -> threading.Condition:
        """The node's one lock, and the wake-up signal of everything that waits on the node."""
        return self._cond

    def subscribe(self, follower: Follower) -> None:
        """Calls ``follower`` after every change, with the lock held, in subscription order."""
        with self._cond:
            self._followers.append(follower)

    # Reads.
    @property
    def state(self) -> ServiceState:
        """The service state."""
        return self._state

    @property
    def loading(self) -> bool:
        """A load asked for has not finished."""
        return self._loading

    @property
    def choice(self) -> ModelChoice | None:
        """The model asked for (None unless in INFERENCE or POW)."""
        return self._choice

    @property
    def model(self) -> LoadedModel | None:
        """The weights in memory (may outlive :attr:`choice` until the worker drops them)."""
        return self._model

    @property
    def loaded_choice(self) -> ModelChoice | None:
        """The model choice whose weights are in memory now (None while loading or unloaded)."""
        return self._loaded

    @property
    def last_error(self) -> str | None:
        """Why the last load failed (cleared by the next ``inference_up``)."""
        return self._last_error

    @property
    def healthy(self) -> bool:
        """A model is loaded and the node serves inference."""
        return (
            self._state == "INFERENCE"
            and not self._loading
            and self._model is not None
            and (self._loaded is self._choice)
        )

    def describe(self) -> dict[str, Any]:
        """The state's fields of ``GET /api/v1/state`` (the queue's come from the worker)."""
        return {
            "state": self._state,
            "version": __version__,
            "poc_status": {"INFERENCE": "IDLE", "POW": "GENERATING"}.get(self._state),
            "inference_healthy": self.healthy if self._state == "INFERENCE" else None,
            "loaded_model": self._loaded.name if self._loaded is not None else None,
            "loading": self._loading,
            "last_error": self._last_error,
        }

    def check_serves(self, states: tuple[ServiceState, ...]) -> None:
        """Refuses new work unless a model is asked for and the node is in one of ``states``.

        Raises:
            ApiError: 409 ``not_ready`` naming the state and the states allowed.
        """
        with self._cond:
            if self._state not in states or self._choice is None:
                raise conflict(
                    f"state: the node is in {self._state}; allowed: {' or '.join(states)} "
                    "(POST /api/v1/inference/up first)",
                    code="not_ready",
                )

    # Transitions asked for by the routes and the PoC side.
    def inference_up(self, choice: ModelChoice) -> bool:
        """STOPPED or INFERENCE → INFERENCE, loading ``choice`` (the worker follows and loads it).

        Returns:
            False when the same model with the same options is already loaded or loading.

        Raises:
            ApiError: 409 in another state, or with another model up.
        """
        with self._cond:
            if self._state not in ("STOPPED", "INFERENCE"):
                raise conflict(
                    f"state: the node is in {self._state}; allowed: STOPPED or INFERENCE (POST /api/v1/stop first)"
                )
            if self._state == "INFERENCE" and self._choice is not None:
                up = self._choice
                if (up.name, up.options) == (choice.name, choice.options):
                    return False
                raise conflict(
                    f"model: {up.name!r} is up with {_describe(up.options)}; requested {choice.name!r} "
                    f"with {_describe(choice.options)}; allowed: POST /api/v1/inference/down first"
                )
            was = self._state
            self._state, self._loading, self._choice, self._last_error = "INFERENCE", True, choice, None
            self._changed(Change(was, "INFERENCE", f"loading {choice.name!r}", load=choice))
        return True

    def inference_down(self, reason: str) -> None:
        """INFERENCE or STOPPED → STOPPED (the worker follows: cancels the jobs, unloads).

        Raises:
            ApiError: 409 in POW or TRAIN.
        """
        with self._cond:
            if self._state not in ("STOPPED", "INFERENCE"):
                raise conflict(
                    f"state: the node is in {self._state}; allowed: INFERENCE or STOPPED (use POST /api/v1/stop)"
                )
            self._stop(reason)

    def stop(self, reason: str) -> None:
        """Any state → STOPPED: whatever runs is stopped (allowed everywhere)."""
        with self._cond:
            self._stop(reason)

    def start_poc(self) -> None:
        """INFERENCE with a loaded model → POW.

        Raises:
            ApiError: 409 in another state, or while no model is loaded.
        """
        with self._cond:
            if not self.healthy:
                loading = " (loading)" if self._loading else ""
                raise conflict(
                    f"state: the node is in {self._state}{loading}; allowed: INFERENCE with a loaded model "
                    "(POST /api/v1/inference/up, then poll /api/v1/state until inference_healthy)"
                )
            self._state = "POW"
            self._changed(Change("INFERENCE", "POW", "a PoC round started"))

    def end_poc(self, reason: str) -> None:
        """POW → INFERENCE (the PoC side follows: its round ends).

        Raises:
            ApiError: 409 in another state.
        """
        with self._cond:
            if self._state != "POW":
                raise conflict(
                    f"state: the node is in {self._state}; allowed: POW (POST /api/v1/inference/pow/init/generate)"
                )
            self._state = "INFERENCE"
            self._changed(Change("POW", "INFERENCE", reason))

    # Reports of the worker.
    def model_loaded(self, choice: ModelChoice, model: LoadedModel) -> bool:
        """The worker has ``choice`` in memory.

        Returns:
            False when ``choice`` is no longer asked for (the node was brought down meanwhile):
            nothing is recorded and the caller drops the weights.
        """
        with self._cond:
            if self._choice is not choice:
                return False
            self._model, self._loaded, self._loading = model, choice, False
            self._cond.notify_all()
        return True

    def load_failed(self, choice: ModelChoice, error: str) -> None:
        """Loading ``choice`` failed: the node records why and stops, unless it was brought down
        (or up with another model) meanwhile."""
        with self._cond:
            if self._choice is choice:
                self._last_error = f"loading {choice.name!r} failed: {error}"
                self._stop(f"loading {choice.name!r} failed")

    def model_dropped(self) -> None:
        """The worker let go of the weights."""
        with self._cond:
            self._model, self._loaded = None, None

    # Lock held.
    def _stop(self, reason: str) -> None:
        was = self._state
        self._state, self._choice, self._loading = "STOPPED", None, False
        self._changed(Change(was, "STOPPED", reason))

    def _changed(self, change: Change) -> None:
        for follower in self._followers:
            follower(change)
        self._cond.notify_all()


def _describe(options: RuntimeOptions) -> str:
    return f"device={options.device}, dtype={options.dtype}, attention={options.attention_backend}"
