"""Same latents, different mp4 bytes on two cards: which stage differs, decode or encode?

On an H100 and an H200 (both sm90, 132 SMs, torch 2.11.0+cu130) ``wan-a14b-shape`` gave equal
latent checkpoints (final latent included) but different mp4 bytes. This bench runs once per card
(``run``, one JSON each) and ``compare`` tells, stage by stage, which results agree:

1. the real-size Wan2.1 VAE with weights filled on the CPU (the same on every machine), moved to
   the device, decodes a CPU-drawn latent of the 480p shape through
   :func:`ditproof.generation.generate.decode_frames`, in float32 and bfloat16, under
   (a) PyTorch's defaults, (b) TF32 off, (c) ``cudnn.deterministic``, (d) ``cudnn.benchmark``
   off + deterministic + TF32 off, (e) cuDNN disabled (skipped where a 2-latent-frame probe
   predicts more than ``--no-cudnn-limit`` seconds); then (a) float32 again, to see that the
   order of variants does not matter, and (f) float32 defaults with the card filled so that only
   ``--free-gib`` GiB stay free (cuDNN picks plans whose workspace fits; a generation decodes with
   the pipeline resident, and an H100 has 60 GB less free then than an H200). Each: sha256 of the
   uint8 frames, per-frame sha256 (12 hex) and per-frame sums, seconds.
2. the frames of (a) float32 and a synthetic clip computed with integer arithmetic only (the same
   bytes everywhere) go through each of ditproof's RGB → yuv420p conversions
   (``VideoEncoding.yuv``: ``bt601-integer``, and ``bt601-float64``, the one of records made
   before 2026-12, whose float64 matrix product is OpenBLAS's dgemm with a kernel chosen per CPU):
   their sha256, how many float64 values lie exactly on a .5 rounding tie, and the float64
   conversion in subprocesses under several ``OPENBLAS_CORETYPE`` kernels; then through
   :func:`ditproof.video.encode_video` with 8 and 1 threads, several times each in one process
   (first as the failing run encoded: float64 conversion, 8 threads).
3. ``wan-a14b-shape`` built on the GPU (CUDA generators) as the generation builds it: sha256 of its
   weights, per component and over all (per tensor, copied through pinned buffers and hashed in a
   pool of threads; with the description, the same digest as
   :func:`ditproof.models.registry.state_revision`), then the latent decoded again with the
   pipeline resident by its own GPU-filled float32 VAE (all resident: may not fit an 80 GB card;
   then with the text encoder moved to the CPU) and by the CPU-filled VAE.
4. the card, the CPU model and flags, library versions and the sha256 of the loaded libx264 and
   OpenBLAS files.

    PYTHONPATH=/tmp/site:src python3 bench/cross_card.py run --out $OUT/cross_card.json
    python3 bench/cross_card.py compare h100.json h200.json
    PYTHONPATH=src .venv/bin/python bench/cross_card.py run --smoke --out /tmp/smoke.json   # CPU, tiny latent
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VaePipe, device_info, seeded_a14b_vae, write_result

COMPONENTS = ("text_encoder", "vae", "transformer", "transformer_2")
LATENT_SEED = 7
FPS = 16
# name -> settings of torch.backends for the decode (None: left as it is).
VARIANTS: dict[str, dict[str, bool]] = {
    "a_defaults": {},
    "b_no_tf32": {"tf32": False},
    "c_deterministic": {"deterministic": True},
    "d_nobenchmark_deterministic_no_tf32": {"benchmark": False, "deterministic": True, "tf32": False},
    "e_no_cudnn": {"enabled": False},
}
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "bmi2",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "sha_ni",
)
# OpenBLAS kernels tried for the yuv conversion: FMA (Haswell, Zen, SkylakeX, ...) and not (Sandybridge,
# Prescott); each with the CPU flags it needs (a kernel the CPU lacks would stop on an illegal instruction).
CORETYPES: dict[str, set[str]] = {
    "Haswell": {"avx2", "fma"},
    "Zen": {"avx2", "fma"},
    "SkylakeX": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "Cooperlake": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
    "SapphireRapids": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_fp16", "amx_tile"},
    "Sandybridge": {"avx"},
    "Prescott": set(),
}
# Seconds kept after the decodes for the yuv checks, the encodes and the weights (H100 host estimate).
RESERVE_S = 200.0
_T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - _T0


def log(message: str) -> None:
    print(f"[{elapsed():7.1f} s] {message}", flush=True)


def short(digest: str) -> str:
    return digest[:12]


# --------------------------------------------------------------------------------------------
# Backend flags


def backend_flags() -> dict[str, Any]:
    """torch.backends' settings that can change a convolution's numbers, as they read now."""
    flags: dict[str, Any] = {
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    readers = {
        "cudnn_allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn_conv_fp32_precision": lambda: getattr(torch.backends.cudnn, "conv").fp32_precision,  # noqa: B009
        "matmul_fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, read in readers.items():
            try:
                flags[key] = read()
            except (AttributeError, RuntimeError) as exc:
                flags[key] = f"unreadable: {str(exc)[:80]}"
    return flags


@contextlib.contextmanager
def backend_settings(
    enabled: bool | None = None,
    benchmark: bool | None = None,
    deterministic: bool | None = None,
    tf32: bool | None = None,
) -> Iterator[None]:
    """Applies the given cuDNN/TF32 settings with the legacy flags (as a user would) and restores
    the state before. cuDNN's TF32 goes back through the legacy flag (restoring conv and rnn
    precisions through the new API leaves the legacy flag unreadable in torch 2.13); the matmul
    precision through the new API where torch has it (the legacy setter writes "ieee", not the
    default "none")."""
    cudnn: Any = torch.backends.cudnn  # Any: the precision objects are attributes set at import
    matmul: Any = torch.backends.cuda.matmul
    before = backend_flags()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32)
        new_api = hasattr(matmul, "fp32_precision")
        saved_matmul = matmul.fp32_precision if new_api else matmul.allow_tf32
        try:
            if enabled is not None:
                cudnn.enabled = enabled
            if benchmark is not None:
                cudnn.benchmark = benchmark
            if deterministic is not None:
                cudnn.deterministic = deterministic
            if tf32 is not None:
                cudnn.allow_tf32 = tf32
                matmul.allow_tf32 = tf32
            yield
        finally:
            cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = saved
            if new_api:
                matmul.fp32_precision = saved_matmul
            else:
                matmul.allow_tf32 = saved_matmul
    if backend_flags() != before:
        raise RuntimeError(f"backend flags not restored: {before} -> {backend_flags()}")


# --------------------------------------------------------------------------------------------
# Step 1: VAE decode variants


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames_summary(frames: np.ndarray) -> dict[str, Any]:
    """sha256 of all frames, per-frame sha256 (12 hex) and per-frame sums of the uint8 values."""
    return {
        "frames_sha256": hashlib.sha256(np.ascontiguousarray(frames).data).hexdigest(),
        "frame_sha256": [short(hashlib.sha256(np.ascontiguousarray(f).data).hexdigest()) for f in frames],
        "frame_sums": [int(f.sum(dtype=np.int64)) for f in frames],
        "shape": list(frames.shape),
    }


def decode(pipe: Any, latent: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    """Decodes through the generation path; the frames and seconds, free/peak memory on a GPU."""
    from ditproof.generation.generate import decode_frames

    device = pipe.vae.device
    stats: dict[str, Any] = {}
    if device.type == "cuda":
        stats["free_gib_before"] = round(torch.cuda.mem_get_info(device)[0] / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    began = time.perf_counter()
    with torch.inference_mode():
        frames = decode_frames(pipe, latent)
    _sync(device)
    stats["seconds"] = round(time.perf_counter() - began, 3)
    if device.type == "cuda":
        stats["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return frames, stats


def decode_entry(
    pipe: Any, latent: torch.Tensor, settings: dict[str, bool]
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One decode under ``settings``: its summary, or the error it raised (out of memory...)."""
    with backend_settings(**settings):
        entry: dict[str, Any] = {"settings": settings, "flags": backend_flags()}
        try:
            frames, stats = decode(pipe, latent)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None, entry
    entry.update(stats)
    entry.update(frames_summary(frames))
    return frames, entry


