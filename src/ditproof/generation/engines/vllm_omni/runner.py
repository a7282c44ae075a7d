"""Running ditproof jobs through vLLM-Omni: in this process (``Omni``) or over HTTP.

The job goes in vLLM-Omni's own request (its documented fields, plus the job under
``extra_params["ditproof"]``); ditproof's plugin in the worker draws ditproof's noise, captures
the trajectory and encodes the video, and writes a capture bundle into the artifacts folder
(:mod:`ditproof.generation.engines.vllm_omni.protocol`). This module turns that bundle back into the
:class:`~ditproof.generation.generate.GenerationResult` that ditproof's own loop returns, after
checking it against what ditproof computes itself (noise hash, model revision).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file

from ditproof.errors import IntegrityError, InvalidInputError, RuntimeUnavailableError
from ditproof.generation.engines.vllm_omni.protocol import (
    ARTIFACTS_ENV,
    CAPTURE_FILE,
    ENGINE_FILE,
    EXTRA_KEY,
    FRAMES_FILE,
    POC_FILE,
    CaptureBundle,
    EngineInfo,
    GenerateJob,
    PocJob,
    artifacts_root,
    read_model,
)
from ditproof.generation.result import GenerationResult, StepCallback
from ditproof.generation.solver_state import SolverState
from ditproof.generation.text import check_prompt_length
from ditproof.generation.trajectory import TrajectoryCapture
from ditproof.hashing import sha256_bytes, sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.poc import PocArtifact, PocParams
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import initial_noise

URL_ENV = "DITPROOF_VLLM_OMNI_URL"
MODEL_ENV = "DITPROOF_VLLM_OMNI_MODEL"
CPU_PLATFORM_ENV = "DITPROOF_OMNI_CPU"
HTTP_TIMEOUT_S = 3600.0


@dataclass
class OmniTarget:
    """Where vLLM-Omni runs: a server ``url`` (HTTP) or a model folder loaded in this process."""

    url: str | None = None
    model_dir: str | None = None
    artifacts: str | None = None

    def resolved(self) -> OmniTarget:
        """This target with unset fields taken from the environment."""
        return OmniTarget(
            url=self.url or os.environ.get(URL_ENV),
            model_dir=self.model_dir or os.environ.get(MODEL_ENV),
            artifacts=self.artifacts or os.environ.get(ARTIFACTS_ENV),
        )


_target = OmniTarget()
_omni: dict[tuple[str, str], Any] = {}


def configure(url: str | None = None, model_dir: str | None = None, artifacts: str | None = None) -> None:
    """Sets the process-wide vLLM-Omni target (unset fields fall back to the environment)."""
    global _target
    if url is not None and model_dir is not None:
        raise InvalidInputError(f"vllm-omni target: got url={url!r} and model_dir={model_dir!r}; allowed: one of them")
    _target = OmniTarget(url=url, model_dir=model_dir, artifacts=artifacts)
    if model_dir is not None:
        # vLLM-Omni resolves its platform once per process, possibly while other libraries
        # import; set the CPU platform's switch as early as the target is known.
        os.environ.setdefault(CPU_PLATFORM_ENV, "0" if _has_gpu() else "1")


def _target_now() -> OmniTarget:
    target = _target.resolved()
    if not target.url and not target.model_dir:
        raise InvalidInputError(
            f"engine 'vllm-omni': no target; allowed: a server URL (--omni-url or {URL_ENV}) or a model folder "
            f"to load in this process (--omni-model or {MODEL_ENV})"
        )
    return target


def _in_process(target: OmniTarget, dtype: str) -> Any:
    """The ``Omni`` instance of a folder and dtype, started once per process."""
    assert target.model_dir is not None
    key = (str(Path(target.model_dir).resolve()), dtype)
    if key not in _omni:
        root = artifacts_root(target.artifacts)
        # The worker processes vLLM-Omni starts read these from the environment.
        os.environ[ARTIFACTS_ENV] = str(root)
        os.environ.setdefault(CPU_PLATFORM_ENV, "1" if not _has_gpu() else "0")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from vllm_omni import Omni
        except ImportError:
            raise RuntimeUnavailableError(
                "engine 'vllm-omni' in-process: vllm_omni is not installed in this environment; allowed: run "
                "inside the vLLM-Omni environment (scripts/vllm-omni-env.sh) or give a server URL"
            ) from None
        _omni[key] = Omni(model=key[0], dtype=dtype)
    return _omni[key]


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _form(request: GenerationRequest, seed: int, job: dict[str, Any]) -> dict[str, str]:
    """vLLM-Omni's video form fields for a request, with the ditproof job in ``extra_params``."""
    fields: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "num_frames": request.num_frames,
        "fps": request.fps,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "guidance_scale_2": request.guidance_scale_2,
        "boundary_ratio": request.boundary_ratio,
        "flow_shift": request.flow_shift,
        "seed": seed,
        "extra_params": json.dumps({EXTRA_KEY: job}),
    }
    return {key: str(value) for key, value in fields.items()}


