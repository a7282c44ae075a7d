"""PoC v2 over real HTTP: `ditproof serve` as a subprocess, a loopback callback receiver, tiny model.

One server for the module (max queue 2, callbacks every 0.2 s); PoC shape seq_len 64 (latent
1 × 16 × 16), a few dozen nonces. The tests run in file order and leave the node in INFERENCE,
except the last, which stops it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from ditproof.client import ApiError
from ditproof.poc.compute import PocModel, compute_artifacts
from ditproof.poc.service import assigned_nonces, params_for_seq_len
from test_server_support import TINY, TOKEN, NodeProcess, wait_for

pytestmark = pytest.mark.slow

BLOCK = "7a" * 32
KEY = "gonka1participant"
PARAMS = {"model": "wan-tiny-random", "seq_len": 64, "k_dim": 12}
ROUND = {"block_hash": BLOCK, "block_height": 1200, "public_key": KEY, "node_id": 0, "node_count": 1}
POW = "/api/v1/inference/pow"


class Receiver:
    """A loopback HTTP server that records every POST (path and JSON); the first `fail` POSTs get 500."""

    def __init__(self, fail: int = 0):
        self.posts: list[tuple[str, dict]] = []
        self.refused = 0
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    refuse = receiver.refused < receiver.fail
                    if refuse:
                        receiver.refused += 1
                    else:
                        receiver.posts.append((self.path, body))
                self.send_response(500 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pow")
    config = folder / "node.json"
    config.write_text(json.dumps({"poc_callback_interval_s": 0.2}))
    process = NodeProcess(folder / "data", "--max-queue", "2", "--config", str(config)).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(node):
    with httpx.Client(base_url=node.url + POW, headers=node.headers, timeout=120) as h:
        yield h


@pytest.fixture(scope="module")
def library(tiny_model):
    """The library's vectors for nonces 0–63 of this round (the server must give the same)."""
    artifacts = compute_artifacts(
        PocModel.from_loaded(tiny_model), params_for_seq_len(64, 12), BLOCK, KEY, list(range(64)), 8
    )
    return {a.nonce: a.vector_b64 for a in artifacts}


def same_vector(a: str, b: str) -> bool:
    """Equal up to kernel rounding: another batch shape may flip a float16 step (6.1e-5; docs/poc.md)."""
    return float(np.linalg.norm(decode(a) - decode(b))) <= 1e-3


def decode(vector_b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(vector_b64), dtype="<f2").astype(np.float32)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code, body
    return body["error"]


