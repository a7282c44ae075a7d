"""Callbacks of the PoC API: artifacts POSTed to the caller's URL, as Gonka's ML node sends them.

* A continuous round (``init/generate`` with ``url``) buffers its artifacts and POSTs them to
  ``{url}/generated`` every ``interval`` seconds as ``{public_key, block_hash, block_height,
  node_id, artifacts, encoding}``. A failed POST is retried (the same payload, backoff doubling
  up to 30 s) until it succeeds or the round stops; when the round stops, what is buffered is
  sent once more before the sender ends, so artifacts computed before ``stop`` are not dropped
  while the receiver answers.
* A queued ``generate`` request with ``url`` POSTs its result once to ``{url}/generated`` or
  ``{url}/validated``, retried until it succeeds or ``deadline_s`` passes.

Senders run on their own threads, never on the worker: a slow receiver never holds the GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import httpx

from ditproof.protocol.poc import PocArtifact

log = logging.getLogger("ditproof.server")

MAX_BACKOFF_S = 30.0


def _post(client: httpx.Client, url: str, payload: dict[str, Any]) -> str | None:
    """POSTs ``payload``; None on a 2xx/3xx answer, else what went wrong."""
    try:
        response = client.post(url, json=payload)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if response.status_code < 400 else f"HTTP {response.status_code}"


class RoundSender:
    """Sends a continuous round's artifacts to ``{url}/generated`` in batches (see the module docstring)."""

    def __init__(self, url: str, metadata: dict[str, Any], k_dim: int, interval_s: float, timeout_s: float = 10.0):
        self.url = f"{url}/generated"
        self.metadata = metadata
        self.encoding = {"dtype": "f16", "k_dim": k_dim, "endian": "le"}
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._buffer: list[PocArtifact] = []
        self._pending: list[PocArtifact] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ditproof-poc-callbacks", daemon=True)

    def start(self) -> RoundSender:
        """Starts the sender thread."""
        self._thread.start()
        return self

    def add(self, artifacts: Sequence[PocArtifact]) -> None:
        """Buffers artifacts for the next POST."""
        with self._lock:
            self._buffer.extend(artifacts)

    def pending(self) -> int:
        """Artifacts computed but not yet delivered."""
        with self._lock:
            return len(self._buffer) + len(self._pending)

    def stop(self) -> None:
        """Ends the round: one last POST of what is buffered, then the thread exits (no wait here)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        """Waits for the thread (tests and shutdown)."""
        self._thread.join(timeout)

    def _take(self) -> list[PocArtifact]:
        with self._lock:
            if not self._pending:
                self._pending, self._buffer = self._buffer, []
            return list(self._pending)

    def _deliver(self, client: httpx.Client) -> bool:
        batch = self._take()
        if not batch:
            return True
        payload = {**self.metadata, "artifacts": [a.model_dump() for a in batch], "encoding": self.encoding}
        problem = _post(client, self.url, payload)
        with self._lock:
            if problem is None:
                self._pending = []
                self.sent += 1
                return True
            self.failed += 1
            self.last_error = problem
        log.warning("PoC callback to %s failed (%s); %d artifacts kept for the next try", self.url, problem, len(batch))
        return False

    def _run(self) -> None:
        backoff = self.interval_s
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.wait(backoff):
                ok = self._deliver(client)
                backoff = self.interval_s if ok else min(max(backoff, 0.5) * 2, MAX_BACKOFF_S)
            self._deliver(client)


def post_result(url: str, payload: dict[str, Any], deadline_s: float = 60.0, timeout_s: float = 10.0) -> None:
    """POSTs one result on a new thread, retrying with backoff until it succeeds or ``deadline_s`` passes."""

    def run() -> None:
        stop = threading.Event()
        timer = threading.Timer(deadline_s, stop.set)
        timer.daemon = True
        timer.start()
        backoff = 0.5
        try:
            with httpx.Client(timeout=timeout_s) as client:
                while True:
                    problem = _post(client, url, payload)
                    if problem is None:
                        return
                    log.warning("PoC callback to %s failed (%s)", url, problem)
                    if stop.wait(backoff):
                        log.error("PoC callback to %s abandoned after %.0f s", url, deadline_s)
                        return
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            timer.cancel()

    threading.Thread(target=run, name="ditproof-poc-result", daemon=True).start()
