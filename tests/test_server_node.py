"""The node's state owner, in process: the transitions it allows and refuses, PoC moving it through
its states (the GPU worker and the PoC side following), and crash recovery of the job store.

The state tests use no model; the others run a real GPU worker thread with the tiny random model
on the CPU, without HTTP (tests/test_server.py and tests/test_server_poc.py drive the same parts
through a real server).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from ditproof.models.registry import LoadedModel
from ditproof.protocol.request import GenerationRequest
from ditproof.server.artifacts import ArtifactStore
from ditproof.server.config import ServerConfig
from ditproof.server.errors import ApiError
from ditproof.server.jobs import JobSpec, JobStore, new_job_id
from ditproof.server.loading import ModelChoice, resolve_model
from ditproof.server.node import Change, Node
from ditproof.server.poc import PocService
from ditproof.server.poc_schemas import PowInitGenerateRequest
from ditproof.server.recovery import recover
from ditproof.server.worker import GpuWorker
from test_server_support import TOKEN, wait_for

TINY = "wan-tiny-random"
ROUND = {
    "block_hash": "7a" * 32,
    "block_height": 1200,
    "public_key": "gonka1participant",
    "node_id": 0,
    "node_count": 1,
    "batch_size": 4,
    "params": {"model": TINY, "seq_len": 64, "k_dim": 12},
}


def refusal(call, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert info.value.status == 409
    return info.value


def moves(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.was, c.now) for c in changes]


def test_the_node_refuses_transitions_it_does_not_allow_and_says_what_is_allowed(tmp_path):
    config = ServerConfig(data_dir=tmp_path, api_token=TOKEN)
    tiny, other = resolve_model(config, TINY), resolve_model(config, "wan-shapes-small")
    node = Node()
    changes: list[Change] = []
    node.subscribe(changes.append)

    # STOPPED: nothing runs, so there is no round to start or end and no work to take.
    message = refusal(node.start_poc).message
    assert "the node is in STOPPED" in message and "allowed: INFERENCE with a loaded model" in message
    assert "allowed: POW" in refusal(node.end_poc, "why").message
    assert refusal(node.check_serves, ("INFERENCE",)).code == "not_ready"
    assert node.state == "STOPPED" and changes == []

    # INFERENCE, loading: PoC waits for the model; another model is refused, the same one is a no-op.
    assert node.inference_up(tiny)
    assert (node.state, node.loading, node.healthy) == ("INFERENCE", True, False)
    assert changes[-1].load is tiny
    assert "(loading)" in refusal(node.start_poc).message
    assert "allowed: POST /api/v1/inference/down first" in refusal(node.inference_up, other).message
    assert not node.inference_up(resolve_model(config, TINY))

    # The worker reports the weights: healthy, and PoC may start.
    assert node.model_loaded(tiny, cast(LoadedModel, object()))
    assert node.healthy and node.describe()["loaded_model"] == TINY
    node.start_poc()
    assert node.describe()["poc_status"] == "GENERATING"

    # POW: neither up nor down; only PoC's end or a stop leave it.
    assert "the node is in POW; allowed: STOPPED or INFERENCE" in refusal(node.inference_up, tiny).message
    assert "the node is in POW; allowed: INFERENCE or STOPPED" in refusal(node.inference_down, "why").message
    assert "the node is in POW" in refusal(node.start_poc).message
    node.end_poc("round over")
    node.stop("test over")
    assert moves(changes) == [
        ("STOPPED", "INFERENCE"),
        ("INFERENCE", "POW"),
        ("POW", "INFERENCE"),
        ("INFERENCE", "STOPPED"),
    ]
    assert [c.reason for c in changes[2:]] == ["round over", "test over"]


def test_a_load_reported_late_or_failed_changes_only_what_is_still_asked_for(tmp_path):
    config = ServerConfig(data_dir=tmp_path, api_token=TOKEN)
    first, second = resolve_model(config, TINY), resolve_model(config, TINY)
    node = Node()
    node.inference_up(first)
    node.inference_down("down while loading")
    node.inference_up(second)
    assert not node.model_loaded(first, cast(LoadedModel, object()))  # no longer asked for: dropped
    node.load_failed(first, "RuntimeError: stale")
    assert (node.state, node.last_error, node.model) == ("INFERENCE", None, None)
    node.load_failed(second, "RuntimeError: no memory")
    assert node.state == "STOPPED" and node.last_error == f"loading {TINY!r} failed: RuntimeError: no memory"


@dataclass
class Parts:
    """A node as the app builds it, without HTTP."""

    node: Node
    worker: GpuWorker
    poc: PocService
    store: JobStore
    artifacts: ArtifactStore
    choice: ModelChoice
    changes: list[Change] = field(default_factory=list)


@pytest.fixture
def parts(tmp_path) -> Iterator[Parts]:
    config = ServerConfig(data_dir=tmp_path, api_token=TOKEN, poc_callback_interval_s=0.2)
    store, artifacts = JobStore(tmp_path / "jobs.sqlite3"), ArtifactStore(tmp_path / "artifacts")
    node = Node()
    worker = GpuWorker(node, config, store, artifacts)
    poc = PocService(node, worker, config)
    built = Parts(node, worker, poc, store, artifacts, resolve_model(config, TINY))
    node.subscribe(built.changes.append)
    worker.start()
    assert node.inference_up(built.choice)
    wait_for(lambda: node.healthy, timeout=120)
    yield built
    poc.shutdown("the test ended")
    worker.shutdown()
    store.close()


def job_spec(model: str, prompt: str = "a red circle", seed: int = 1) -> JobSpec:
    request = GenerationRequest(prompt=prompt, width=64, height=48, num_frames=5, num_inference_steps=3, seed=seed)
    return JobSpec(request=request, request_id=None, entropy=None, seed=seed, seed_derivation="explicit", model=model)


def test_poc_start_and_stop_move_the_node_and_the_worker_follows(parts):
    node, poc, worker = parts.node, parts.poc, parts.worker
    poc.init_generate(PowInitGenerateRequest.model_validate(ROUND))
    assert node.state == "POW"
    # The worker runs the round's batches as its idle work.
    wait_for(lambda: poc.round is not None and poc.round.total_processed >= 8, timeout=120)
    assert poc.status().status == "GENERATING"
    assert "allowed: INFERENCE" in refusal(worker.submit_job, job_spec(TINY)).message
    assert (
        "a round is already generating"
        in refusal(poc.init_generate, PowInitGenerateRequest.model_validate(ROUND)).message
    )

    poc.stop()
    assert (node.state, poc.round, poc.status().status) == ("INFERENCE", None, "IDLE")
    poc.stop()  # a second stop changes nothing (Gonka's stop is idempotent)
    assert node.state == "INFERENCE"

    # The node leaving POW for STOPPED ends the round too: the PoC side follows the node.
    poc.init_generate(PowInitGenerateRequest.model_validate(ROUND))
    node.stop("the node was stopped")
    assert (node.state, poc.round) == ("STOPPED", None)
    wait_for(lambda: node.model is None)  # the worker followed: unloaded
    assert [c.now for c in parts.changes] == ["INFERENCE", "POW", "INFERENCE", "POW", "STOPPED"]


def test_a_failed_batch_asks_the_node_back_to_inference(parts, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.setattr("ditproof.server.poc.compute_artifacts", broken)
    parts.poc.init_generate(PowInitGenerateRequest.model_validate(ROUND))
    wait_for(lambda: parts.node.state == "INFERENCE")
    assert parts.poc.round is None
    assert parts.poc.last_error == "the PoC round stopped: RuntimeError: the accelerator fell over"
    assert moves(parts.changes)[-1] == ("POW", "INFERENCE")
    assert parts.node.healthy  # the model stays up


def test_recovery_after_a_crash(parts):
    """What the node does with jobs a crash left ``in_progress`` (as tests/test_server_restart.py
    checks through a killed server)."""
    store, artifacts = parts.store, parts.artifacts
    done = store.submit(job_spec(TINY), max_queue=8)
    wait_for(lambda: store.get(done.id).status == "completed", timeout=120)  # a real run: a whole folder
    parts.poc.shutdown("crash")
    parts.worker.shutdown()  # the worker is gone; what follows is the store a crash leaves

    def started(prompt: str) -> str:
        job = store.submit(job_spec(TINY, prompt), max_queue=8)
        claimed = store.claim_next()
        assert claimed is not None and claimed.id == job.id
        return job.id

    published = started("published, not yet recorded")  # the crash hit between publish and complete
    shutil.copytree(artifacts.path(done.id), artifacts.path(published))
    torn = started("torn folder")
    shutil.copytree(artifacts.path(done.id), artifacts.path(torn))
    video = artifacts.path(torn) / artifacts.record(torn).video.file
    video.write_bytes(video.read_bytes()[:-1])
    twice = started("started twice")
    store.requeue(twice, refund_attempt=False)
    assert store.claim_next().attempts == 2
    waiting = store.submit(job_spec(TINY, "waiting"), max_queue=8).id
    (artifacts.root / f".tmp-{new_job_id()}").mkdir()

    report = recover(store, artifacts, max_attempts=2, will_load=True)
    assert report["published"] == [published] and report["requeued"] == [torn] and report["failed"] == [twice]
    assert len(report["cleaned"]) == 1 and report["cleaned"][0].startswith(".tmp-")
    assert store.get(published).record_sha256 == store.get(done.id).record_sha256
    assert store.get(torn).status == "queued" and not artifacts.exists(torn)
    assert (store.get(twice).status, store.get(twice).error_code) == ("failed", "interrupted")
    assert store.get(waiting).status == "queued"

    # Restarted without a model: queued jobs cannot run, and say so.
    report = recover(store, artifacts, max_attempts=2, will_load=False)
    assert report["failed"] == [torn, waiting]
    assert {store.get(i).error_code for i in (torn, waiting)} == {"node_restarted"}