def _submit(target: OmniTarget, request: GenerationRequest, seed: int, job: dict[str, Any], dtype: str) -> bytes | None:
    """Sends one job and waits until vLLM-Omni has answered; returns the served bytes (HTTP only)."""
    if target.url:
        import httpx

        url = target.url.rstrip("/") + "/v1/videos/sync"
        try:
            response = httpx.post(url, data=_form(request, seed, job), timeout=HTTP_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise RuntimeUnavailableError(f"vllm-omni server {target.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise RuntimeUnavailableError(
                f"vllm-omni server {target.url}: HTTP {response.status_code}: {response.text[:2000]}"
            )
        return response.content
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    omni = _in_process(target, dtype)
    params = OmniDiffusionSamplingParams(
        width=request.width,
        height=request.height,
        num_frames=request.num_frames,
        fps=request.fps,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        guidance_scale_2=request.guidance_scale_2,
        boundary_ratio=request.boundary_ratio,
        seed=seed,
        extra_args={"flow_shift": request.flow_shift, EXTRA_KEY: job},
    )
    try:
        omni.generate({"prompt": request.prompt, "negative_prompt": request.negative_prompt}, params)
    except RuntimeError as exc:
        raise RuntimeUnavailableError(f"vllm-omni in-process: {exc}") from None
    return None


def engine_info(target: OmniTarget | None = None) -> EngineInfo:
    """What the vLLM-Omni worker reported about itself (``engine.json`` in the artifacts folder)."""
    target = target or _target_now()
    path = artifacts_root(target.artifacts) / ENGINE_FILE
    if not path.is_file():
        raise RuntimeUnavailableError(
            f"vllm-omni: {path} is missing; allowed: a vLLM-Omni server started with ditproof's plugin and "
            f"{ARTIFACTS_ENV} set to the same folder"
        )
    return read_model(path, EngineInfo)


def _check_engine(info: EngineInfo, model: LoadedModel, options: RuntimeOptions) -> None:
    if info.model_revision != model.revision:
        raise InvalidInputError(
            f"model revision: the vLLM-Omni server serves {info.model_path} (revision {info.model_revision}); "
            f"allowed: the model loaded here (revision {model.revision})"
        )
    device = "cuda" if options.device.startswith("cuda") else "cpu"
    if info.device_type != device:
        raise InvalidInputError(
            f"device: got {options.device!r} but the vLLM-Omni worker runs on {info.device_type}; allowed: "
            f"{info.device_type}"
        )


def fingerprint_fields(model: LoadedModel, options: RuntimeOptions) -> dict[str, Any]:
    """Runtime-fingerprint fields of the vLLM-Omni worker (it ran the generation, not this process)."""
    target = _target_now()
    if target.model_dir and not target.url:
        _in_process(target, options.dtype)
    info = engine_info(target)
    _check_engine(info, model, options)
    return {
        "engine": "vllm-omni",
        "engine_version": info.engine_version,
        "device_type": info.device_type,
        "device_name": info.device_name,
        "device_count": info.device_count,
        "sm_count": info.sm_count,
        "compute_capability": info.compute_capability,
        "cuda_version": info.cuda_version,
        "driver_version": None,
        "cudnn_version": None,
        "cpu_arch": info.cpu_arch,
        "cpu_capability": info.cpu_capability,
        # The worker's thread count and CPU kernels are its own, not this process's: not known here.
        "cpu_threads": None,
        "cpu_kernels": None,
        "python": info.python,
        "torch": info.torch,
        "diffusers": info.diffusers,
        "transformers": info.transformers,
        "av": info.av,
        "attention_backend": info.attention_backend,
        "solver": info.solver,
    }


def generate_via_omni(
    request: GenerationRequest,
    seed: int,
    model: LoadedModel,
    options: RuntimeOptions,
    on_step: StepCallback | None = None,
) -> GenerationResult:
    """One generation through vLLM-Omni with ditproof's plugin, as a :class:`GenerationResult`.

    Raises:
        InvalidInputError: options vLLM-Omni cannot honour (deviations, parallel degrees).
        IntegrityError: the worker's noise hash differs from ditproof's own.
        RuntimeUnavailableError: no server, a failed request, or a missing capture.
    """
    _refuse_unsupported(options)
    check_prompt_length(model, request.prompt, request.negative_prompt)
    target = _target_now()
    job = GenerateJob(
        job_id=f"gen-{uuid.uuid4().hex}",
        request=request,
        seed=seed,
        dtype=options.dtype,
        vae_dtype=options.vae_dtype,
        text_encoder_dtype=options.text_encoder_dtype or options.dtype,
        capture=options.capture,
        encoding=options.encoding,
    )
    started = time.perf_counter()
    served = _submit(target, request, seed, job.model_dump(mode="json"), options.dtype)
    folder = artifacts_root(target.artifacts) / job.job_id
    if not (folder / CAPTURE_FILE).is_file():
        raise RuntimeUnavailableError(
            f"vllm-omni: no capture in {folder}; allowed: a server with ditproof's plugin loaded and "
            f"{ARTIFACTS_ENV} set to the same folder as here"
        )
    bundle = read_model(folder / CAPTURE_FILE, CaptureBundle)
    _check_engine(bundle.engine, model, options)
    if served is not None and sha256_bytes(served) != bundle.video_sha256:
        raise IntegrityError(
            f"video: the server sent an mp4 of sha256 {sha256_bytes(served)}, its capture says {bundle.video_sha256}"
        )
    shape = request.latent_shape(channels=model.pipeline.transformer.config.in_channels)
    expected = sha256_tensor(initial_noise(seed, shape))
    if bundle.noise_sha256 != expected or tuple(bundle.noise_shape) != shape:
        raise IntegrityError(
            f"noise: the vLLM-Omni worker used noise {bundle.noise_sha256} of shape {bundle.noise_shape}; "
            f"ditproof's noise for seed {seed} is {expected} of shape {shape}"
        )
    capture = TrajectoryCapture(
        seed=seed, options=options.capture, switch_step=bundle.switch_step, total_steps=request.num_inference_steps
    )
    for entry in bundle.checkpoints:
        tensors = load_file(str(folder / entry.file))
        capture.latents[entry.name] = (entry.step, tensors["latent"])
        capture.solver[entry.name] = SolverState.from_tensors(tensors)
    capture.fingerprints = [list(values) for values in bundle.fingerprints]
    frames = np.load(folder / FRAMES_FILE, allow_pickle=False)
    if on_step is not None:
        on_step(request.num_inference_steps, request.num_inference_steps)
    timings = {
        "text_encode_s": bundle.timings.get("text_encode_s", 0.0),
        "high_noise_s": bundle.timings.get("high_noise_s", 0.0),
        "low_noise_s": bundle.timings.get("low_noise_s", 0.0),
        "vae_decode_s": bundle.timings.get("vae_decode_s", 0.0),
        "engine_round_trip_s": time.perf_counter() - started,
    }
    return GenerationResult(
        frames=frames,
        noise_sha256=bundle.noise_sha256,
        noise_shape=tuple(bundle.noise_shape),
        capture=capture,
        timings=timings,
        steps=dict(bundle.steps),
    )


def _refuse_unsupported(options: RuntimeOptions) -> None:
    """vLLM-Omni runs the published model whole; ditproof's deviations are diffusers-engine options."""
    deviations = {
        "experts": (options.experts, "both"),
        "weights": (options.weights, "native"),
        "cache": (options.cache, None),
        "tp_degree": (options.tp_degree, 1),
        "cp_degree": (options.cp_degree, 1),
        "cfg_degree": (options.cfg_degree, 1),
        "cfg_mode": (options.cfg_mode, "sequential"),
        "attention_backend": (options.attention_backend, "sdpa"),
        # Kernel options of ditproof's loop: the record would claim them, vLLM-Omni never ran them.
        "fuse_projections": (options.fuse_projections, False),
        "fuse_elementwise": (options.fuse_elementwise, False),
        "compile": (options.compile, "none"),
    }
    for name, (value, allowed) in deviations.items():
        if value != allowed:
            raise InvalidInputError(
                f"{name}: got {value!r} with engine 'vllm-omni'; allowed: {allowed!r} (vLLM-Omni picks its own "
                "kernels and parallelism at server start; the experiment deviations are diffusers-engine options)"
            )


def poc_via_omni(
    params: PocParams,
    block_hash: str,
    public_key: str,
    nonces: list[int],
    batch_size: int = 16,
    dtype: str = "float32",
) -> list[PocArtifact]:
    """Computes PoC vectors on the experts the vLLM-Omni server has loaded (ditproof.poc's algorithm)."""
    target = _target_now()
    job = PocJob(
        job_id=f"poc-{uuid.uuid4().hex}",
        params=params,
        block_hash=block_hash,
        public_key=public_key,
        nonces=nonces,
        batch_size=batch_size,
    )
    # A minimal valid video request carries the job; the pipeline runs PoC instead of denoising.
    carrier = GenerationRequest(prompt="proof of compute", width=16, height=16, num_frames=1, num_inference_steps=1)
    _submit(target, carrier, 0, job.model_dump(mode="json"), dtype)
    path = artifacts_root(target.artifacts) / job.job_id / POC_FILE
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeUnavailableError(f"vllm-omni: PoC result {path} cannot be read ({exc})") from None
    return [PocArtifact.model_validate(row) for row in rows]
