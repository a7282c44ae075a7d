"""A fuzz pass of the API against its own OpenAPI schema (schemathesis): no 5xx, ever.

One `ditproof serve` subprocess with the tiny model and small PoC limits, fuzzed twice:
1. in INFERENCE: the PoC, validation, pricing, management reads and video reads (video creation,
   model loading and stopping are left out: a random valid video request may be an 832x480x81
   job, and `inference/up` may name the 14B A14B-shape preset);
2. after `POST /api/v1/stop`, in STOPPED: every operation but `inference/up`, so each request
   body is parsed and refused (422, 409, 404, ...) without compute.
`/readyz` is left out of the check: its 503 before a model is up is the readiness signal.
Seeded and bounded (30 examples per operation); about 30 s of fuzzing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test_server_support import TOKEN, NodeProcess

pytestmark = pytest.mark.slow

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")


def fuzz(url: str, exclude: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    command = [
        SCHEMATHESIS, "run", f"{url}/openapi.json",
        "-H", f"Authorization: Bearer {TOKEN}",
        "--checks", "not_a_server_error",
        "--exclude-path-regex", exclude,
        "--max-examples", "30", "--seed", "1",
        "--request-timeout", "60", "--no-color",
        "--generation-database", "none",
        "--report", "junit", "--report-junit-path", str(tmp_path / f"{name}.xml"),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed (pip install -e '.[dev]')")
def test_no_server_errors_under_schema_fuzzing(tmp_path):
    config = tmp_path / "node.json"
    limits = {"poc_max_seq_len": 64, "poc_max_nonces": 16, "poc_max_batch_tokens": 512, "max_queue": 4}
    config.write_text(json.dumps({**limits, "poc_callback_interval_s": 0.5}))
    node = NodeProcess(tmp_path / "data", "--config", str(config)).start()
    try:
        busy = r"(inference/(up|down)|^/api/v1/stop$|readyz|^/v1/videos(/sync)?$)"
        run = fuzz(node.url, busy, tmp_path, "inference")
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert httpx.post(f"{node.url}/api/v1/stop", headers=node.headers).status_code == 200
        run = fuzz(node.url, r"(inference/up|readyz)", tmp_path, "stopped")
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "passed" in run.stdout
    finally:
        node.stop()
    assert "Traceback" not in node.log.read_text()
