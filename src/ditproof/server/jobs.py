"""The persistent job store: one SQLite file, one row per video job.

A job is ``queued`` → ``in_progress`` → ``completed`` or ``failed`` (the statuses of the
OpenAI/vLLM-Omni video API). The store is the source of truth across restarts: the worker
claims the oldest queued job in a transaction, and after a crash :meth:`JobStore.in_progress`
lists the jobs that were interrupted, so that none is silently lost (see
``ditproof.server.worker``). SQLite runs in WAL mode with ``synchronous=FULL``: a committed
status survives a killed process and a power cut.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ditproof.hashing import canonical_json
from ditproof.protocol.request import GenerationRequest

JOB_SCHEMA: Literal["ditproof.job/1"] = "ditproof.job/1"
STORE_VERSION = "1"
JOB_ID_PATTERN = r"^video_[0-9a-f]{32}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)

JobStatus = Literal["queued", "in_progress", "completed", "failed"]


class JobSpec(BaseModel):
    """What a video job runs: the request, where its seed comes from and the model it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.job/1"] = JOB_SCHEMA
    request: GenerationRequest
    request_id: str | None
    entropy: str | None
    # "executor": the node drew the entropy for a client that brought neither seed nor entropy.
    entropy_source: Literal["client", "executor"] = "client"
    seed: int
    seed_derivation: Literal["ditproof-seed-v1", "explicit"]
    model: str
    user: str | None = None


class VideoJob(BaseModel):
    """A video generation job: a row of the store (an experiment's unit of work is
    :class:`ditproof.experiment.plan.Job`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    status: JobStatus
    spec: JobSpec
    created_at: float
    started_at: float | None
    completed_at: float | None
    attempts: int
    progress: int
    error_code: str | None
    error_message: str | None
    record_sha256: str | None
    video_sha256: str | None


class QueueFullError(Exception):
    """The bounded queue holds as many waiting jobs as allowed."""

    def __init__(self, waiting: int, limit: int):
        super().__init__(f"queue: {waiting} jobs waiting; allowed: at most {limit}")
        self.waiting = waiting
        self.limit = limit


def new_job_id() -> str:
    """A fresh server-generated id: ``video_`` and 32 hex digits (random, never from input)."""
    return f"video_{uuid.uuid4().hex}"


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the form of a job id (so it is safe as a folder name)."""
    return bool(_JOB_ID.match(value))


_COLUMNS = (
    "id, status, payload, created_at, started_at, completed_at, attempts, progress, "
    "error_code, error_message, record_sha256, video_sha256"
)


class JobStore:
    """Thread-safe access to the job table (one connection behind a lock; every call is short)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT UNIQUE NOT NULL,
                status TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at REAL NOT NULL,
                started_at REAL,
                completed_at REAL,
                attempts INTEGER NOT NULL DEFAULT 0,
                progress INTEGER NOT NULL DEFAULT 0,
                error_code TEXT,
                error_message TEXT,
                record_sha256 TEXT,
                video_sha256 TEXT
            );
            CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
            """
        )
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('store_version', ?)", (STORE_VERSION,))
            elif row[0] != STORE_VERSION:
                raise RuntimeError(f"job store {self.path}: version {row[0]}; this ditproof reads {STORE_VERSION}")

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self._db.close()

    # Reads.
    def get(self, job_id: str) -> VideoJob | None:
        """The job with this id, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def page(self, limit: int = 20, after: str | None = None) -> list[VideoJob]:
        """Jobs in submission order, ``limit`` of them, starting after the job ``after``."""
        with self._lock:
            start = 0
            if after is not None:
                found = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                start = found[0] if found else 0
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE seq > ? ORDER BY seq LIMIT ?", (start, limit)
            ).fetchall()
        return [_job(row) for row in rows]

    def with_status(self, status: JobStatus) -> list[VideoJob]:
        """All jobs with ``status``, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status = ? ORDER BY seq", (status,)).fetchall()
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = {"queued": 0, "in_progress": 0, "completed": 0, "failed": 0}
        counts.update({status: count for status, count in rows})
        return counts

    def ids(self) -> set[str]:
        """Every job id in the store."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM jobs")}

    # Writes.
    def submit(self, spec: JobSpec, max_queue: int, other_waiting: int = 0) -> VideoJob:
        """Adds a queued job, unless ``max_queue`` jobs (plus ``other_waiting`` tasks) already wait.

        Raises:
            QueueFullError: when the queue is full.
        """
        job_id = new_job_id()
        payload = canonical_json(spec.model_dump(mode="json")).decode()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                waiting = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
                if waiting + other_waiting >= max_queue:
                    raise QueueFullError(waiting + other_waiting, max_queue)
                self._db.execute(
                    "INSERT INTO jobs (id, status, payload, created_at) VALUES (?, 'queued', ?, ?)",
                    (job_id, payload, time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        job = self.get(job_id)
        assert job is not None
        return job

    def waiting(self) -> int:
        """Number of queued jobs."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0])

    def claim_next(self) -> VideoJob | None:
        """Marks the oldest queued job in progress (one more attempt) and returns it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE jobs SET status = 'in_progress', attempts = attempts + 1, started_at = ?, "
                        "progress = 0 WHERE id = ?",
                        (time.time(), row[0]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row[0]) if row else None

    def set_progress(self, job_id: str, progress: int) -> None:
        """Records progress (0-100) of a running job."""
        self._exec("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'in_progress'", (progress, job_id))

    def complete(self, job_id: str, record_sha256: str, video_sha256: str) -> None:
        """Marks a job completed, with the hashes of its record and video."""
        self._exec(
            "UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?, record_sha256 = ?, "
            "video_sha256 = ?, error_code = NULL, error_message = NULL WHERE id = ?",
            (time.time(), record_sha256, video_sha256, job_id),
        )

    def fail(self, job_id: str, code: str, message: str) -> None:
        """Marks a job failed, with a machine-readable code and a readable message."""
        self._exec(
            "UPDATE jobs SET status = 'failed', completed_at = ?, error_code = ?, error_message = ? WHERE id = ?",
            (time.time(), code, message, job_id),
        )

    def requeue(self, job_id: str, refund_attempt: bool) -> None:
        """Puts an interrupted job back in the queue at its old place (it keeps its sequence number)."""
        refund = 1 if refund_attempt else 0
        self._exec(
            "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL, "
            "attempts = MAX(attempts - ?, 0) WHERE id = ?",
            (refund, job_id),
        )

    def delete(self, job_id: str) -> bool:
        """Removes the row; True if it existed."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return cursor.rowcount > 0

    def _exec(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)


def _job(row: tuple[object, ...]) -> VideoJob:
    (job_id, status, payload, created, started, completed, attempts, progress, code, message, rec, vid) = row
    return VideoJob(
        id=str(job_id),
        status=status,  # type: ignore[arg-type]
        spec=JobSpec.model_validate_json(str(payload)),
        created_at=float(created),  # type: ignore[arg-type]
        started_at=None if started is None else float(started),  # type: ignore[arg-type]
        completed_at=None if completed is None else float(completed),  # type: ignore[arg-type]
        attempts=int(attempts),  # type: ignore[call-overload]
        progress=int(progress),  # type: ignore[call-overload]
        error_code=None if code is None else str(code),
        error_message=None if message is None else str(message),
        record_sha256=None if rec is None else str(rec),
        video_sha256=None if vid is None else str(vid),
    )