def decode_with_free(pipe: Any, latent: torch.Tensor, free_gib: float) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The defaults' decode with the card filled first so that only ``free_gib`` GiB stay free (as
    with a whole pipeline resident on a smaller card): cuDNN chooses its plans among those whose
    workspace fits, so a float32 decode may give other frames with less memory free."""
    device = latent.device
    gc.collect()
    torch.cuda.empty_cache()
    hog = None
    frames: np.ndarray | None = None
    try:
        free = torch.cuda.mem_get_info(device)[0]
        keep = int(free_gib * 2**30)
        if free > keep:
            hog = torch.empty(free - keep, dtype=torch.uint8, device=device)
        frames, entry = decode_entry(pipe, latent, {})
    except RuntimeError as exc:  # the filling allocation itself
        entry = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        del hog
        torch.cuda.empty_cache()
    entry["free_gib_asked"] = free_gib
    return frames, entry


def no_cudnn_estimate(pipe: Any, latent: torch.Tensor, settings: dict[str, bool]) -> dict[str, Any]:
    """Seconds of the decode without cuDNN predicted from a 2-latent-frame probe (5 frames out of
    4·(T-1)+1; the probe's first-call overhead makes the estimate err on the high side)."""
    _, probe = decode_entry(pipe, latent[:, :, :2].contiguous(), settings)
    if "error" in probe:
        return {"probe_error": probe["error"]}
    frames_out = 4 * (latent.shape[2] - 1) + 1
    return {"probe_s": probe["seconds"], "estimate_s": round(probe["seconds"] * frames_out / 5, 1)}


def run_decodes(
    result: dict[str, Any], vaes: dict[str, torch.nn.Module], latent: torch.Tensor, args: argparse.Namespace
) -> np.ndarray:
    """Step 1 (fills ``result["decode"]``); returns the frames of float32 (a).

    Order: (a)-(d) per dtype, (a) float32 again, then (e) per dtype, which is slow and runs only
    where its probe predicts at most ``--no-cudnn-limit`` s and the run would still end by
    ``--deadline`` (``RESERVE_S`` kept for the encodes and the weights)."""
    decodes: dict[str, Any] = result.setdefault("decode", {})
    reference: np.ndarray | None = None
    plan = [(dtype, name) for dtype in vaes for name in VARIANTS if name != "e_no_cudnn"]
    plan += [("float32", "a_defaults_repeat")]
    if latent.device.type == "cuda":
        plan += [("float32", f"f_defaults_free_{gib:g}gib") for gib in args.free_gib]
    plan += [(dtype, "e_no_cudnn") for dtype in vaes]
    for dtype, name in plan:
        settings = VARIANTS.get(name.removesuffix("_repeat"), {})
        pipe = VaePipe(vaes[dtype])
        key = f"{dtype}/{name}"
        estimate: dict[str, Any] = {}
        if name.startswith("f_defaults_free_"):
            free_gib = float(name.removeprefix("f_defaults_free_").removesuffix("gib"))
            frames, entry = decode_with_free(pipe, latent, free_gib)
            decodes[key] = entry
            log(f"decode {key}: {entry.get('error', '')[:90] or short(entry['frames_sha256'])}")
            write_result(args.out, result)
            continue
        if name == "e_no_cudnn" and args.skip_no_cudnn:
            decodes[key] = {"skipped": "--skip-no-cudnn"}
            continue
        if name == "e_no_cudnn" and latent.device.type == "cuda" and latent.shape[2] > 2:
            estimate = no_cudnn_estimate(pipe, latent, settings)
            log(f"decode {key}: probe {estimate}")
            predicted = estimate.get("estimate_s")
            late = predicted is not None and elapsed() + predicted + RESERVE_S > args.deadline
            if predicted is None or predicted > args.no_cudnn_limit or late:
                why = "the probe failed" if predicted is None else f"estimate {predicted} s"
                why += f" (limit {args.no_cudnn_limit} s; deadline {args.deadline} s, now {elapsed():.0f} s)"
                decodes[key] = {"skipped": why, **estimate}
                log(f"decode {key}: skipped, {why}")
                write_result(args.out, result)
                continue
        frames, entry = decode_entry(pipe, latent, settings)
        entry.update(estimate)
        decodes[key] = entry
        if key == "float32/a_defaults":
            reference = frames
        detail = entry.get("error") or f"{short(entry['frames_sha256'])} in {entry['seconds']} s"
        log(f"decode {key}: {detail}")
        write_result(args.out, result)
    if reference is None:
        raise RuntimeError("the float32 decode under the defaults failed; nothing to encode")
    return reference


# --------------------------------------------------------------------------------------------
# Step 2: yuv conversion and encodes


def synthetic_frames(count: int, height: int, width: int) -> np.ndarray:
    """A smooth moving clip with a little texture, integer arithmetic only (the same bytes on every
    machine and numpy version): triangle-wave gradients, a moving disk, hashed ±3 noise."""
    y = np.arange(height, dtype=np.int64)[:, None]
    x = np.arange(width, dtype=np.int64)[None, :]
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for t in range(count):
        r = np.abs((2 * x + 3 * t) % 512 - 256) + 0 * y
        g = np.abs((3 * y + 2 * t) % 512 - 256) + 0 * x
        b = ((x + y + 4 * t) // 4) % 256
        cx, cy, radius = (width // 8 + 6 * t) % width, height // 2 + (5 * t) % (height // 2) - height // 4, height // 6
        disk = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
        noise = (((x * 73856093) ^ (y * 19349663) ^ (t * 83492791)) >> 7) % 7 - 3
        rgb = np.stack([np.where(disk, 230, r), np.where(disk, 40, g), np.where(disk, 40, b)], axis=-1)
        out[t] = np.clip(rgb + noise[..., None], 0, 255).astype(np.uint8)
    return out


def yuv_methods() -> list[str]:
    """The encoder-input conversions this ditproof has (``VideoEncoding.yuv``): ``bt601-integer``
    and ``bt601-float64`` (the one of records made before 2026-12), or ``legacy`` where the field
    does not exist yet (the float64 conversion was then the only one)."""
    from ditproof.protocol.options import VideoEncoding

    field = VideoEncoding.model_fields.get("yuv")
    if field is None:
        return ["legacy"]
    choices = list(getattr(field.annotation, "__args__", ()) or [field.default])
    return sorted(choices, key=lambda m: m != field.default)  # the default first


def blas_methods() -> list[str]:
    """The conversions that go through BLAS (the integer one is exact, whatever the kernel)."""
    return [m for m in yuv_methods() if m != "bt601-integer"]


def yuv_sha256(frames: np.ndarray, method: str) -> str:
    """sha256 of ditproof's yuv420p planes of every frame (what the encoder is fed)."""
    from ditproof.video import rgb_to_yuv420p

    digest = hashlib.sha256()
    for frame in frames:
        frame = np.ascontiguousarray(frame)
        planes = rgb_to_yuv420p(frame) if method == "legacy" else rgb_to_yuv420p(frame, method)
        digest.update(planes.data)
    return digest.hexdigest()


# BT.601 limited range as ditproof's float64 conversion has it (ditproof.video), for counting ties.
_BT601 = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
_BT601_OFFSET = np.array([16.0, 128.0, 128.0])


def yuv_ties(frames: np.ndarray) -> dict[str, int]:
    """Values of the float64 conversion whose exact result is k + 0.5 (luma: multiples of
    1/255000, chroma means: of 1/1020000, so 1e-7 separates ties from their neighbours): their
    rounding hangs on the last bit of the float64 matrix product, so on the BLAS kernel."""
    luma_ties = chroma_ties = 0
    for frame in frames:
        height, width, _ = frame.shape
        yuv = frame.astype(np.float64) @ _BT601.T + _BT601_OFFSET
        chroma = yuv[..., 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
        luma_ties += int((np.abs(yuv[..., 0] - np.floor(yuv[..., 0]) - 0.5) < 1e-7).sum())
        chroma_ties += int((np.abs(chroma - np.floor(chroma) - 0.5) < 1e-7).sum())
    return {"luma": luma_ties, "chroma": chroma_ties}


def yuv_worker(paths: list[str]) -> None:
    """Subprocess of :func:`yuv_coretypes`: prints the yuv sha256 of each .npy per conversion,
    and the BLAS kernel."""
    hashes = {}
    for path in paths:
        frames = np.load(path, mmap_mode="r")
        for method in blas_methods():
            hashes[f"{Path(path).stem}/{method}"] = yuv_sha256(frames, method)
    print(json.dumps({"hashes": hashes, "openblas": openblas_info()}))


def yuv_coretypes(frame_sets: dict[str, np.ndarray], flags: set[str]) -> dict[str, Any]:
    """The yuv conversions in subprocesses (one BLAS thread), natively and under OpenBLAS kernels
    forced with ``OPENBLAS_CORETYPE``: {core: {"set/method": sha256}}. Kernels the CPU lacks are
    left out."""
    cores: list[str | None] = [None]
    if platform.machine() in ("x86_64", "AMD64"):
        cores += [core for core, needs in CORETYPES.items() if needs <= flags]
    src = str(Path(__file__).resolve().parents[1] / "src")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, frames in frame_sets.items():
            paths.append(str(Path(tmp) / f"{name}.npy"))
            np.save(paths[-1], frames)
        procs = {}
        for core in cores:
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), src]))
            if core:
                env["OPENBLAS_CORETYPE"] = core
            command = [sys.executable, str(Path(__file__).resolve()), "yuv-worker", *paths]
            procs[core or "native"] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=300)
                answer = json.loads(stdout.decode().strip().splitlines()[-1])
                out[name] = {**answer["hashes"], "openblas_core": answer["openblas"].get("core")}
            except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError) as exc:
                proc.kill()
                out[name] = {"error": f"{type(exc).__name__}: {exc}; rc {proc.returncode}; {stderr.decode()[-300:]!r}"}
    return out


