"""Jobs survive a crash: SIGKILL the server mid-queue, restart it on the same data folder.

After the restart every job is completed or reported failed (none lost), the interrupted job is
resumed, and every finished artifact still matches the hashes of its record and job. A second
crash with ``max_attempts = 1`` shows the other branch: the interrupted job is reported failed.
"""

from __future__ import annotations

import json

import pytest

from ditproof.client import Client
from ditproof.hashing import sha256_bytes
from test_server_support import ENTROPY, TINY, TOKEN, NodeProcess, wait_for

pytestmark = pytest.mark.slow

# Long enough (about a second per job here) for the kill to land mid-job and mid-queue.
SLOW = {"size": "64x48", "num_frames": 5, "num_inference_steps": 30}


def check_artifacts(client: Client, job: dict) -> bytes:
    """The job's video and record match each other and the job's hashes; returns the video."""
    record_bytes = client.record(job["id"])
    record = json.loads(record_bytes)
    video = client.content(job["id"])
    assert sha256_bytes(record_bytes.rstrip(b"\n")) == job["record_sha256"]
    assert sha256_bytes(video) == record["video"]["sha256"] == job["video_sha256"]
    return video


def test_kill_mid_queue_then_restart(tmp_path):
    data = tmp_path / "data"
    node = NodeProcess(data, "--max-queue", "8").start()
    try:
        with Client(node.url, TOKEN) as client:
            first = client.wait(client.create_video(prompt="before the crash", seed=1, **TINY)["id"])
            assert first["status"] == "completed"
            video_before = check_artifacts(client, first)
            queued = [
                client.create_video(prompt=f"queued {i}", request_id=f"restart-{i}", entropy=ENTROPY, **SLOW)
                for i in range(4)
            ]
            # Kill while the first queued job is part-way through its denoising loop.
            wait_for(lambda: client.get_video(queued[0]["id"])["progress"] >= 10, timeout=120, poll=0.02)
            node.kill()
    finally:
        node.kill()

    node = NodeProcess(data, "--max-queue", "8").start()
    try:
        with Client(node.url, TOKEN) as client:
            finals = [client.wait(job["id"], timeout=180) for job in queued]
            assert [job["status"] for job in finals] == ["completed"] * 4, finals
            assert finals[0]["attempts"] == 2  # interrupted once, resumed
            for job in finals:
                check_artifacts(client, job)
            again = client.get_video(first["id"])
            assert again["record_sha256"] == first["record_sha256"]
            assert check_artifacts(client, again) == video_before
            # Nothing half-written is left behind.
            assert not [p.name for p in (data / "artifacts").iterdir() if p.name.startswith(".")]

            # Crash again, now with a node that allows one attempt: the interrupted job fails, visibly.
            victim = client.create_video(prompt="interrupted twice", seed=9, **SLOW)
            behind = client.create_video(prompt="behind it", seed=10, **TINY)
            wait_for(lambda: client.get_video(victim["id"])["progress"] >= 10, timeout=120, poll=0.02)
            node.kill()
    finally:
        node.kill()

    config = tmp_path / "server.toml"
    config.write_text("max_attempts = 1\n")
    node = NodeProcess(data, "--config", str(config)).start()
    try:
        with Client(node.url, TOKEN) as client:
            failed = client.get_video(victim["id"])
            assert failed["status"] == "failed" and failed["error"]["code"] == "interrupted", failed
            assert client.wait(behind["id"], timeout=120)["status"] == "completed"
            assert check_artifacts(client, client.get_video(behind["id"]))
            listing = client.list_videos(limit=100)["data"]
            assert {job["status"] for job in listing} == {"completed", "failed"}
            assert len(listing) == 7
    finally:
        node.stop()
