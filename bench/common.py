"""Helpers shared by the benchmarks: device description and JSON results."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def device_info() -> dict[str, Any]:
    """GPU name, SM count, memory, driver-facing versions and the date (for every result file)."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.machine(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            sm_count=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    else:
        info["gpu"] = None
    return info


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the machine architecture where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_state() -> dict[str, float] | None:
    """The card's temperature (C), SM clock (MHz) and power draw (W) now, from ``nvidia-smi``
    (None where it does not answer): clocks fall under sustained load, so timings carry them."""
    fields = ("temperature.gpu", "clocks.sm", "power.draw")
    try:
        answer = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        values = [float(v) for v in answer.strip().split(",")]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return dict(zip(("temperature_c", "sm_clock_mhz", "power_w"), values, strict=True))


def kernel_names(fn: Callable[[], Any]) -> list[str]:
    """The CUDA kernels one call of ``fn`` launches, in order (after one unprofiled call)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name[:120] for e in prof.events() if e.device_type.name == "CUDA"]


def write_result(path: str | Path, data: dict[str, Any]) -> None:
    """Writes a result JSON (sorted keys, indented) and makes its folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def call_seconds(fn: Callable[[], object], repeats: int, cuda: bool = True) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, no warm-up: CUDA events around each call
    (``cuda``), else the host clock."""
    times = []
    for _ in range(repeats):
        if not cuda:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return times


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` on the GPU (CUDA events), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    return statistics.median(call_seconds(fn, repeats))


class VaePipe:
    """What :func:`ditproof.generation.generate.decode_frames` reads of a pipeline: a VAE and the
    video post-processor (Wan's: spatial factor 8), for the benches that decode without a pipeline."""

    def __init__(self, vae: Any) -> None:
        from diffusers.video_processor import VideoProcessor

        self.vae = vae
        self.video_processor = VideoProcessor(vae_scale_factor=8)


def seeded_a14b_vae(device: str | torch.device, dtype: torch.dtype | None = None) -> Any:
    """The real-size Wan2.1 VAE of ``wan-a14b-shape`` with its seeded weights, on ``device``, in
    evaluation mode (``dtype``: cast keeping the float32 parts, as the preset does)."""
    from diffusers import AutoencoderKLWan

    from ditproof.models.wan import A14B_VAE, hash_name
    from ditproof.models.weight_fill import cast_keeping_fp32, fill_seeded

    vae = AutoencoderKLWan(**A14B_VAE).to(device)
    fill_seeded(vae, 0 ^ hash_name("vae"))
    if dtype is not None:
        cast_keeping_fp32(vae, dtype)
    return vae.eval().requires_grad_(False)
