"""Tensor parallelism through PyTorch's own API, on two CPU processes (gloo) under torchrun."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.generation.parallel import init_parallel
from ditproof.protocol.options import RuntimeOptions

ENTROPY = "ab" * 32
ARGS = [
    "--prompt",
    "a red circle moves left",
    "--width",
    "64",
    "--height",
    "48",
    "--num-frames",
    "5",
    "--steps",
    "4",
    "--request-id",
    "tp-1",
    "--entropy",
    ENTROPY,
    "--quiet",
]


def test_tp2_on_two_processes_is_close_to_one_process(tmp_path):
    single = subprocess.run(
        [sys.executable, "-m", "ditproof.cli.main", "generate", "--out", str(tmp_path / "tp1"), *ARGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    parallel = subprocess.run(
        [*launcher, "-m", "ditproof.cli.main", "generate", "--out", str(tmp_path / "tp2"), "--tp-degree", "2", *ARGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    a = load_file(tmp_path / "tp1" / "latents" / "final.safetensors")["latent"]
    b = load_file(tmp_path / "tp2" / "latents" / "final.safetensors")["latent"]
    relative = float((a - b).norm() / a.norm())
    # Another summation order: close, and here not bitwise equal.
    assert 0 < relative < 1e-4
    record = (tmp_path / "tp2" / "record.json").read_text()
    assert '"tp_degree":2' in record


def test_parallel_options_are_checked():
    assert init_parallel(RuntimeOptions()) == RuntimeOptions()
    with pytest.raises(InvalidInputError, match="not both"):
        init_parallel(RuntimeOptions(tp_degree=2, cp_degree=2))
    with pytest.raises(RuntimeUnavailableError, match="launch with torchrun --nproc-per-node 2"):
        init_parallel(RuntimeOptions(tp_degree=2))
    assert torch.distributed.is_available()
