"""The runtime fingerprint of this process, and the runtime class derived from it."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import platform
import re
from pathlib import Path

import torch

from ditproof.generation.attention import attention_library
from ditproof.hashing import sha256_json
from ditproof.kernels.fused import STEPS as FUSED_STEPS
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RunOptions, RuntimeOptions, shortcut_label
from ditproof.protocol.record import RuntimeFingerprint


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cublas_version() -> str | None:
    """The cuBLAS package's version (CUDA 13 and 12 wheels name it differently), else None."""
    for package in ("nvidia-cublas", "nvidia-cublas-cu12"):
        version = _version(package)
        if version != "absent":
            return version
    return None


def _nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver version from /proc (None where it cannot be read)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=16)
def cpu_kernels_probe(threads: int) -> str:
    """Eight hex digits that name the CPU kernels this process runs: a hash of a few fixed
    computations through the libraries that choose their code per processor (MKL's float32 matrix
    product at two sizes, oneDNN's bfloat16 matrix product and 3D convolution, the attention
    kernel, normalisation and GELU), at ``threads`` intra-op threads.

    PyTorch's vector capability alone does not name them: on 2026-12-06 an AMD EPYC (Zen 4,
    AVX-512) gave other latents from the first step than the AVX-512 machine that recorded the
    golden generation, with the same torch, diffusers and transformers (MKL dispatches by
    processor, not only by instruction set). Two machines whose probes differ are different
    classes; whose probes agree ran the same code paths on these operations.
    """
    from ditproof.generation.generate import cpu_threads

    with cpu_threads("cpu", threads), torch.inference_mode():
        generator = torch.Generator().manual_seed(20261206)

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator)

        a, b = draw(512, 1024), draw(1024, 768)
        small_a, small_b = draw(24, 40), draw(40, 56)
        q, k, v = draw(1, 2, 96, 64), draw(1, 2, 96, 64), draw(1, 2, 96, 64)
        volume, kernel = draw(1, 8, 3, 18, 18), draw(8, 8, 3, 3, 3)
        outputs = [
            a @ b,
            small_a @ small_b,
            (a.bfloat16() @ b.bfloat16()).float(),
            torch.nn.functional.scaled_dot_product_attention(q, k, v),
            torch.nn.functional.conv3d(volume, kernel, padding=1),
            torch.nn.functional.conv3d(volume.bfloat16(), kernel.bfloat16(), padding=1).float(),
            torch.nn.functional.gelu(torch.nn.functional.layer_norm(a, (1024,)), approximate="tanh"),
        ]
    digest = hashlib.sha256()
    for tensor in outputs:
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def solver_name(scheduler_config: dict[str, object]) -> str:
    """Names the solver: class, order, type and flow sigma grid, plus a hash of its full config.

    ``flow_shift`` is left out (it is a request field); diffusers' flow grid is
    ``linspace(1, 1/1000)``, which differs from the official Wan repository's.
    """
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_") and k != "flow_shift"}
    name = str(scheduler_config.get("_class_name", "UniPCMultistepScheduler"))
    order = config.get("solver_order")
    kind = config.get("solver_type")
    grid = "diffusers-flow-linspace" if config.get("use_flow_sigmas") else "diffusers-betas"
    return f"{name}/order{order}/{kind}/{grid}/{sha256_json(_plain(config))[:12]}"


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def runtime_fingerprint(model: LoadedModel, options: RunOptions | RuntimeOptions) -> RuntimeFingerprint:
    """Reads the hardware and software of this process and combines them with the model's load
    options and the run's options (complete options: their load part must be the model's, see
    :meth:`LoadedModel.run_options`).

    With an engine other than diffusers, what that engine ran on (device, libraries, kernel,
    solver) replaces this process's own (:func:`ditproof.generation.engines.engine_fingerprint_fields`).
    """
    run = model.run_options(options)
    local = _fingerprint(model, RuntimeOptions.of(model.load, run))
    if model.load.engine == "diffusers":
        return local
    from ditproof.generation.engines import engine_fingerprint_fields

    return local.model_copy(update=engine_fingerprint_fields(model, run))


