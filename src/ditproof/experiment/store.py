"""The experiment store: files addressed by URL through fsspec, written atomically, read verified.

``Store("results/run1")`` or ``Store("file:///data/run1")`` is a local folder; ``s3://bucket/run``
works when ``s3fs`` is installed (any fsspec protocol does). Layout::

    experiment.json                  the resolved experiment (checksummed JSON, see below)
    jobs.parquet                     the plan: one row per job, with the job spec as JSON
    manifest.parquet                 jobs.parquet + status, checksums, device and timings per job
    jobs/<id[:2]>/<id>/job.json      the job: configuration, request, runtime options
    jobs/<id[:2]>/<id>/video.mp4, record.json, latents/{initial,pre_switch,final}.safetensors
    jobs/<id[:2]>/<id>/result.json   written last: the sha256 and size of every artifact above
    jobs/<id[:2]>/<id>/failure.json  the last failure of a job that did not finish
    scores.parquet, analysis.json, thresholds.json, report/

Atomic writes: on a local folder, a temporary file in the same folder, fsync, then ``os.replace``;
on other filesystems, a temporary object then a move (object stores make a PUT visible whole).
A reader therefore sees the old file or the new one, never a part.

Verified reads: every artifact's sha256 is in its job's ``result.json``, and JSON documents
(``experiment.json``, ``job.json``, ``result.json``, ...) are stored as
``{"data": ..., "sha256": sha256(canonical JSON of data)}``; reading compares and raises
:class:`~ditproof.errors.IntegrityError` naming the file and both hashes.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ValidationError

from ditproof.errors import IntegrityError, InvalidInputError
from ditproof.hashing import atomic_write_bytes, canonical_json, sha256_bytes

M = TypeVar("M", bound=BaseModel)


def job_prefix(job_id: str) -> str:
    """The folder of a job's artifacts inside the store."""
    return f"jobs/{job_id[:2]}/{job_id}"


class Store:
    """A folder of experiment artifacts at ``url`` (see the module docstring)."""

    def __init__(self, url: str, **storage_options: Any):
        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as exc:
            raise InvalidInputError(
                f"store: got {url!r}; cannot open it ({exc}); allowed: a local folder, file://, or a URL whose "
                "fsspec filesystem is installed (s3:// needs s3fs)"
            ) from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = self.root.rstrip("/")

    def path(self, relative: str) -> str:
        """The filesystem path of ``relative`` (a ``/``-separated path inside the store)."""
        return f"{self.root}/{relative}" if relative else self.root

    def exists(self, relative: str) -> bool:
        """Whether ``relative`` exists."""
        return bool(self.fs.exists(self.path(relative)))

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Writes ``data`` atomically; returns its sha256."""
        target = self.path(relative)
        if self.local:
            atomic_write_bytes(target, data)
            return sha256_bytes(data)
        parent = target.rsplit("/", 1)[0]
        name = target.rsplit("/", 1)[-1]
        temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(temporary, "wb") as handle:
                handle.write(data)
            self.fs.mv(temporary, target)
        except BaseException:
            if self.fs.exists(temporary):
                self.fs.rm(temporary)
            raise
        return sha256_bytes(data)

    def read_bytes(self, relative: str, sha256: str | None = None) -> bytes:
        """Reads ``relative``; with ``sha256``, checks it.

        Raises:
            IntegrityError: the bytes' sha256 differs from ``sha256``.
            FileNotFoundError: the file is missing.
        """
        with self.fs.open(self.path(relative), "rb") as handle:
            data = handle.read()
        if sha256 is not None:
            actual = sha256_bytes(data)
            if actual != sha256:
                raise IntegrityError(
                    f"store {self.url}: {relative} has sha256 {actual}, expected {sha256} (corrupt or replaced)"
                )
        return data

    def write_json(self, relative: str, data: Any) -> str:
        """Writes a checksummed JSON document atomically; returns the sha256 of its data."""
        digest = sha256_bytes(canonical_json(data))
        document = {"data": data, "sha256": digest}
        self.write_bytes(relative, json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n")
        return digest

    def read_json(self, relative: str) -> Any:
        """Reads a checksummed JSON document, verifying its checksum.

        Raises:
            IntegrityError: not a checksummed document, or its data does not match its checksum.
        """
        raw = self.read_bytes(relative)
        try:
            document = json.loads(raw)
            data, digest = document["data"], document["sha256"]
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"store {self.url}: {relative} is not a checksummed JSON document") from None
        actual = sha256_bytes(canonical_json(data))
        if actual != digest:
            raise IntegrityError(f"store {self.url}: {relative} has data sha256 {actual}, its checksum says {digest}")
        return data

    def write_model(self, relative: str, model: BaseModel) -> str:
        """Writes a pydantic model as a checksummed JSON document."""
        return self.write_json(relative, model.model_dump(mode="json"))

    def read_model(self, relative: str, cls: type[M]) -> M:
        """Reads and validates a checksummed JSON document as ``cls``.

        Raises:
            IntegrityError: bad checksum, or data that is not a valid ``cls``.
        """
        data = self.read_json(relative)
        try:
            # JSON mode: strict models (RuntimeOptions) accept JSON arrays for their tuples there.
            return cls.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            raise IntegrityError(
                f"store {self.url}: {relative} is not a valid {cls.__name__} ({exc.errors()[0]})"
            ) from None

    def put_file(self, local_path: str | os.PathLike[str], relative: str) -> tuple[str, int]:
        """Copies a local file into the store atomically; returns (sha256, size)."""
        with open(local_path, "rb") as handle:
            data = handle.read()
        return self.write_bytes(relative, data), len(data)

    def write_parquet(self, relative: str, table: Any) -> str:
        """Writes a pyarrow table as Parquet atomically; returns the file's sha256."""
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return self.write_bytes(relative, buffer.getvalue())

    def read_parquet(self, relative: str) -> Any:
        """Reads a Parquet file as a pyarrow table.

        Raises:
            InvalidInputError: the file is missing (naming the command that writes it).
        """
        import pyarrow.parquet as pq

        if not self.exists(relative):
            raise InvalidInputError(f"store {self.url}: {relative} is missing (run the step that writes it first)")
        return pq.read_table(io.BytesIO(self.read_bytes(relative)))

    def remove(self, relative: str) -> None:
        """Removes a file if it exists."""
        if self.exists(relative):
            self.fs.rm(self.path(relative))
