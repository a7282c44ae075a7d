"""The artifact store: one folder per finished job, published atomically.

Layout under ``data_dir/artifacts/``::

    video_<32 hex>/            a finished job: video.mp4, record.json, latents/*.safetensors
    .tmp-video_<32 hex>/       a job being generated (removed at start-up: never published)
    .trash-video_<32 hex>/     a job being deleted (removed at start-up)

The executor writes every file atomically and the record last; the worker then renames the
whole temporary folder into place, so a folder named by a job id is always complete. Folder
names only ever come from server-generated ids (checked against the id pattern), never from
client input.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ditproof.errors import IntegrityError, InvalidInputError
from ditproof.hashing import sha256_file
from ditproof.protocol.record import RECORD_FILE, InferenceRecord
from ditproof.server.jobs import is_job_id

_TMP, _TRASH = ".tmp-", ".trash-"


class ArtifactStore:
    """Finished job folders under one root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _checked(self, job_id: str) -> str:
        if not is_job_id(job_id):
            # Defence in depth: routes validate ids already; a path never comes from anything else.
            raise InvalidInputError(f"id: got {job_id!r}; allowed: video_ followed by 32 lower-case hex digits")
        return job_id

    def path(self, job_id: str) -> Path:
        """The published folder of a job (may not exist)."""
        return self.root / self._checked(job_id)

    def staging(self, job_id: str) -> Path:
        """A fresh, empty temporary folder for a job about to run."""
        tmp = self.root / f"{_TMP}{self._checked(job_id)}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def publish(self, job_id: str, staged: Path) -> Path:
        """Moves a staged folder into place with one rename (atomic on one file system)."""
        final = self.path(job_id)
        if final.exists():
            self._trash(job_id)
        os.replace(staged, final)
        _fsync_dir(self.root)
        return final

    def exists(self, job_id: str) -> bool:
        """Whether the job has a published folder."""
        return self.path(job_id).is_dir()

    def remove(self, job_id: str) -> None:
        """Deletes a job's folders (published and staged)."""
        self._trash(job_id)
        tmp = self.root / f"{_TMP}{self._checked(job_id)}"
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    def _trash(self, job_id: str) -> None:
        final = self.path(job_id)
        if final.exists():
            trash = self.root / f"{_TRASH}{job_id}"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def clean(self, known_ids: set[str]) -> list[str]:
        """Removes staged and trashed folders, and published folders of unknown jobs; returns what went."""
        removed = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            orphan = is_job_id(name) and name not in known_ids
            if name.startswith((_TMP, _TRASH)) or orphan:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(name)
        return removed

    def record(self, job_id: str) -> InferenceRecord:
        """The record of a published job."""
        return InferenceRecord.load(self.path(job_id) / RECORD_FILE)

    def verify(self, job_id: str) -> InferenceRecord:
        """Loads a published job's record and checks every file it names against its hashes.

        Raises:
            IntegrityError: a file missing or with another sha256 than the record states.
            InvalidInputError: no valid record.
        """
        folder = self.path(job_id)
        record = self.record(job_id)
        files = [(record.video.file, record.video.sha256)] + [(c.file, c.sha256) for c in record.checkpoints]
        for name, expected in files:
            path = folder / name
            if not path.is_file():
                raise IntegrityError(f"artifact {job_id}: {name} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise IntegrityError(f"artifact {job_id}: {name} has sha256 {actual}, the record states {expected}")
        return record


def _fsync_dir(path: Path) -> None:
    """Makes a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
