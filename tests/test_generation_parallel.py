"""Tensor parallelism through PyTorch's own API, on two CPU processes (gloo) under torchrun."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.models.parallel import init_parallel
from ditproof.protocol.options import LoadOptions, RuntimeOptions

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


def one_process(out, *args: str, env: dict[str, str] | None = None) -> None:
    """``ditproof generate`` in one process; fails the test if it fails."""
    run = subprocess.run(
        [sys.executable, "-m", "ditproof.cli.main", "generate", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def two_processes(out, port: int, *args: str, parallel: tuple[str, ...] = ("--tp-degree", "2")) -> None:
    """``ditproof generate`` with ``parallel`` (TP-2 by default) on two processes under torchrun
    (gloo); fails the test if it fails."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    run = subprocess.run(
        [*launcher, "-m", "ditproof.cli.main", "generate", "--out", str(out), *parallel, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def records_of(tmp_path, *names: str) -> list[dict]:
    import json

    return [json.loads((tmp_path / name / "record.json").read_text()) for name in names]


def assert_bytes_of_one_process(one: dict, parallel: dict, record_path) -> None:
    """The parallel record's video and every checkpoint equal one process's, in the same class, and
    ``ditproof validate`` in one process matches it byte for byte."""
    assert one["video"]["sha256"] == parallel["video"]["sha256"]
    assert [c["tensor_sha256"] for c in one["checkpoints"]] == [c["tensor_sha256"] for c in parallel["checkpoints"]]
    assert one["runtime_class"] == parallel["runtime_class"]
    validated = subprocess.run(
        [sys.executable, "-m", "ditproof.cli.main", "validate", "--record", str(record_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validated.returncode == 0, validated.stdout[-2000:]
    assert "matched byte for byte" in validated.stdout


def test_tp2_on_two_processes_is_close_to_one_process(tmp_path):
    one_process(tmp_path / "tp1", *ARGS)
    two_processes(tmp_path / "tp2", 29517, *ARGS)
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
    with pytest.raises(InvalidInputError, match="not with tensor parallelism"):
        init_parallel(RuntimeOptions(tp_degree=2, cfg_degree=2))
    with pytest.raises(InvalidInputError, match="cfg_mode: got 'batched' with cfg_degree 2; allowed: 'sequential'"):
        init_parallel(RuntimeOptions(cfg_degree=2, cfg_mode="batched"))
    with pytest.raises(RuntimeUnavailableError, match="launch with torchrun --nproc-per-node 4"):
        init_parallel(RuntimeOptions(cfg_degree=2, cp_degree=2, device="cuda"))
    with pytest.raises(RuntimeUnavailableError, match="launch with torchrun --nproc-per-node 2"):
        init_parallel(RuntimeOptions(tp_degree=2))
    assert torch.distributed.is_available()


def test_fixed_order_ffn_slices_make_tp2_give_the_bytes_of_one_process(tmp_path):
    # With --ffn-chunks the ranks compute whole slices and sum every partial output in one order:
    # TP-2 equals one process bit for bit (latents and mp4), the degree leaves the runtime class,
    # and a validator in one process reproduces the record exactly.
    import os

    sliced = [*ARGS, "--ffn-chunks", "4"]
    one_process(tmp_path / "tp1", *sliced, env={**os.environ, "OMP_NUM_THREADS": "1"})  # a rank's one thread
    two_processes(tmp_path / "tp2", 29519, *sliced)
    one, two = records_of(tmp_path, "tp1", "tp2")
    assert two["options"]["tp_degree"] == 2 and two["runtime"]["ffn_chunks"] == 4
    assert "+ffn4/" in two["runtime_class"]
    assert_bytes_of_one_process(one, two, tmp_path / "tp2" / "record.json")


def test_ffn_slices_are_checked(tiny_model):
    from ditproof.models.registry import load_model

    with pytest.raises(InvalidInputError, match="ffn_chunks"):
        load_model("wan-tiny-random", LoadOptions(ffn_chunks=4, fuse_elementwise=True))
    with pytest.raises(InvalidInputError, match="a multiple of tp_degree"):
        load_model("wan-tiny-random", LoadOptions(ffn_chunks=3, tp_degree=2))
    with pytest.raises(InvalidInputError, match="a divisor of the FFN width"):
        load_model("wan-tiny-random", LoadOptions(ffn_chunks=7))


def test_cfg_parallel_on_two_processes_gives_the_bytes_of_one_process(tmp_path):
    # The conditional pass on rank 0, the unconditional on rank 1, outputs exchanged and combined on
    # both: every pass is one process's forward, so latents, video and class are one process's, and
    # a validator in one process reproduces the record byte for byte.
    import os

    one_process(tmp_path / "one", *ARGS, env={**os.environ, "OMP_NUM_THREADS": "1"})  # a rank's one thread
    two_processes(tmp_path / "cfg2", 29521, *ARGS, parallel=("--cfg-degree", "2"))
    one, two = records_of(tmp_path, "one", "cfg2")
    assert two["options"]["cfg_degree"] == 2 and two["runtime"]["cfg_degree"] == 2
    assert "cfg_degree" not in one["options"] and "cfg_degree" not in one["runtime"]  # 1: left out
    assert one["fingerprints"] == two["fingerprints"]
    assert_bytes_of_one_process(one, two, tmp_path / "cfg2" / "record.json")


def test_cfg_parallel_refuses_what_it_cannot_run(tiny_model):
    from ditproof.models.registry import load_model

    # Outside a process group of two: said before anything is loaded onto ranks that do not exist.
    with pytest.raises(RuntimeUnavailableError, match="launch with torchrun --nproc-per-node 2"):
        load_model("wan-tiny-random", LoadOptions(cfg_degree=2))
    with pytest.raises(ValueError, match="cfg_degree"):
        LoadOptions(cfg_degree=3)