def encode_plan(methods: list[str], repeats: int, synthetic_repeats: int) -> list[tuple[str, str, int, int]]:
    """(frames, conversion, threads, encodes): the failing generation's settings first (its only
    encode was the first of its process: float64 conversion, 8 threads), then the default
    conversion with 8 and 1 threads; the synthetic clip likewise, float64 once."""
    default = methods[0]
    old = "bt601-float64" if "bt601-float64" in methods else default
    plan = [("decoded", old, 8, 2 if old != default else repeats)]
    plan += [("decoded", default, 8, repeats)] if old != default else []
    plan += [("decoded", default, 1, repeats)]
    plan += [("synthetic", default, 8, synthetic_repeats), ("synthetic", default, 1, synthetic_repeats)]
    plan += [("synthetic", old, 8, 1)] if old != default else []
    return plan


def run_encodes(result: dict[str, Any], decoded: np.ndarray, args: argparse.Namespace, flags: set[str]) -> None:
    """Step 2 (fills ``result["synthetic"]``, ``["yuv"]`` and ``["encode"]``)."""
    from ditproof.protocol.options import VideoEncoding
    from ditproof.video import encode_video

    methods = yuv_methods()
    synthetic = synthetic_frames(*decoded.shape[:3])
    result["synthetic"] = {"sha256": hashlib.sha256(synthetic.data).hexdigest(), "shape": list(synthetic.shape)}
    frame_sets = {"decoded": decoded, "synthetic": synthetic}
    yuv: dict[str, Any] = {"methods": methods}
    for name, frames in frame_sets.items():
        began = time.perf_counter()
        yuv[name] = {method: {"sha256": yuv_sha256(frames, method)} for method in methods}
        yuv[name]["float64_exact_ties"] = yuv_ties(frames)
        yuv[name]["seconds"] = round(time.perf_counter() - began, 2)
        shown = {m: short(yuv[name][m]["sha256"]) for m in methods}
        log(f"yuv {name}: {shown}, float64 ties {yuv[name]['float64_exact_ties']}")
    began = time.perf_counter()
    sweep = yuv_coretypes(frame_sets, flags)
    for core, hashes in sweep.items():
        for name in frame_sets:
            for method in blas_methods():
                value = hashes.get(f"{name}/{method}") or hashes.get("error")
                yuv[name][method].setdefault("coretypes", {})[core] = value
        log(f"yuv under OPENBLAS_CORETYPE={core}: { ({k: _show(str(v)) for k, v in hashes.items()}) }")
    yuv["coretypes_seconds"] = round(time.perf_counter() - began, 2)
    yuv["openblas_core_by_coretype"] = {core: hashes.get("openblas_core") for core, hashes in sweep.items()}
    result["yuv"] = yuv
    write_result(args.out, result)

    encodes: dict[str, Any] = result.setdefault("encode", {})
    order = 0
    for name, method, threads, repeats in encode_plan(methods, args.encode_repeats, args.synthetic_repeats):
        fields: dict[str, Any] = {"threads": threads} if method == "legacy" else {"threads": threads, "yuv": method}
        encoding = VideoEncoding.model_validate(fields)
        entry: dict[str, Any] = {
            "encoding": encoding.model_dump(),
            "sha256": [],
            "bytes": [],
            "seconds": [],
            "order": [],
        }
        for _ in range(repeats):
            began = time.perf_counter()
            data = encode_video(frame_sets[name], FPS, encoding)
            entry["seconds"].append(round(time.perf_counter() - began, 2))
            entry["sha256"].append(hashlib.sha256(data).hexdigest())
            entry["bytes"].append(len(data))
            entry["order"].append(order)
            order += 1
        entry["stable"] = len(set(entry["sha256"])) == 1
        encodes[f"{name}/{method}/threads{threads}"] = entry
        log(f"encode {name} {method} threads={threads}: {[short(h) for h in entry['sha256']]} in {entry['seconds']} s")
        write_result(args.out, result)


