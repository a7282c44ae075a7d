"""Support for the vLLM-Omni tests: the separate environment, a model folder, a loopback server.

The tests run in ditproof's own environment and drive vLLM-Omni as a node would: a
``vllm serve DIR --omni`` process from ``.venv-omni`` (built by scripts/vllm-omni-env.sh) on
127.0.0.1, with ditproof's plugin loaded and ``DITPROOF_OMNI_ARTIFACTS`` shared.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ditproof.generation.engines.vllm_omni.launch import OmniServer, omni_env

ROOT = Path(__file__).resolve().parents[1]
OMNI_VENV = Path(os.environ.get("DITPROOF_OMNI_VENV", ROOT / ".venv-omni"))
OMNI_PYTHON = OMNI_VENV / "bin" / "python"

needs_omni = pytest.mark.skipif(
    not (OMNI_VENV / "bin" / "vllm").is_file(),
    reason=f"the vLLM-Omni environment {OMNI_VENV} is absent; build it with scripts/vllm-omni-env.sh "
    "(CI does, then runs these tests)",
)

__all__ = ["OMNI_PYTHON", "OMNI_VENV", "ROOT", "OmniServer", "needs_omni", "omni_env", "save_tiny_folder"]


def save_tiny_folder(folder: Path) -> Path:
    """A diffusers folder of the tiny model (what ``vllm serve`` and ``load_model`` both load)."""
    from ditproof.models.registry import load_model
    from ditproof.protocol.options import LoadOptions

    if not (folder / "model_index.json").is_file():
        load_model("wan-tiny-random", LoadOptions()).pipeline.save_pretrained(folder)
    return folder


def start_server(model_dir: Path, artifacts: Path, log: Path) -> Iterator[OmniServer]:
    """Starts a server, yields it once ready, stops it."""
    server = OmniServer(OMNI_VENV, model_dir, artifacts, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
