"""The experiment store: atomic writes (local and generic fsspec), checksums verified on read."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from ditproof.errors import IntegrityError, InvalidInputError
from ditproof.experiment.jobs import JobResult, read_result, result_path
from ditproof.experiment.store import Store


def test_local_write_is_atomic_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "s"))
    store.write_bytes("a/b.bin", b"old")

    def fail(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("a/b.bin", b"new content")
    monkeypatch.undo()
    assert store.read_bytes("a/b.bin") == b"old"
    assert sorted(p.name for p in (tmp_path / "s" / "a").iterdir()) == ["b.bin"]  # no temporary left


def test_generic_fsspec_write_is_atomic_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(f"memory://ditproof-test-{uuid.uuid4().hex}")
    assert not store.local
    digest = store.write_bytes("x/y.bin", b"payload")
    assert store.read_bytes("x/y.bin", digest) == b"payload"

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("network down")

    monkeypatch.setattr(store.fs, "mv", fail)
    with pytest.raises(OSError, match="network down"):
        store.write_bytes("x/z.bin", b"partial?")
    monkeypatch.undo()
    assert not store.exists("x/z.bin")
    assert [p.rsplit("/", 1)[-1] for p in store.fs.ls(store.path("x"), detail=False)] == ["y.bin"]


def test_reads_verify_checksums(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    digest = store.write_bytes("v.mp4", b"video bytes")
    (tmp_path / "v.mp4").write_bytes(b"video bytez")
    with pytest.raises(IntegrityError, match=r"v\.mp4 has sha256 .*, expected " + digest):
        store.read_bytes("v.mp4", digest)


def test_checksummed_json_detects_tampering(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.write_json("doc.json", {"a": 1, "b": [1.5, "x"]})
    assert store.read_json("doc.json") == {"a": 1, "b": [1.5, "x"]}
    path = tmp_path / "doc.json"
    path.write_text(path.read_text().replace('"a": 1', '"a": 2'))
    with pytest.raises(IntegrityError, match="its checksum says"):
        store.read_json("doc.json")
    path.write_text("{not json")
    with pytest.raises(IntegrityError, match="not a checksummed JSON document"):
        store.read_json("doc.json")


def test_a_corrupt_result_means_the_job_is_redone(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    result = JobResult(
        job_id="ab" * 12,
        configuration="reference",
        artifacts=[],
        video_sha256="0" * 64,
        final_latent_sha256="1" * 64,
        noise_sha256="2" * 64,
        seed=1,
        device="cpu",
        device_name="x86_64",
        runtime_class="cpu",
        total_s=1.0,
        forward_passes=8,
        worker="w",
        run_id="r",
        attempt=1,
        finished_at="2026-11-27T00:00:00+00:00",
    )
    store.write_model(result_path(result.job_id), result)
    assert read_result(store, result.job_id) == result
    file = tmp_path / result_path(result.job_id)
    file.write_text(file.read_text().replace('"seed": 1', '"seed": 2'))
    assert read_result(store, result.job_id) is None


def test_missing_parquet_and_bad_urls_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="scores.parquet is missing"):
        Store(str(tmp_path)).read_parquet("scores.parquet")
    with pytest.raises(InvalidInputError, match="store: got 'nosuchproto://x'"):
        Store("nosuchproto://x")