# --------------------------------------------------------------------------------------------
# Step 3: weights of the GPU-built preset


def weight_digests(pipe: Any, description: dict[str, Any], workers: int = 16) -> dict[str, Any]:
    """Per-component and overall sha256 of the pipeline's state dicts; ``state_revision`` is the
    same value as :func:`ditproof.models.registry.state_revision`."""
    from ditproof.hashing import sha256_json, sha256_tensors

    tasks = [
        (component, key, tensor)
        for component in COMPONENTS
        for key, tensor in sorted(getattr(pipe, component).state_dict().items())
    ]
    began = time.perf_counter()
    digests = sha256_tensors([tensor for _, _, tensor in tasks], workers)
    parts = {
        f"{component}/{key}": f"{tensor.dtype}|{tuple(tensor.shape)}|{digest}"
        for (component, key, tensor), digest in zip(tasks, digests, strict=True)
    }
    components = {}
    for component in COMPONENTS:
        prefix = f"{component}/"
        own = {k.removeprefix(prefix): v for k, v in parts.items() if k.startswith(prefix)}
        components[component] = {"sha256": sha256_json(own), "tensors": len(own)}
    return {
        "components": components,
        "all_sha256": sha256_json(parts),
        "state_revision": sha256_json({"description": description, **parts}),
        "description_sha256": sha256_json(description),
        "generator": description.get("generator"),
        "tensors": len(parts),
        "bytes": sum(t.numel() * t.element_size() for _, _, t in tasks),
        "hash_s": round(time.perf_counter() - began, 2),
        "hash_workers": workers,
    }


