"""Support for the vLLM-Omni tests: the separate environment, a model folder, a loopback server.

The tests run in ditproof's own environment and drive vLLM-Omni as a node would: a
``vllm serve DIR --omni`` process from ``.venv-omni`` (built by scripts/vllm-omni-env.sh) on
127.0.0.1, with ditproof's plugin loaded and ``DITPROOF_OMNI_ARTIFACTS`` shared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
OMNI_VENV = Path(os.environ.get("DITPROOF_OMNI_VENV", ROOT / ".venv-omni"))
OMNI_PYTHON = OMNI_VENV / "bin" / "python"
OMNI_VLLM = OMNI_VENV / "bin" / "vllm"
START_TIMEOUT_S = 300.0

needs_omni = pytest.mark.skipif(
    not OMNI_VLLM.is_file(),
    reason=f"the vLLM-Omni environment {OMNI_VENV} is absent; build it with scripts/vllm-omni-env.sh "
    "(CI does, then runs these tests)",
)


def omni_env(artifacts: Path) -> dict[str, str]:
    """Environment of a vLLM-Omni process: CPU platform, shared artifacts folder, offline."""
    env = dict(os.environ)
    env.update(
        {
            "DITPROOF_OMNI_CPU": "1",
            "DITPROOF_OMNI_ARTIFACTS": str(artifacts),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_LOGGING_LEVEL": "WARNING",
        }
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def save_tiny_folder(folder: Path) -> Path:
    """A diffusers folder of the tiny model (what ``vllm serve`` and ``load_model`` both load)."""
    from ditproof.models.registry import load_model
    from ditproof.protocol.options import RuntimeOptions

    if not (folder / "model_index.json").is_file():
        load_model("wan-tiny-random", RuntimeOptions()).pipeline.save_pretrained(folder)
    return folder


class OmniServer:
    """``vllm serve DIR --omni`` on loopback, in its own process group (stopped by its pid)."""

    def __init__(self, model_dir: Path, artifacts: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts
        self.log = log
        command = [
            str(OMNI_VLLM),
            "serve",
            str(model_dir),
            "--omni",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
        ]
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            command, env=omni_env(artifacts), stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}; log tail:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"vllm serve not ready after {START_TIMEOUT_S:.0f} s; log tail:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log_file.close()


def start_server(model_dir: Path, artifacts: Path, log: Path) -> Iterator[OmniServer]:
    """Starts a server, yields it once ready, stops it."""
    server = OmniServer(model_dir, artifacts, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
