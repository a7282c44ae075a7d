"""``POST /api/v1/validate`` in the checkpoint and spot-check modes and the default ``auto``, over
real HTTP (tiny model).

The node re-runs segments from the executor's checkpoint files: those stored with a video, or
uploaded beside the record and video (in every mode but ``full``). Same class, different bytes is
``invalid`` in every mode, with no threshold consulted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ditproof.client import ApiError, Client, checkpoint_files
from test_server_support import ENTROPY, TINY, TOKEN, NodeProcess

pytestmark = pytest.mark.slow
SPOT_ENTROPY = "ab" * 16


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(tmp_path_factory.mktemp("node") / "data").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stored(client, node):
    """A completed job: its id, record, video and the folder of its files in the node's store."""
    job = client.create_video(prompt="a blue square moves right", request_id="modes-1", entropy=ENTROPY, **TINY)
    job = client.wait(job["id"], timeout=120)
    folder = node.data_dir / "artifacts" / job["id"]
    assert (folder / "record.json").is_file()
    return job["id"], client.record(job["id"]), client.content(job["id"]), folder


def error_fields(response: httpx.Response) -> list[str]:
    return [f["field"] for f in response.json()["error"]["fields"]]


def test_a_stored_video_validates_in_each_checkpoint_mode(client, stored):
    video_id = stored[0]
    verdict = client.validate_stored(video_id, mode="checkpoints")
    assert verdict["decision"] == "valid" and verdict["mode"] == "checkpoints", verdict["reason"]
    verdict = client.validate_stored(video_id, mode="spot-check", spot_segments=1, validator_entropy=SPOT_ENTROPY)
    assert verdict["decision"] == "valid" and verdict["mode"] == "spot-check", verdict["reason"]
    assert verdict["spot_check"]["validator_entropy"] == SPOT_ENTROPY
    assert 0 < verdict["cost_fraction"] < 1
    # The node regenerates in the executor's class: auto runs the full mode and says why.
    verdict = client.validate_stored(video_id, mode="auto")
    assert verdict["decision"] == "valid" and verdict["mode"] == "full", verdict["reason"]
    chosen = next(c for c in verdict["checks"] if c["name"] == "mode")
    assert chosen["detail"].startswith("full: the executor's class")


def test_uploaded_checkpoints_validate_and_a_forged_one_is_invalid(client, stored):
    _, record, video, folder = stored
    files = checkpoint_files(json.loads(record), folder)
    assert len(files) >= 3
    verdict = client.validate(record, video=video, mode="checkpoints", checkpoints=files)
    assert verdict["decision"] == "valid", verdict["reason"]
    # One checkpoint file altered after the record committed to it: the commitment check fails.
    name = sorted(files)[1]
    forged = {**files, name: files[name][:-1] + bytes([files[name][-1] ^ 1])}
    verdict = client.validate(record, video=video, mode="checkpoints", checkpoints=forged)
    assert verdict["decision"] == "invalid", verdict["reason"]
    # Without the files there is nothing to re-run: an error naming what is needed, not a guess.
    verdict = client.validate(record, video=video, mode="checkpoints")
    assert verdict["decision"] == "error" and "checkpoint files" in verdict["reason"]


def test_without_a_mode_the_node_runs_auto_and_takes_uploaded_checkpoints(client, http, stored):
    video_id, record, video, folder = stored
    files = checkpoint_files(json.loads(record), folder)
    parts = [("record", ("record.json", record)), ("video", ("video.mp4", video))]
    parts += [("checkpoint", (name, content)) for name, content in sorted(files.items())]
    # No mode field: auto. The node regenerates in the executor's class, so the full mode runs.
    response = http.post("/api/v1/validate", files=parts)
    assert response.status_code == 200, response.text
    verdict = response.json()
    assert verdict["decision"] == "valid" and verdict["mode"] == "full", verdict["reason"]
    chosen = next(c for c in verdict["checks"] if c["name"] == "mode")
    assert chosen["detail"].startswith("full: the executor's class")
    # The JSON form's default is auto too.
    verdict = http.post("/api/v1/validate", json={"video_id": video_id}).json()
    assert verdict["decision"] == "valid" and "mode" in [c["name"] for c in verdict["checks"]]
    # The full mode regenerates from the noise: checkpoint files beside it are refused, naming why.
    response = http.post("/api/v1/validate", files=parts, data={"mode": "full"})
    assert response.status_code == 422 and error_fields(response) == ["checkpoint"]
    assert "given in mode 'full'; allowed: with an uploaded video, in any mode but 'full'" in response.text
    with pytest.raises(ApiError) as info:
        client.validate(record, video=video, mode="full", checkpoints=files)
    assert info.value.status == 422 and [f["field"] for f in info.value.fields] == ["checkpoint"]