def check_digest_on_tiny() -> dict[str, Any]:
    """The fast digest against ditproof's sequential ``state_revision`` on the tiny preset."""
    from ditproof.models.registry import state_revision
    from ditproof.models.wan import build_tiny_random, tiny_description

    pipe = build_tiny_random()
    description = tiny_description()
    fast = weight_digests(pipe, description)["state_revision"]
    reference = state_revision(pipe, description)
    return {"fast": fast, "registry": reference, "equal": fast == reference}


def run_weights(
    result: dict[str, Any], latent: torch.Tensor, vae_cpu: torch.nn.Module, args: argparse.Namespace
) -> None:
    """Step 3: builds wan-a14b-shape on the device, hashes it, decodes with it resident."""
    from ditproof.models.wan import build_a14b_shape

    device = latent.device
    began = time.perf_counter()
    pipe, description = build_a14b_shape(str(device), "bfloat16")
    _sync(device)
    weights: dict[str, Any] = {"build_s": round(time.perf_counter() - began, 2)}
    if device.type == "cuda":
        weights["free_gib_after_build"] = round(torch.cuda.mem_get_info(device)[0] / 2**30, 2)
    log(f"weights: built in {weights['build_s']} s, {weights.get('free_gib_after_build')} GiB free")
    weights.update(weight_digests(pipe, description, args.hash_workers))
    result["weights"] = weights
    log(f"weights: {weights['tensors']} tensors hashed in {weights['hash_s']} s; all {short(weights['all_sha256'])}")
    for component, entry in weights["components"].items():
        log(f"weights {component}: {short(entry['sha256'])}")
    write_result(args.out, result)

    # As in a generation: the pipeline resident, its VAE in float32 (the preset builds it so). All
    # of it first (on an 80 GB card the float32 decode, 9.5 GiB at its peak, may not fit), then with
    # the text encoder moved to the CPU, as --offload-text-encoder has it at decode time.
    decodes = result.setdefault("decode", {})
    for key, offload in (("resident_pipeline_vae", False), ("resident_pipeline_vae_te_offloaded", True)):
        if offload:
            moved = time.perf_counter()
            pipe.text_encoder.to("cpu")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            weights["text_encoder_offload_s"] = round(time.perf_counter() - moved, 2)
        _, entry = decode_entry(pipe, latent, {})
        entry["vae_dtype"] = str(pipe.vae.dtype)
        decodes[f"float32/{key}"] = entry
        log(f"decode {key}: {entry.get('error', '')[:90] or short(entry['frames_sha256'])}")
        write_result(args.out, result)
    vae = copy.deepcopy(vae_cpu).to(device)
    _, entry = decode_entry(VaePipe(vae), latent, {})
    decodes["float32/resident_cpu_filled_vae_te_offloaded"] = entry
    log(f"decode resident, the CPU-filled VAE: {entry.get('error', '')[:90] or short(entry['frames_sha256'])}")
    write_result(args.out, result)
    del vae, pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Step 4: machine


