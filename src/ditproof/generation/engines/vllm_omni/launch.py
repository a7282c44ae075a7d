"""Starting ``vllm serve DIR --omni`` from the vLLM-Omni environment, on loopback (tests, benchmarks).

The server runs in its own process group and is stopped by its process id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from ditproof.errors import RuntimeUnavailableError
from ditproof.generation.engines.vllm_omni.protocol import ARTIFACTS_ENV


def omni_env(artifacts: Path, cpu: bool = True) -> dict[str, str]:
    """Environment of a vLLM-Omni process: platform switch, shared artifacts folder, offline."""
    env = dict(os.environ)
    env.update(
        {
            "DITPROOF_OMNI_CPU": "1" if cpu else "0",
            ARTIFACTS_ENV: str(artifacts),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OmniServer:
    """``{venv}/bin/vllm serve {model_dir} --omni`` on 127.0.0.1 with ditproof's plugin."""

    def __init__(self, venv: Path, model_dir: Path, artifacts: Path, log: Path, dtype: str = "float32"):
        vllm = venv / "bin" / "vllm"
        if not vllm.is_file():
            raise RuntimeUnavailableError(f"vllm-omni: {vllm} is missing; build it with scripts/vllm-omni-env.sh")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts
        self.log = log
        command = [str(vllm), "serve", str(model_dir), "--omni", "--host", "127.0.0.1", "--port", str(self.port)]
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [*command, "--dtype", dtype],
            env=omni_env(artifacts),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Waits for ``GET /health`` to answer 200; raises with the log's tail otherwise."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeUnavailableError(f"vllm serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise RuntimeUnavailableError(f"vllm serve not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log_file.close()