def fields_of(response: httpx.Response) -> dict[str, str]:
    return {f["field"]: f["message"] for f in error_of(response)["fields"]}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/init/generate"),
        ("POST", "/generate"),
        ("GET", "/generate/poc_" + "0" * 32),
        ("GET", "/status"),
        ("POST", "/stop"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer not-the-token-0123456"])
def test_pow_endpoints_need_the_token(node, method, path, auth):
    headers = {"Authorization": auth} if auth else {}
    response = httpx.request(method, node.url + POW + path, headers=headers, json={**ROUND, "params": PARAMS})
    assert response.status_code == 401 and error_of(response)["code"] == "unauthorized"


def test_generate_wait_returns_the_library_vectors(client, library):
    result = client.pow_generate(**ROUND, nonces=[5, 0, 17, 3, 40], batch_size=2, params=PARAMS, wait=True)
    assert result["status"] == "completed" and result["request_id"].startswith("poc_")
    assert result["encoding"] == {"dtype": "f16", "k_dim": 12, "endian": "le"}
    assert [a["nonce"] for a in result["artifacts"]] == [5, 0, 17, 3, 40]
    for artifact in result["artifacts"]:
        assert same_vector(artifact["vector_b64"], library[artifact["nonce"]])
    assert client.pow_result(result["request_id"]) == result


def test_validation_mode_with_stat_test(client, library):
    nonces = list(range(20))
    honest = [{"nonce": n, "vector_b64": library[n]} for n in nonces]
    result = client.pow_generate(**ROUND, nonces=nonces, params=PARAMS, wait=True, validation={"artifacts": honest})
    assert (result["n_total"], result["n_mismatch"], result["fraud_detected"], result["p_value"]) == (20, 0, False, 1.0)
    assert "artifacts" not in result and result["dist_threshold"] == 0.02  # Gonka's ML-node default

    forged = [dict(a) for a in honest]
    for a, b in ((0, 1), (2, 3)):  # vectors of other nonces: each is far from its own
        forged[a]["vector_b64"], forged[b]["vector_b64"] = honest[b]["vector_b64"], honest[a]["vector_b64"]
    for name in ("fraud_threshold", "p_value_threshold"):
        result = client.pow_generate(
            **ROUND, nonces=nonces, params=PARAMS, wait=True, validation={"artifacts": forged},
            stat_test={"dist_threshold": 0.001, "p_mismatch": 0.001, name: 0.05},
        )  # fmt: skip
        assert result["mismatch_nonces"] == [0, 1, 2, 3] and result["fraud_detected"] is True
        assert result["fraud_threshold"] == 0.05 and result["p_value"] < 1e-6
    # The same four mismatches are expected of an honest node at p_mismatch 0.4: no fraud.
    result = client.pow_generate(
        **ROUND, nonces=nonces, params=PARAMS, wait=True, validation={"artifacts": forged},
        stat_test={"p_mismatch": 0.4, "p_value_threshold": 0.05, "fraud_threshold": 0.05},
    )  # fmt: skip
    assert result["n_mismatch"] == 4 and result["fraud_detected"] is False


BAD = [
    ({"stat_test": {"fraud_threshold": 0.01, "p_value_threshold": 0.05}}, "stat_test", "two names of one setting"),
    ({"validation": {"artifacts": []}}, "validation.artifacts", "exactly one per nonce"),
    ({"validation": None, "stat_test": {"p_mismatch": 0.1}}, "stat_test", "only with validation"),
    ({"nonces": [1, 1]}, "nonces", "distinct"),
    ({"nonces": [-1]}, "nonces", "allowed: 0 to"),
    ({"nonces": []}, "nonces", "at least 1"),
    ({"params": {**PARAMS, "seq_len": 131}}, "params.seq_len", "F × S²"),
    ({"params": {**PARAMS, "k_dim": 1}}, "params.k_dim", "greater than or equal to 2"),
    ({"params": {**PARAMS, "seq_len": 8192}}, "params.seq_len", "at most 4096 on this node"),
    ({"batch_size": 1024, "params": {**PARAMS, "seq_len": 4096}}, "batch_size", "at most 65536"),
    ({"params": {**PARAMS, "seq_len": "64"}}, "params.seq_len", "valid integer"),
    ({"block_hash": "TEST_BLOCK"}, "block_hash", "pattern"),
    ({"public_key": "has space"}, "public_key", "pattern"),
    ({"node_id": 3, "node_count": 3}, "node_id", "below node_count"),
    ({"url": "file:///etc/passwd"}, "url", "http://"),
    ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
    ({"extra": 1}, "extra", "unknown field"),
]


@pytest.mark.parametrize(("change", "field", "text"), BAD)
def test_bad_generate_requests_are_422_naming_the_field(http, library, change, field, text):
    body = {**ROUND, "nonces": [0, 1], "params": PARAMS, "wait": True}
    body["validation"] = {"artifacts": [{"nonce": n, "vector_b64": library[n]} for n in (0, 1)]}
    body = {k: v for k, v in {**body, **change}.items() if v is not None}
    response = http.post("/generate", json=body)
    assert response.status_code == 422, response.text
    fields = fields_of(response)
    assert field in fields and text in fields[field], fields


def test_params_of_another_model_are_409(http):
    response = http.post("/generate", json={**ROUND, "nonces": [0], "params": {**PARAMS, "model": "Qwen/QwQ-32B"}})
    assert response.status_code == 409 and error_of(response)["code"] == "params_mismatch"
    assert "params.model" in fields_of(response)
    response = http.post("/init/generate", json={**ROUND, "params": {**PARAMS, "model": "wan-a14b-shape"}})
    assert response.status_code == 409 and error_of(response)["code"] == "params_mismatch"


@pytest.mark.parametrize(("path", "status"), [("/generate/poc_" + "0" * 32, 404), ("/generate/../../jobs", 404),
                                              ("/generate/poc_XYZ", 422)])  # fmt: skip
def test_unknown_request_ids(http, path, status):
    assert http.get(path).status_code == status


def test_queued_requests_report_to_the_callback_url(client, library):
    receiver = Receiver()
    try:
        queued = client.pow_generate(**ROUND, nonces=[7, 8, 9], params=PARAMS, url=receiver.url)
        assert queued["status"] == "queued" and queued["queued_count"] == 3
        done = client.pow_wait(queued["request_id"], timeout=120)
        assert all(same_vector(a["vector_b64"], library[a["nonce"]]) for a in done["artifacts"])
        forged = [{"nonce": n, "vector_b64": library[n + 1]} for n in (7, 8, 9)]
        checked = client.pow_generate(**ROUND, nonces=[7, 8, 9], params=PARAMS, url=receiver.url,
                                      validation={"artifacts": forged})  # fmt: skip
        assert client.pow_wait(checked["request_id"], timeout=120)["n_mismatch"] == 3
        wait_for(lambda: len(receiver.posts) == 2, timeout=30)
        by_path = dict(receiver.posts)
        generated, validated = by_path["/cb/generated"], by_path["/cb/validated"]
        assert generated["request_id"] == queued["request_id"] and generated["block_height"] == 1200
        assert generated["artifacts"] == done["artifacts"] and generated["encoding"]["k_dim"] == 12
        assert (validated["n_mismatch"], validated["fraud_detected"], validated["public_key"]) == (3, True, KEY)
    finally:
        receiver.close()


def test_full_queue_is_429_and_stop_cancels_queued_requests(client, http):
    many = list(range(64))  # a few seconds on the worker: the next requests wait behind it
    responses = [http.post("/generate", json={**ROUND, "nonces": many, "params": PARAMS}) for _ in range(5)]
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # One running (taken by the worker) and two waiting; the worker may take the first a moment late.
    assert 2 <= len(accepted) <= 3 and refused, [r.status_code for r in responses]
    for response in refused:
        assert response.status_code == 429 and error_of(response)["code"] == "queue_full"
        assert response.headers["retry-after"]
    assert client.pow_status()["queued_requests"] >= 1
    assert client.pow_stop() == {"status": "OK", "pow_status": {"status": "STOPPED"}, "state": "INFERENCE"}
    outcomes = [client.pow_wait(r.json()["request_id"], timeout=120)["status"] for r in accepted]
    assert outcomes[0] == "completed" and "cancelled" in outcomes[1:], outcomes
    assert client.pow_status()["queued_requests"] == 0


def test_round_generates_assigned_nonces_to_the_callback(node, client, http, library):
    receiver = Receiver(fail=2)  # the first two POSTs fail: the sender must retry, losing nothing
    try:
        body = {**ROUND, "node_id": 1, "node_count": 3, "batch_size": 4, "params": PARAMS, "url": receiver.url}
        assert client.pow_init_generate(**body)["pow_status"] == {"status": "GENERATING"}
        state = client.state()
        assert (state["state"], state["poc_status"]) == ("POW", "GENERATING")
        wait_for(lambda: sum(len(p["artifacts"]) for _, p in receiver.posts) >= 12, timeout=120)
        status = client.pow_status()
        assert status["status"] == "GENERATING" and status["config"]["node_id"] == 1
        assert status["config"]["seq_len"] == 64 and status["stats"]["total_processed"] >= 12
        assert status["stats"]["callbacks_failed"] >= 2 and status["stats"]["nonces_per_second"] > 0

        # One service at a time: no videos, no other model, no second round while in POW.
        video = httpx.post(node.url + "/v1/videos", headers=node.headers, json={"prompt": "x", "seed": 1, **TINY})
        assert video.status_code == 409 and error_of(video)["code"] == "not_ready"
        assert http.post("/init/generate", json=body).status_code == 409
        up = httpx.post(node.url + "/api/v1/inference/up", headers=node.headers, json={"model": "wan-a14b-shape"})
        assert up.status_code == 409
        assert httpx.get(node.url + "/readyz").status_code == 503
        # PoC requests interleave with the round's batches on the one worker.
        result = client.pow_generate(**ROUND, nonces=[4, 7], params=PARAMS, wait=True)
        assert all(same_vector(a["vector_b64"], library[a["nonce"]]) for a in result["artifacts"])

        assert client.pow_stop()["state"] == "INFERENCE"
        assert client.pow_status()["status"] == "IDLE"
    finally:
        receiver.close()
    # Everything computed before the stop was delivered once, in order: a prefix of nonces 1, 4, 7, ...
    for path, payload in receiver.posts:
        assert path == "/cb/generated" and payload["node_id"] == 1 and payload["block_height"] == 1200
        assert payload["encoding"] == {"dtype": "f16", "k_dim": 12, "endian": "le"} and payload["public_key"] == KEY
    delivered = [a for _, p in receiver.posts for a in p["artifacts"]]
    nonces = [a["nonce"] for a in delivered]
    assert nonces == assigned_nonces(1, 3, 0, len(nonces))
    for artifact in delivered:
        if artifact["nonce"] in library:
            assert same_vector(artifact["vector_b64"], library[artifact["nonce"]])


def test_openapi_lists_the_pow_endpoints(node):
    schema = httpx.get(node.url + "/openapi.json", headers=node.headers).json()
    for path in ("/init/generate", "/generate", "/generate/{request_id}", "/status", "/stop"):
        assert POW + path in schema["paths"], path
    generate = schema["components"]["schemas"]["PowGenerateRequest"]["properties"]
    assert {"nonces", "params", "validation", "stat_test", "wait", "url"} <= set(generate)


def test_cli_client_pow_commands(node, client):
    env = dict(os.environ, DITPROOF_URL=node.url, DITPROOF_API_TOKEN=TOKEN)
    done = client.pow_generate(**ROUND, nonces=[1], params=PARAMS, wait=True)
    for args, expected in ((["status"], '"status": "IDLE"'), (["result", done["request_id"]], '"status": "completed"'),
                           (["stop"], '"STOPPED"')):  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "ditproof.cli.main", "client", "pow", *args], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0 and expected in run.stdout, run.stdout + run.stderr
    run = subprocess.run([sys.executable, "-m", "ditproof.cli.main", "client", "pow", "result", "poc_" + "0" * 32],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1 and "404 not_found" in run.stderr


def test_round_needs_an_idle_video_queue(node, client, http):
    job = client.create_video(prompt="busy", size="64x48", num_frames=5, num_inference_steps=40, seed=9)
    response = http.post("/init/generate", json={**ROUND, "params": PARAMS})
    assert response.status_code == 409 and "video jobs" in error_of(response)["message"]
    assert client.delete_video(job["id"])["deleted"] is True
    assert client.state()["state"] == "INFERENCE"


def test_stop_ends_a_round_and_a_stopped_node_refuses_pow(client, http):
    assert client.pow_init_generate(**ROUND, params=PARAMS)["state"] == "POW"
    assert client.stop()["state"] == "STOPPED"
    assert client.pow_status()["status"] == "IDLE"
    for path, body in (("/init/generate", {**ROUND, "params": PARAMS}),
                       ("/generate", {**ROUND, "nonces": [0], "params": PARAMS})):  # fmt: skip
        response = http.post(path, json=body)
        assert response.status_code == 409 and error_of(response)["code"] == "not_ready", response.text
    assert http.post("/stop").status_code == 200
    with pytest.raises(ApiError) as info:
        client.pow_generate(**ROUND, nonces=[0], params=PARAMS, wait=True)
    assert info.value.status == 409