def cpu_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "vendor_id", "cpu family", "model", "stepping", "flags") and key not in fields:
                fields[key] = value.strip()
    flags = set(fields.pop("flags", "").split())
    return {
        **fields,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
        "_all_flags": sorted(flags),
    }


def _loaded_libraries() -> list[str]:
    with contextlib.suppress(OSError):
        paths = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if ".so" in line}
        return sorted(p for p in paths if p.startswith("/"))
    return []


def openblas_info() -> dict[str, Any]:
    """The OpenBLAS numpy loaded: file, kernel chosen for this CPU, build configuration."""
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure it is loaded
    for path in _loaded_libraries():
        if "openblas" not in Path(path).name.lower():
            continue
        info: dict[str, Any] = {"file": Path(path).name}
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            return {**info, "error": str(exc)}
        for key, names in (
            ("core", ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename")),
            ("config", ("scipy_openblas_get_config64_", "scipy_openblas_get_config", "openblas_get_config")),
        ):
            for name in names:
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    info[key] = fn().decode()
                    break
        return info
    return {"file": None}


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def host_info() -> dict[str, Any]:
    """Versions and the libraries that compute the frames and the bytes (cuDNN, x264, OpenBLAS)."""
    import av

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "av": av.__version__,
        "av_libraries": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
        "openblas": openblas_info(),
        "default_flags": backend_flags(),
    }
    with contextlib.suppress(ImportError):
        import diffusers

        info["diffusers"] = diffusers.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_l2_mib"] = getattr(props, "L2_cache_size", 0) / 2**20
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "--id=0"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
    libraries: dict[str, Any] = {}
    for path in _loaded_libraries():
        name = Path(path).name
        if any(part in name for part in ("x264", "openblas", "avcodec")):
            libraries[name] = _file_sha256(path)
        elif any(part in name for part in ("cudnn", "cublas", "libcudart", "libnvrtc")):
            libraries[name] = None
    info["libraries"] = libraries
    return info


# --------------------------------------------------------------------------------------------
# run