def test_the_client_leaves_the_default_mode_out_and_sends_any_other():
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"decision": "valid"})

    with Client("http://node", TOKEN, transport=httpx.MockTransport(answer)) as node:
        node.validate_stored("video_" + "0" * 32)
        node.validate_stored("video_" + "0" * 32, mode="full")
        node.validate(b"{}", video=b"v")
        node.validate(b"{}", video=b"v", mode="full")
    assert [json.loads(r.content) for r in sent[:2]] == [
        {"video_id": "video_" + "0" * 32},
        {"video_id": "video_" + "0" * 32, "mode": "full"},
    ]
    assert b'name="mode"' not in sent[2].content
    assert b'name="mode"\r\n\r\nfull\r\n' in sent[3].content


def test_same_class_different_bytes_is_invalid_in_the_checkpoint_modes(client, stored):
    _, record, video, folder = stored
    edited = json.loads(record)
    edited["request"]["prompt"] = "a green cube moves down"
    edited_bytes = json.dumps(edited).encode()
    files = checkpoint_files(edited, folder)
    for mode, extra in (("checkpoints", {}), ("spot-check", {"spot_segments": 4, "validator_entropy": SPOT_ENTROPY})):
        verdict = client.validate(edited_bytes, video=video, mode=mode, checkpoints=files, **extra)
        assert verdict["decision"] == "invalid", (mode, verdict["reason"])
        assert verdict["comparison"] == "same-class" and verdict["thresholds"] == {}, mode


def test_bad_mode_fields_are_refused_naming_the_field(http, stored):
    video_id, record, video, _ = stored
    response = http.post("/api/v1/validate", json={"video_id": video_id, "mode": "partial"})
    assert response.status_code == 422 and error_fields(response) == ["mode"]
    response = http.post("/api/v1/validate", json={"video_id": video_id, "spot_segments": 2})
    assert response.status_code == 422 and error_fields(response) == ["spot_segments"]
    assert "only with mode 'spot-check'" in response.text
    response = http.post(
        "/api/v1/validate", json={"video_id": video_id, "mode": "spot-check", "validator_entropy": "xyz"}
    )
    assert response.status_code == 422 and error_fields(response) == ["validator_entropy"]
    upload = {"record": ("record.json", record), "video": ("video.mp4", video)}
    response = http.post("/api/v1/validate", files=upload, data={"mode": "spot-check", "spot_segments": "0"})
    assert response.status_code == 422 and error_fields(response) == ["spot_segments"]
    response = http.post(
        "/api/v1/validate",
        files=[*upload.items(), ("checkpoint", ("../../etc/passwd", b"x"))],
        data={"mode": "checkpoints"},
    )
    assert response.status_code == 422 and error_fields(response) == ["checkpoint"]
    assert "the record's checkpoint files" in response.text
    response = http.post(
        "/api/v1/validate",
        files=[("record", ("record.json", record)), ("checkpoint", ("initial.safetensors", b"x"))],
        data={"video_id": video_id, "mode": "checkpoints"},
    )
    assert response.status_code == 422 and error_fields(response) == ["checkpoint"]
    response = http.post("/api/v1/validate", files=upload, data={"mode": ["full", "checkpoints"]})
    assert response.status_code == 422 and error_fields(response) == ["mode"]


def test_the_cli_client_uploads_the_checkpoints_of_a_record_folder(node, stored, tmp_path):
    folder = stored[3]
    env = dict(os.environ, DITPROOF_API_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "ditproof.cli.main", "client", "validate", "--url", node.url]
    command += ["--record", str(folder / "record.json"), "--mode", "spot-check", "--spot-segments", "2"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid" in run.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run([*command, "--artifacts", str(empty)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and "checkpoint" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert Path(folder / "record.json").is_file()  # nothing stored was touched