def _fingerprint(model: LoadedModel, options: RuntimeOptions) -> RuntimeFingerprint:
    """This process's fingerprint for ``options`` as ditproof's own loop runs them (the engine field
    is filled in by an engine's own fields)."""
    from ditproof import __version__

    device = torch.device(options.device)
    cuda: dict[str, object] = {}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = _nvidia_driver_version()
        cuda = {
            "device_name": props.name,
            "device_count": torch.cuda.device_count(),
            "sm_count": props.multi_processor_count,
            "compute_capability": f"{props.major}.{props.minor}",
            "driver_version": driver,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
        }
    else:
        cuda = {"device_name": platform.processor() or platform.machine(), "device_count": 1}
    on_gpu = device.type == "cuda"
    return RuntimeFingerprint(
        device_type="cuda" if on_gpu else "cpu",
        cpu_arch=platform.machine(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_threads=None if on_gpu else (options.cpu_threads or torch.get_num_threads()),
        cpu_kernels=None if on_gpu else cpu_kernels_probe(options.cpu_threads or torch.get_num_threads()),
        triton=_version("triton") if on_gpu else None,
        cublas=_cublas_version() if on_gpu else None,
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=_version("diffusers"),
        transformers=_version("transformers"),
        av=_version("av"),
        ditproof=__version__,
        ftfy=importlib.util.find_spec("ftfy") is not None,
        attention_backend=options.attention_backend,
        attention_library=attention_library(options.attention_backend),
        dtype=options.dtype,
        vae_dtype=options.vae_dtype,
        text_encoder_dtype=options.text_encoder_dtype or options.dtype,
        cfg_mode=options.cfg_mode,
        experts=options.experts,
        weights=options.weights,
        cache=None if options.cache is None else f"{options.cache.kind}:{options.cache.threshold}",
        shortcut=shortcut_label(options.shortcut),
        tp_degree=options.tp_degree,
        cp_degree=options.cp_degree,
        cfg_degree=options.cfg_degree,
        ffn_chunks=options.ffn_chunks,
        fuse_projections=options.fuse_projections,
        fuse_elementwise=options.fuse_elementwise,
        elementwise_steps=FUSED_STEPS if options.fuse_elementwise else None,
        compile=options.compile,
        model_preset=model.preset,
        model_revision=model.revision,
        solver=solver_name(dict(model.pipeline.scheduler.config)),
        encoding=options.encoding,
        **cuda,  # type: ignore[arg-type]
    )


def kernels(fp: RuntimeFingerprint) -> str:
    """The attention backend (with its library's versions), then ``+fused``,
    ``+fused-elementwise[steps]`` and ``+compiled-regional``."""
    parts = [
        fp.attention_backend if fp.attention_library is None else f"{fp.attention_backend}[{fp.attention_library}]"
    ]
    if fp.fuse_projections:
        parts.append("fused")
    if fp.fuse_elementwise:
        steps = "" if fp.elementwise_steps is None else f"[{fp.elementwise_steps}]"
        parts.append(f"fused-elementwise{steps}")
    if fp.compile != "none":
        parts.append(f"compiled-{fp.compile}")
    return "+".join(parts)


def class_parts(fp: RuntimeFingerprint) -> dict[str, str]:
    """The runtime class part by part, in order (see :func:`runtime_class`)."""
    if fp.device_type == "cuda":
        arch = f"cuda-sm{(fp.compute_capability or '0.0').replace('.', '')}"
        hardware = f"{fp.sm_count}sms"
        libraries = f"torch-{fp.torch}+cudnn-{fp.cudnn_version}+cublas-{fp.cublas}+triton-{fp.triton}"
    else:
        arch = f"cpu-{fp.cpu_arch}"
        probe = "" if fp.cpu_kernels is None else f"+probe{fp.cpu_kernels}"  # None: records made before it
        hardware = f"{fp.cpu_capability.lower()}{probe}-{fp.cpu_threads}threads"
        libraries = f"torch-{fp.torch}"
    dtypes = (
        fp.dtype
        if fp.dtype == fp.vae_dtype == fp.text_encoder_dtype
        else (f"{fp.dtype}+te-{fp.text_encoder_dtype}+vae-{fp.vae_dtype}")
    )
    enc = fp.encoding
    encoder = f"{enc.codec}-crf{enc.crf}-{enc.preset}-{enc.threads}threads-mbtree{int(enc.mbtree)}-{enc.yuv}+av-{fp.av}"
    return {
        "architecture": arch,
        "hardware": hardware,
        # diffusers-X.Y.Z for ditproof's own loop; vllm-omni-A.B.C+diffusers-X.Y.Z for an engine.
        "engine": f"{fp.engine}-{fp.diffusers}"
        if fp.engine_version is None
        else f"{fp.engine}-{fp.engine_version}+diffusers-{fp.diffusers}",
        "libraries": f"{libraries}+transformers-{fp.transformers}",
        "kernels": kernels(fp),
        # With fixed-order feed-forward slices the tensor-parallel degree leaves the bytes alone.
        "execution": f"cfg-{fp.cfg_mode}+" + (f"tp{fp.tp_degree}" if fp.ffn_chunks == 1 else f"ffn{fp.ffn_chunks}"),
        "dtypes": dtypes,
        "model": f"rev-{fp.model_revision[:16]}",
        "solver": fp.solver.split("/")[0] + "-" + fp.solver.rsplit("/", 1)[-1],
        "encoder": encoder,
    }


def runtime_class(fp: RuntimeFingerprint) -> str:
    """The part of a fingerprint that fixes the output bytes: a promise that two runs of one
    request in one class give the same latents and the same mp4.

    In the class (each measured or argued in docs/determinism.md): device architecture (CUDA
    compute capability and SM count, or CPU architecture, its vector capability and PyTorch's
    thread count), engine, the library versions that choose kernels (torch with its CUDA build,
    cuDNN, cuBLAS, Triton, transformers), the attention kernel with fused projections, fused
    elementwise steps and compilation, CFG mode and tensor-parallel degree, dtypes, model revision,
    solver, and the encoder with its settings and PyAV version (which pins libx264).
    Not in the class: the GPU model within an architecture and SM count (an H100 and an H200 gave
    the same latents), device memory, the driver, text-encoder offload, the context-parallel
    degree (bitwise equal to one GPU), and the deviations a validator never adopts from a record
    (weights mode, cache, experts), which the allowed-class policy refuses instead.
    """
    return "/".join(class_parts(fp).values())


def class_differences(recorded: RuntimeFingerprint, local: RuntimeFingerprint) -> list[str]:
    """Each part of the runtime class where ``local`` differs from ``recorded``, as
    ``part: record X, here Y``."""
    ours, theirs = class_parts(recorded), class_parts(local)
    return [f"{name}: record {ours[name]}, here {theirs[name]}" for name in ours if ours[name] != theirs[name]]