def run(args: argparse.Namespace) -> None:
    from ditproof.models.weight_fill import cast_keeping_fp32
    from ditproof.randomness import cpu_normal

    device = torch.device("cpu" if args.smoke else args.device)
    if args.frames % 4 != 1:
        raise SystemExit(f"--frames: got {args.frames}; allowed: 4k+1 (81, 41, 21, 9, 5)")
    shape = (1, 16, 2, 8, 8) if args.smoke else (1, 16, (args.frames - 1) // 4 + 1, 60, 104)
    cpu = cpu_info()
    flags = set(cpu.pop("_all_flags"))
    result: dict[str, Any] = {
        "bench": "cross_card (bench/cross_card.py)",
        "mode": "smoke" if args.smoke else "run",
        "device": device_info(),
        "cpu_info": cpu,
        "argv": sys.argv[1:],
    }
    log(f"device {result['device'].get('gpu') or 'cpu'}; CPU {cpu.get('model name')}")

    began = time.perf_counter()
    vae_cpu = seeded_a14b_vae("cpu")
    result["vae"] = {"fill_s": round(time.perf_counter() - began, 2), "init": "cpu fill_seeded(0 ^ hash_name('vae'))"}
    latent_cpu = cpu_normal(LATENT_SEED, shape)
    result["latent"] = {
        "seed": LATENT_SEED,
        "shape": list(shape),
        "sha256": hashlib.sha256(latent_cpu.numpy().data).hexdigest(),
        "std": round(float(latent_cpu.std()), 4),
    }
    log(f"VAE filled on the CPU in {result['vae']['fill_s']} s; latent {shape} {short(result['latent']['sha256'])}")
    latent = latent_cpu.to(device)
    vaes: dict[str, torch.nn.Module] = {"float32": copy.deepcopy(vae_cpu).to(device)}
    if not args.skip_bf16:
        vae16 = copy.deepcopy(vae_cpu)
        cast_keeping_fp32(vae16, torch.bfloat16)
        vaes["bfloat16"] = vae16.to(device)
    decoded = run_decodes(result, vaes, latent, args)
    del vaes
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    run_encodes(result, decoded, args, flags)

    result["weights_check_tiny"] = check_digest_on_tiny()
    log(f"fast weight digest equals state_revision on the tiny preset: {result['weights_check_tiny']['equal']}")
    if args.smoke or args.skip_weights or device.type != "cuda":
        result["weights"] = {"skipped": "smoke" if args.smoke else "--skip-weights or no GPU"}
    else:
        run_weights(result, latent, vae_cpu, args)

    result["host"] = host_info()
    result["total_s"] = round(time.perf_counter() - _T0, 1)
    write_result(args.out, result)
    log(f"wrote {args.out}")


# --------------------------------------------------------------------------------------------
# compare


def _items(result: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The comparable values of one result: name -> (value, detail)."""
    items: dict[str, tuple[str, Any]] = {}
    host = result.get("host", {})
    cpu = result.get("cpu_info", {})
    env = {
        "gpu": result.get("device", {}).get("gpu"),
        "cpu model": cpu.get("model name"),
        "cpu flags": ",".join(k for k, v in cpu.get("flags", {}).items() if v),
        "torch": host.get("torch"),
        "cudnn": host.get("cudnn_version"),
        "driver": host.get("driver"),
        "numpy": host.get("numpy"),
        "av": host.get("av"),
        "openblas core": host.get("openblas", {}).get("core"),
    }
    for name, sha in host.get("libraries", {}).items():
        if sha:
            env[f"lib {name}"] = sha
    for key, value in env.items():
        items[f"env/{key}"] = (str(value), None)
    items["input/latent"] = (result.get("latent", {}).get("sha256", "missing"), None)
    items["input/synthetic frames"] = (result.get("synthetic", {}).get("sha256", "missing"), None)
    for key, entry in result.get("decode", {}).items():
        # An error by its type and a skip as such: their messages hold sizes and times.
        value = entry.get("frames_sha256") or (
            f"error: {entry['error'].split(':')[0]}" if "error" in entry else "skipped"
        )
        items[f"decode/{key}"] = (value, entry)
    yuv = result.get("yuv", {})
    for name in ("decoded", "synthetic"):
        for method in yuv.get("methods", []):
            entry = yuv.get(name, {}).get(method, {})
            items[f"yuv/{name}/{method}"] = (entry.get("sha256", "missing"), None)
            for core, sha in entry.get("coretypes", {}).items():
                items[f"yuv/{name}/{method}/OPENBLAS_CORETYPE={core}"] = (str(sha), None)
    for key, entry in result.get("encode", {}).items():
        items[f"encode/{key}"] = ("+".join(short(s) for s in dict.fromkeys(entry["sha256"])), entry)
    weights = result.get("weights", {})
    for component, entry in weights.get("components", {}).items():
        items[f"weights/{component}"] = (entry["sha256"], None)
    for key in ("all_sha256", "state_revision", "description_sha256"):
        if key in weights:
            items[f"weights/{key}"] = (weights[key], None)
    return items


SECTIONS = ("env/", "input/", "weights/", "decode/", "yuv/", "encode/")


def _frames_detail(base: dict[str, Any], other: dict[str, Any]) -> str:
    """Which frames differ between two decodes (per-frame sha256), and by how much at least
    (the largest difference of a frame's mean value, from the per-frame sums)."""
    if "frame_sha256" not in base or "frame_sha256" not in other:
        return ""
    pairs = zip(base["frame_sha256"], other["frame_sha256"], strict=False)
    differ = [i for i, (a, b) in enumerate(pairs) if a != b]
    sums = [abs(a - b) for a, b in zip(base["frame_sums"], other["frame_sums"], strict=False)]
    pixels = int(np.prod(base["shape"][1:]))
    return (
        f"{len(differ)} of {len(base['frame_sha256'])} frames differ (first {differ[:8]}), "
        f"max |Δ frame mean| {max(sums, default=0) / pixels:.4f}"
    )


def _show(value: str) -> str:
    return short(value) if len(value) == 64 else value


def compare(paths: list[str]) -> int:
    """Prints, item by item, whether the result files agree, and a summary by stage."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    labels = [Path(p).name for p in paths]
    if len(set(labels)) < len(labels):
        labels = list(paths)
    for label, result in zip(labels, results, strict=True):
        host = result.get("host", {})
        print(
            f"{label}: {result.get('device', {}).get('gpu') or 'cpu'}; CPU {result.get('cpu_info', {}).get('model name')}; "
            f"OpenBLAS {host.get('openblas', {}).get('core')}; mode {result.get('mode')}; {result.get('total_s')} s"
        )
    print()
    per_file = [_items(r) for r in results]
    names = list(dict.fromkeys(name for items in per_file for name in items))
    names.sort(key=lambda n: (next((i for i, p in enumerate(SECTIONS) if n.startswith(p)), len(SECTIONS)), n))
    differing: list[str] = []
    width = max(len(n) for n in names) + 2
    for name in names:
        values = [items.get(name) for items in per_file]
        groups: dict[str, list[int]] = {}
        for index, value in enumerate(values):
            if value is not None and value[0] != "skipped":
                groups.setdefault(value[0], []).append(index)
        missing = [labels[i] for i, v in enumerate(values) if v is None]
        skipped = [labels[i] for i, v in enumerate(values) if v is not None and v[0] == "skipped"]
        unstable = [
            labels[i] for i, v in enumerate(values) if v and isinstance(v[1], dict) and v[1].get("stable") is False
        ]
        notes = (
            (f"  (missing in {', '.join(missing)})" if missing else "")
            + (f"  (skipped in {', '.join(skipped)})" if skipped else "")
            + (f"  (varies within {', '.join(unstable)})" if unstable else "")
        )
        if len(groups) <= 1:
            print(f"{name:<{width}} same      {_show(next(iter(groups), 'missing'))}{notes}")
            continue
        if not name.startswith("env/"):
            differing.append(name)
        shown = " | ".join(f"{_show(v)}: {', '.join(labels[i] for i in ix)}" for v, ix in groups.items())
        print(f"{name:<{width}} DIFFERS   {shown}{notes}")
        if name.startswith("decode/"):
            members = list(groups.values())
            base = values[members[0][0]]
            for group in members[1:]:
                other = values[group[0]]
                if base and other and isinstance(base[1], dict) and isinstance(other[1], dict):
                    detail = _frames_detail(base[1], other[1])
                    if detail:
                        print(f"{'':<{width}}           {labels[group[0]]} vs {labels[members[0][0]]}: {detail}")
    print()
    print(summary(names, differing))
    for label, items in zip(labels, per_file, strict=True):
        kernels: dict[str, dict[str, list[str]]] = {}
        for name, (digest, _) in items.items():
            if name.startswith("yuv/decoded/") and "/OPENBLAS_CORETYPE=" in name:
                method = name.split("/")[2]
                kernels.setdefault(method, {}).setdefault(_show(digest), []).append(name.split("=")[-1])
        for method, by_digest in kernels.items():
            shown = " | ".join(f"{', '.join(cores)}: {digest}" for digest, cores in by_digest.items())
            print(f"  {label}, yuv ({method}) of its decoded frames under forced OpenBLAS kernels: {shown}")
    return 0


def summary(names: list[str], differing: list[str]) -> str:
    """Which stage differs across the files, in the generation's order."""

    def status(name: str) -> str:
        return "absent" if name not in names else ("DIFFERS" if name in differing else "equal")

    def listed(prefix: str, equal: bool) -> str:
        chosen = [n.removeprefix(prefix) for n in names if n.startswith(prefix) and (n not in differing) == equal]
        return ", ".join(chosen) or "none"

    lines = ["summary:"]
    inputs = [n for n in differing if n.startswith("input/")]
    if inputs:
        lines.append(f"  INPUTS DIFFER ({', '.join(inputs)}): the files are not comparable")
    components = [f"weights/{c}" for c in COMPONENTS] + ["weights/all_sha256"]
    if any(n in names for n in components):
        bad = [n.removeprefix("weights/") for n in components if n in differing]
        lines.append(
            f"  weights of wan-a14b-shape built on the GPU: {'DIFFER: ' + ', '.join(bad) if bad else 'equal'}"
            " (state_revision adds the preset's description, which named the card while it had 'generator')"
        )
    lines.append(f"  decode, equal across files: {listed('decode/', True)}")
    lines.append(f"  decode, different across files: {listed('decode/', False)}")
    for name in names:
        if name.startswith("yuv/") and "CORETYPE" not in name:
            lines.append(f"  {name}: {status(name)}")
    lines.append(f"  encode, equal across files: {listed('encode/', True)}")
    lines.append(f"  encode, different across files: {listed('encode/', False)}")
    stages = (
        (
            "the VAE decode as in a generation (float32, pipeline resident, text encoder offloaded)",
            "decode/float32/resident_pipeline_vae_te_offloaded",
        ),
        ("the VAE decode (float32, PyTorch defaults)", "decode/float32/a_defaults"),
        ("the float64 RGB -> yuv420p conversion (numpy/OpenBLAS) of the same RGB", "yuv/synthetic/bt601-float64"),
        ("the float64 RGB -> yuv420p conversion of the decoded frames", "yuv/decoded/bt601-float64"),
        ("the integer RGB -> yuv420p conversion of the same RGB", "yuv/synthetic/bt601-integer"),
        ("the integer RGB -> yuv420p conversion of the decoded frames", "yuv/decoded/bt601-integer"),
        ("x264 on the same yuv (integer conversion), 8 threads", "encode/synthetic/bt601-integer/threads8"),
        ("x264 on the same yuv (integer conversion), 1 thread", "encode/synthetic/bt601-integer/threads1"),
        (
            "the encode of the decoded frames as the failing run (float64, 8 threads)",
            "encode/decoded/bt601-float64/threads8",
        ),
        ("the encode of the decoded frames (integer, 8 threads)", "encode/decoded/bt601-integer/threads8"),
        ("the encode of the decoded frames (legacy ditproof, 8 threads)", "encode/decoded/legacy/threads8"),
    )
    first = next((what for what, name in stages if status(name) == "DIFFERS"), None)
    lines.append(f"  first stage that differs: {first or 'none of those compared'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run", help="one card: decode variants, encodes, weights → --out JSON")
    runner.add_argument("--out", required=True)
    runner.add_argument("--device", default="cuda")
    runner.add_argument("--frames", type=int, default=81, help="video frames (4k+1); latent frames (frames-1)/4+1")
    runner.add_argument("--smoke", action="store_true", help="CPU, latent (1,16,2,8,8), no weights step")
    runner.add_argument("--skip-weights", action="store_true", help="leave out the wan-a14b-shape build and hash")
    runner.add_argument("--skip-bf16", action="store_true", help="decode in float32 only")
    runner.add_argument("--skip-no-cudnn", action="store_true", help="leave out variant (e)")
    runner.add_argument("--no-cudnn-limit", type=float, default=120.0, help="seconds; (e) skipped above")
    runner.add_argument("--deadline", type=float, default=340.0, help="seconds; (e) skipped if it would end later")
    runner.add_argument(
        "--free-gib",
        type=lambda text: [float(v) for v in text.split(",") if v],
        default=[24.0, 12.0],
        help="comma-separated GiB left free for extra float32 decodes under the defaults (empty: none)",
    )
    runner.add_argument("--hash-workers", type=int, default=16, help="threads hashing the weights")
    runner.add_argument("--encode-repeats", type=int, default=3, help="encodes of the decoded frames per thread count")
    runner.add_argument(
        "--synthetic-repeats", type=int, default=2, help="encodes of the synthetic clip per thread count"
    )
    comparer = sub.add_parser("compare", help="which stages agree across result files")
    comparer.add_argument("files", nargs="+")
    worker = sub.add_parser("yuv-worker", help=argparse.SUPPRESS)
    worker.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.files)
    if args.command == "yuv-worker":
        yuv_worker(args.files)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
