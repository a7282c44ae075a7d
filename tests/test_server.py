"""The ML-node service over real HTTP: `ditproof serve` as a subprocess on loopback, tiny model.

One server for the whole module (start-up is the slow part); tests that change the node's
state put it back. Requests are tiny (64x48, 5 frames, 3 steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from ditproof.client import ApiError
from ditproof.hashing import sha256_bytes
from ditproof.randomness import derive_seed
from test_server_support import ENTROPY, TINY, TOKEN, NodeProcess, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(tmp_path_factory.mktemp("node") / "data", "--max-queue", "3").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def finished(client):
    """One completed job with a derived seed."""
    job = client.create_video(prompt="a red circle moves left", request_id="srv-1", entropy=ENTROPY, **TINY)
    return client.wait(job["id"], timeout=120)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"status", "code", "message", "fields"}
    assert body["error"]["status"] == response.status_code
    return body["error"]


# Health and authentication.
@pytest.mark.parametrize("path", ["/health", "/livez", "/readyz", "/api/v1/health", "/api/v1/readyz"])
def test_health_probes_need_no_token(node, path):
    response = httpx.get(node.url + path)
    assert response.status_code == 200, response.text
    assert response.json().get("status", "healthy") == "healthy"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/state"),
        ("POST", "/v1/videos"),
        ("POST", "/v1/videos/sync"),
        ("GET", "/v1/videos"),
        ("GET", "/v1/videos/video_" + "0" * 32 + "/content"),
        ("POST", "/api/v1/validate"),
        ("POST", "/api/v1/inference/up"),
        ("POST", "/api/v1/stop"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/no/such/path"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", TOKEN])
def test_everything_else_needs_the_token(node, method, path, auth):
    headers = {"Authorization": auth} if auth else {}
    response = httpx.request(method, node.url + path, headers=headers, json={"prompt": "x"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "unauthorized"


def test_openapi_schema_is_published(http):
    schema = http.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/videos",
        "/v1/videos/sync",
        "/v1/videos/{video_id}",
        "/v1/videos/{video_id}/content",
        "/v1/videos/{video_id}/record",
        "/api/v1/state",
        "/api/v1/stop",
        "/api/v1/inference/up",
        "/api/v1/inference/down",
        "/api/v1/validate",
        "/health",
        "/livez",
        "/readyz",
    ):
        assert path in paths, path
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert paths["/health"]["get"]["security"] == []
    body = paths["/v1/videos"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "request_id" in schema["components"]["schemas"]["VideoCreateRequest"]["properties"]


# Video API.
def test_async_job_with_derived_seed(client, finished):
    assert finished["status"] == "completed", finished
    assert finished["seed"] == derive_seed("srv-1", ENTROPY)
    assert finished["seed_derivation"] == "ditproof-seed-v1"
    assert (finished["size"], finished["num_frames"], finished["seconds"]) == ("64x48", 5, "0.25")
    record_bytes = client.record(finished["id"])
    record = json.loads(record_bytes)
    assert sha256_bytes(record_bytes.rstrip(b"\n")) == finished["record_sha256"]
    assert record["request_id"] == "srv-1" and record["entropy"] == ENTROPY
    assert record["request"]["width"] == 64 and record["request"]["num_inference_steps"] == 3
    video = client.content(finished["id"])
    assert sha256_bytes(video) == record["video"]["sha256"] == finished["video_sha256"]
    assert video[4:8] == b"ftyp"


def test_sync_multipart_returns_mp4_with_hash_headers(node, http, finished):
    form = {
        "prompt": "a red circle moves left",
        "size": "64x48",
        "num_frames": "5",
        "num_inference_steps": "3",
        "request_id": "srv-1",
        "entropy": ENTROPY,
    }
    # A file-less part forces multipart/form-data, as vLLM-Omni clients send it.
    response = http.post("/v1/videos/sync", data=form, files={"fps": (None, "16")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["x-ditproof-request-id"] == "srv-1"
    assert response.headers["x-ditproof-video-sha256"] == sha256_bytes(response.content)
    # Same request id and entropy → same seed → byte-identical video and record content.
    assert response.content == http.get(f"/v1/videos/{finished['id']}/content").content
    record = http.get(f"/v1/videos/{response.headers['x-ditproof-video-id']}/record").content
    assert sha256_bytes(record.rstrip(b"\n")) == response.headers["x-ditproof-record-sha256"]


def test_sync_client_with_explicit_seed(client):
    video, headers = client.create_video_sync(prompt="plain vLLM-Omni client", seed=7, **TINY)
    assert headers["x-ditproof-seed"] == "7" and headers["x-ditproof-seed-derivation"] == "explicit"
    assert "x-ditproof-request-id" not in headers
    assert sha256_bytes(video) == headers["x-ditproof-video-sha256"]


def test_seconds_map_to_frames_exactly(client):
    job = client.create_video(prompt="seconds", size="64x48", seconds="0.25", num_inference_steps=3, seed=1)
    assert job["num_frames"] == 5 and job["seconds"] == "0.25"
    assert client.wait(job["id"])["status"] == "completed"


BAD_REQUESTS = [
    ({"size": None, "width": 830, "height": 48}, "width", "got 830; allowed: a multiple of 16"),
    ({"size": "64x48", "width": 80}, "width", "size '64x48' says 64"),
    ({"size": "64*48"}, "size", "allowed: WIDTHxHEIGHT"),
    ({"num_frames": 8}, "num_frames", "4k+1"),
    ({"num_frames": 5.0}, "num_frames", "valid integer"),
    ({"num_frames": "5"}, "num_frames", "valid integer"),
    ({"seconds": "0.125"}, "seconds", "give 3 frames"),
    ({"seconds": "0.3"}, "seconds", "4.8 frame intervals"),
    ({"seconds": "0.25", "num_frames": 9}, "num_frames", "means 5 frames"),
    ({"guidance_scale": float("inf")}, "guidance_scale", "finite"),
    ({"num_inference_steps": 0}, "num_inference_steps", "got 0"),
    ({"entropy": "xyz", "request_id": "r"}, "entropy", "hex digits"),
    ({"request_id": "r", "seed": None}, "entropy", "both or neither"),
    ({"request_id": "srv-1", "entropy": ENTROPY, "seed": 5}, "seed", "the derived seed"),
    ({"video_params": {"width": 64}}, "video_params", "unknown field"),
    ({"prompt": ""}, "prompt", "got ''"),
    ({"request_id": "../../etc/passwd", "entropy": ENTROPY}, "request_id", "allowed: 1 to 128 characters"),
]


@pytest.mark.parametrize(("change", "field", "text"), BAD_REQUESTS)
def test_invalid_fields_give_422_naming_the_field(http, change, field, text):
    body = {"prompt": "x", "seed": 1, **TINY, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = http.post(
        "/v1/videos", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_request"
    messages = {f["field"]: f["message"] for f in error["fields"]}
    assert field in messages, error
    assert text in messages[field], messages[field]


def test_form_fields_are_typed_strictly(http):
    response = http.post("/v1/videos", data={"prompt": "x", "seed": "1", "num_frames": "5.0", "width": "sixty"})
    error = error_of(response)
    fields = {f["field"] for f in error["fields"]}
    assert response.status_code == 422 and fields == {"num_frames", "width"}
    response = http.post("/v1/videos", data={"prompt": "x", "seed": "1"}, files={"input_reference": ("a.png", b"x")})
    assert response.status_code == 422 and "file" in error_of(response)["fields"][0]["message"]


def test_bodies_that_are_not_requests(http):
    assert (
        http.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    )
    assert http.post("/v1/videos", json=[1, 2]).status_code == 422
    response = http.post("/v1/videos", content=b"prompt", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_media_type"
    response = http.post("/v1/videos", json={"prompt": "x" * 300_000, "seed": 1})
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"

    def chunks():
        for _ in range(300):
            yield b" " * 1024

    response = http.post("/v1/videos", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/videos/abc", 422),
        ("/v1/videos/video_" + "A" * 32, 422),
        ("/v1/videos/..%2F..%2Fjobs.sqlite3", 404),
        ("/v1/videos/video_" + "0" * 32, 404),
        ("/v1/videos/video_" + "0" * 32 + "/content", 404),
        ("/v1/videos/video_" + "0" * 32 + "/record", 404),
        ("/v1/videos/%2e%2e/%2e%2e/etc/passwd", 404),
    ],
)
def test_ids_are_checked_and_never_read_files(http, path, status):
    response = http.get(path)
    assert response.status_code == status, response.text
    assert error_of(response)["code"] in ("invalid_request", "not_found")


def test_list_videos(client, finished):
    listing = client.list_videos(limit=100)
    assert finished["id"] in [v["id"] for v in listing["data"]]
    assert listing["object"] == "list" and listing["has_more"] is False


def test_content_of_unfinished_job_is_409_and_delete_works(client, http):
    running = client.create_video(prompt="long", size="64x48", num_frames=5, num_inference_steps=40, seed=2)
    queued = client.create_video(prompt="queued", seed=3, **TINY)
    response = http.get(f"/v1/videos/{queued['id']}/content")
    assert response.status_code == 409 and error_of(response)["code"] == "not_ready"
    assert client.delete_video(queued["id"]) == {"id": queued["id"], "object": "video.deleted", "deleted": True}
    wait_for(lambda: client.get_video(running["id"])["status"] == "in_progress")
    assert client.delete_video(running["id"])["deleted"] is True
    for job in (queued, running):
        with pytest.raises(ApiError) as info:
            client.get_video(job["id"])
        assert info.value.status == 404


def test_full_queue_answers_429(client, http):
    accepted, refused = [], []
    for index in range(8):
        response = http.post("/v1/videos", json={"prompt": f"burst {index}", "seed": index, **TINY})
        (accepted if response.status_code == 200 else refused).append(response)
    assert refused, "8 quick submissions should overflow a queue of 3"
    for response in refused:
        assert response.status_code == 429
        assert error_of(response)["code"] == "queue_full" and response.headers["retry-after"]
    assert 3 <= len(accepted) <= 5
    for response in accepted:
        assert client.wait(response.json()["id"])["status"] == "completed"


# Validation.
def test_validate_upload_reference_and_tampering(client, finished):
    record, video = client.record(finished["id"]), client.content(finished["id"])
    assert client.validate(record, video=video)["decision"] == "valid"
    assert client.validate_stored(finished["id"])["decision"] == "valid"
    # A record that does not fit the stored video (another seed) fails before any regeneration.
    forged = json.loads(record)
    forged["seed"] += 1
    verdict = client.validate(json.dumps(forged).encode(), video_id=finished["id"])
    assert verdict["decision"] == "invalid" and verdict["first_failing_check"] == "seed"
    tampered = client.validate(record, video=video[:-1] + bytes([video[-1] ^ 1]))
    assert tampered["decision"] == "invalid" and tampered["first_failing_check"] == "integrity"


def test_validate_an_edited_prompt_is_invalid_by_bytes_alone(client, finished):
    # Same runtime class, different bytes: invalid over HTTP too, with the first divergent step, and
    # no threshold consulted (the node has the shipped thresholds configured).
    record, video = client.record(finished["id"]), client.content(finished["id"])
    edited = json.loads(record)
    edited["request"]["prompt"] = "a green cube moves down"
    verdict = client.validate(json.dumps(edited).encode(), video=video)
    assert verdict["decision"] == "invalid" and verdict["first_failing_check"] == "exact_match"
    assert verdict["comparison"] == "same-class" and verdict["divergent_step"] == 1
    assert verdict["thresholds"] == {} and "same runtime class, different bytes" in verdict["reason"]


def test_validate_checks_the_record_against_the_clients_request(client, http, finished, tmp_path):
    record, video = client.record(finished["id"]), client.content(finished["id"])
    asked = json.loads(record)["request"]  # what the client sent: the record must carry exactly this
    assert client.validate(record, video=video, request=asked)["decision"] == "valid"
    # The client had asked for more steps than the record says were run: refused before regenerating.
    more = {**asked, "num_inference_steps": asked["num_inference_steps"] + 1}
    verdict = client.validate_stored(finished["id"], request=more)
    assert verdict["decision"] == "invalid" and verdict["first_failing_check"] == "request"
    assert "num_inference_steps" in verdict["reason"]
    path = tmp_path / "asked.json"
    path.write_text(json.dumps({**asked, "prompt": "another prompt"}))
    verdict = client.validate(record, video_id=finished["id"], request=path)
    assert verdict["decision"] == "invalid" and verdict["first_failing_check"] == "request"
    # A request that is not one is a 422 naming the field, in both forms.
    response = http.post("/api/v1/validate", json={"video_id": finished["id"], "request": {"width": -3}})
    assert response.status_code == 422 and "request" in response.text
    response = http.post(
        "/api/v1/validate",
        files={"record": ("r.json", record), "request": ("q.json", b"[1, 2]")},
        data={"video_id": finished["id"]},
    )
    assert response.status_code == 422 and "JSON object" in response.text


def test_validate_refuses_bad_input(node, http, client):
    response = http.post("/api/v1/validate", files={"record": ("r.json", b"{}"), "video": ("v.mp4", b"x")})
    assert response.status_code == 422
    assert any(f["field"].startswith("record.") for f in error_of(response)["fields"])
    response = http.post("/api/v1/validate", json={"video_id": "video_" + "0" * 32})
    assert response.status_code == 404
    response = http.post("/api/v1/validate", json={"video_id": "../../etc/passwd"})
    assert response.status_code == 422
    response = http.post("/api/v1/validate", json={"path": "/etc/passwd", "video_id": "video_" + "0" * 32})
    assert response.status_code == 422 and error_of(response)["fields"][0]["field"] == "path"


# Management.
def test_state_and_model_management(node, client, http, finished):
    state = client.state()
    assert state["state"] == "INFERENCE" and state["inference_healthy"] is True
    assert state["loaded_model"] == "wan-tiny-random" and state["version"]
    assert "already up" in client.inference_up("wan-tiny-random")["detail"]
    for body, field in (
        ({"model": "no-such-model"}, "model"),
        ({"model": "/etc"}, "model"),
        ({"model": "wan-tiny-random", "dtype": "int8"}, "dtype"),
        ({"model": "wan-tiny-random", "additional_args": ["--trust-remote-code", "1"]}, "additional_args.0"),
        ({"model": "wan-tiny-random", "additional_args": ["--device", "tpu"]}, "additional_args.device"),
        (
            {"model": "wan-tiny-random", "additional_args": ["--fuse-projections", "maybe"]},
            "additional_args.fuse_projections",
        ),
        ({"model": "wan-tiny-random", "additional_args": ["--encode-threads=x"]}, "additional_args.encoding.threads"),
        (
            {"model": "wan-tiny-random", "additional_args": ["--encode-threads", "99"]},
            "additional_args.encoding.threads",
        ),
        ({"model": "wan-tiny-random", "additional_args": ["--compile", "full"]}, "additional_args.compile"),
    ):
        response = http.post("/api/v1/inference/up", json=body)
        assert response.status_code == 422, response.text
        assert field in [f["field"] for f in error_of(response)["fields"]], error_of(response)
    # Another model while one is up: 409.
    response = http.post("/api/v1/inference/up", json={"model": "wan-a14b-shape"})
    assert response.status_code == 409 and error_of(response)["code"] == "conflict"

    # Down: queued jobs are cancelled, visibly.
    first = client.create_video(prompt="to cancel", size="64x48", num_frames=5, num_inference_steps=40, seed=4)
    second = client.create_video(prompt="to cancel too", seed=5, **TINY)
    assert client.inference_down()["state"] == "STOPPED"
    for job in (first, second):
        done = client.wait(job["id"])
        assert done["status"] == "failed" and done["error"]["code"] == "cancelled", done
    state = client.state()
    assert state["state"] == "STOPPED" and state["loaded_model"] is None
    assert httpx.get(node.url + "/readyz").status_code == 503
    for method, path, kwargs in (
        ("POST", "/v1/videos", {"json": {"prompt": "x", "seed": 1}}),
        ("POST", "/api/v1/validate", {"json": {"video_id": finished["id"]}}),
    ):
        response = http.request(method, path, **kwargs)
        assert response.status_code == 409, response.text
    assert error_of(http.post("/v1/videos", json={"prompt": "x", "seed": 1}))["code"] == "not_ready"

    # Up again, then stop (any state), then up: the node serves again.
    client.inference_up("wan-tiny-random")
    assert client.wait_ready(timeout=120)["loaded_model"] == "wan-tiny-random"
    assert client.stop()["state"] == "STOPPED"
    client.inference_up("wan-tiny-random", dtype="float32")
    assert client.wait_ready(timeout=120)["inference_healthy"] is True
    assert httpx.get(node.url + "/readyz").json() == {"ready": True, "state": "INFERENCE"}


# Pricing.
def test_pricing_quote(http):
    response = http.get(
        "/api/v1/pricing/quote", params={"size": "832x480", "seconds": "5", "num_inference_steps": "40"}
    )
    assert response.status_code == 200, response.text
    quote = response.json()
    assert (quote["width"], quote["num_frames"], quote["patches"]) == (832, 81, 32760)
    assert quote["forward_passes"] == 80 and quote["cost"] == quote["units"] * quote["price_per_unit"]
    response = http.get("/api/v1/pricing/quote", params={"size": "830x480"})
    assert response.status_code == 422 and error_of(response)["fields"][0]["field"] == "width"
    response = http.get("/api/v1/pricing/quote", params={"model": "wan-tiny-random"})
    assert response.status_code == 422 and error_of(response)["fields"][0]["field"] == "model"


# The command-line client.
def test_cli_client_generate_and_fetch(node, tmp_path):
    env = dict(os.environ, DITPROOF_URL=node.url, DITPROOF_API_TOKEN=TOKEN)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ditproof.cli.main",
            "client",
            "generate",
            "--prompt",
            "cli",
            "--size",
            "64x48",
            "--num-frames",
            "5",
            "--steps",
            "3",
            "--request-id",
            "cli-9",
            "--entropy",
            ENTROPY,
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "record.json").read_text())
    assert sha256_bytes((tmp_path / "video.mp4").read_bytes()) == record["video"]["sha256"]
    assert record["seed"] == derive_seed("cli-9", ENTROPY)
    # The CLI's validate with the client's request: a changed one is refused (exit 1, check request).
    asked = tmp_path / "asked.json"
    asked.write_text(json.dumps({**record["request"], "num_frames": 9}))
    validate = [
        sys.executable,
        "-m",
        "ditproof.cli.main",
        "client",
        "validate",
        "--record",
        str(tmp_path / "record.json"),
    ]
    run = subprocess.run([*validate, "--request", str(asked)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and "request" in run.stdout, run.stdout + run.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[")
    run = subprocess.run([*validate, "--request", str(bad)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and "request: not valid JSON" in run.stderr and "Traceback" not in run.stderr


def test_text_that_is_not_unicode_is_refused_not_a_server_error(http):
    # JSON may carry a lone surrogate ("\ud800"): the request check refuses it (was HTTP 500 from
    # the tokenizer), on both video endpoints and for both text fields.
    for path in ("/v1/videos", "/v1/videos/sync"):
        for field in ("prompt", "negative_prompt"):
            body = {"prompt": "a red circle", "seed": 1, **TINY, field: "a red \ud800 circle"}
            response = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (path, field, response.text)
            assert "not valid Unicode" in response.text


def test_a_url_encoded_prompt_that_is_not_utf8_is_refused(http):
    # %FF%FE is not UTF-8: refused, not recorded as U+FFFD (what the client never sent).
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = http.post("/v1/videos", content=b"prompt=a+red+%FF%FE+circle&seed=1", headers=headers)
    assert response.status_code == 422 and "UTF-8" in response.text


def test_the_official_openai_sdk_creates_polls_and_downloads(node):
    # A stock client brings neither seed nor entropy: the node draws them and says so in the record.
    import openai

    sdk = openai.OpenAI(api_key=TOKEN, base_url=node.url + "/v1", max_retries=0)
    video = sdk.videos.create(prompt="a red circle moves left", size="64x48", seconds="1")
    done = sdk.videos.poll(video.id, poll_interval_ms=200)
    assert done.status == "completed", done
    content = sdk.videos.download_content(video.id).read()
    assert content[4:8] == b"ftyp"
    record = json.loads(httpx.get(f"{node.url}/v1/videos/{video.id}/record", headers=node.headers).text)
    assert record["entropy_source"] == "executor" and len(record["entropy"]) == 64
    assert record["request"]["num_frames"] == 17 and record["request_id"].startswith("node-")
