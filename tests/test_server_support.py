"""Helpers of the server tests: a real `ditproof serve` subprocess on a loopback port.

(No tests here; the name keeps it in the server tests' files.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "test-token-0123456789abcdef"
ENTROPY = "5e" * 32
TINY = {"size": "64x48", "num_frames": 5, "num_inference_steps": 3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NodeProcess:
    """`python -m ditproof.cli.main serve` on a free loopback port with its own data folder."""

    def __init__(self, data_dir: Path, *args: str, model: str | None = "wan-tiny-random"):
        self.data_dir = data_dir
        self.args = list(args) + (["--model", model] if model else [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self, timeout: float = 180.0) -> NodeProcess:
        env = dict(os.environ, DITPROOF_API_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
        command = [sys.executable, "-m", "ditproof.cli.main", "serve", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--log-level", "warning", *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                state = httpx.get(f"{self.url}/api/v1/state", headers=self.headers, timeout=2).json()
                if state["inference_healthy"] or (not self.args_have_model and state["state"] == "STOPPED"):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    @property
    def args_have_model(self) -> bool:
        return "--model" in self.args

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM: uvicorn's graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(predicate, timeout: float = 120.0, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"condition not met within {timeout} s")
