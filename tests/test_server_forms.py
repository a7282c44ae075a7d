"""Multipart form fields over real HTTP: UTF-8 or refused, never read as latin-1.

A `ditproof serve` subprocess on loopback with the tiny model. Starlette alone decodes a form
field that is not UTF-8 as latin-1, so these requests used to be queued with a prompt the client
never sent (``b"\\xff\\xfe"`` recorded as ``"ÿþ"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from test_server_support import TINY, TOKEN, NodeProcess, wait_for

pytestmark = pytest.mark.slow

BOUNDARY = "ditproof-test-boundary"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(tmp_path_factory.mktemp("forms") / "data").start()
    yield process
    process.stop()


def multipart(*parts: tuple[bytes, bytes, bytes]) -> bytes:
    """A multipart body from (name, extra part headers, value) triples, bytes as given."""
    body = b""
    for name, headers, value in parts:
        body += f"--{BOUNDARY}\r\n".encode() + b'Content-Disposition: form-data; name="' + name + b'"\r\n'
        body += headers + b"\r\n" + value + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(http: httpx.Client, path: str, body: bytes, content_type: str | None = None) -> httpx.Response:
    content_type = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return http.post(path, content=body, headers={"Content-Type": content_type})


FIELDS = [
    (b"seed", b"", b"1"),
    (b"size", b"", TINY["size"].encode()),
    (b"num_frames", b"", str(TINY["num_frames"]).encode()),
    (b"num_inference_steps", b"", str(TINY["num_inference_steps"]).encode()),
]


def fields_of(response: httpx.Response) -> dict[str, str]:
    error = response.json()["error"]
    assert error["code"] == "invalid_request", error
    return {entry["field"]: entry["message"] for entry in error["fields"]}


@pytest.mark.parametrize("path", ["/v1/videos", "/v1/videos/sync"])
@pytest.mark.parametrize("field", [b"prompt", b"negative_prompt"])
def test_a_text_field_that_is_not_utf8_is_refused_by_name(http, path, field):
    parts = [(b"prompt", b"", b"a red circle"), *FIELDS]
    parts = [p for p in parts if p[0] != field] + [(field, b"", b"a red \xff\xfe circle")]
    response = post(http, path, multipart(*parts))
    assert response.status_code == 422, response.text
    fields = fields_of(response)
    assert list(fields) == [field.decode()], fields
    assert "byte 6 (b'\\xff') is not UTF-8" in fields[field.decode()]
    assert "allowed: UTF-8 text" in fields[field.decode()]


def test_every_bad_field_is_named_in_one_answer(http):
    body = multipart((b"prompt", b"", b"caf\xe9"), (b"user", b"", b"\xc3("), *FIELDS)
    response = post(http, "/v1/videos", body)
    assert response.status_code == 422
    assert set(fields_of(response)) == {"prompt", "user"}


def test_a_field_name_that_is_not_utf8_is_refused(http):
    body = multipart((b"prompt", b"", b"a red circle"), (b"pro\xffmpt", b"", b"x"), *FIELDS)
    response = post(http, "/v1/videos", body)
    assert response.status_code == 422
    (name,) = fields_of(response)
    assert name.startswith("field name") and "not UTF-8" in response.text


@pytest.mark.parametrize(
    ("content_type", "part_headers", "where"),
    [
        (f"multipart/form-data; boundary={BOUNDARY}; charset=latin-1", b"", "content-type"),
        (None, b"Content-Type: text/plain; charset=iso-8859-1\r\n", "prompt"),
    ],
)
def test_a_charset_other_than_utf8_is_refused(http, content_type, part_headers, where):
    # Valid UTF-8 bytes under a latin-1 label: reading them either way would record a guess.
    body = multipart((b"prompt", part_headers, "café".encode()), *FIELDS)
    response = post(http, "/v1/videos", body, content_type)
    assert response.status_code == 422, response.text
    fields = fields_of(response)
    assert "allowed: utf-8" in fields[where], fields


def test_a_utf8_prompt_is_recorded_exactly_as_sent(http):
    prompt = "a red circle moves left — café ☕ 円"
    declared = b"Content-Type: text/plain; charset=UTF-8\r\n"
    body = multipart((b"prompt", declared, prompt.encode()), *FIELDS)
    response = post(http, "/v1/videos", body)
    assert response.status_code == 200, response.text
    video_id = response.json()["id"]

    def finished() -> dict | None:
        job = http.get(f"/v1/videos/{video_id}").json()
        return job if job["status"] in ("completed", "failed") else None

    job = wait_for(finished)
    assert job["status"] == "completed", job
    record = http.get(f"/v1/videos/{video_id}/record").json()
    assert record["request"]["prompt"] == prompt


def test_validate_refuses_a_record_text_field_that_is_not_utf8(http):
    body = multipart((b"record", b"", b'{"prompt": "\xff"}'), (b"video_id", b"", b"video_" + b"0" * 32))
    response = post(http, "/api/v1/validate", body)
    assert response.status_code == 422
    assert list(fields_of(response)) == ["record"]


def test_a_body_that_is_not_multipart_is_a_clear_400(http):
    response = post(http, "/v1/videos", b"no boundary here", "multipart/form-data")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and "multipart form refused: Missing boundary" in error["message"]


def test_cli_client_validate_uploads_record_video_and_request(node, http, tmp_path):
    # `ditproof client validate` sends the files as multipart, the request file byte for byte.
    job = http.post("/v1/videos", json={"prompt": "a blue square", "seed": 7, **TINY}).json()
    wait_for(lambda: http.get(f"/v1/videos/{job['id']}").json()["status"] == "completed")
    record = http.get(f"/v1/videos/{job['id']}/record")
    (tmp_path / "record.json").write_bytes(record.content)
    (tmp_path / "video.mp4").write_bytes(http.get(f"/v1/videos/{job['id']}/content").content)
    (tmp_path / "request.json").write_text(json.dumps(record.json()["request"]))
    env = {**os.environ, "DITPROOF_API_TOKEN": TOKEN, "DITPROOF_URL": node.url}
    command = [
        sys.executable,
        "-m",
        "ditproof.cli.main",
        "client",
        "validate",
        "--record",
        str(tmp_path / "record.json"),
    ]
    ok = subprocess.run(
        [*command, "--request", str(tmp_path / "request.json")], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["decision"] == "valid"
    missing = subprocess.run(
        [*command, "--request", str(tmp_path / "nope.json")], capture_output=True, text=True, env=env
    )
    assert missing.returncode == 2 and "request:" in missing.stderr and "cannot be read" in missing.stderr
    assert "Traceback" not in missing.stderr
