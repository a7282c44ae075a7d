"""The one generation path: request + seed + model + runtime options → frames and trajectory.

The denoising loop follows diffusers' ``WanPipeline.__call__`` step for step (and the tests
check that, with default options, both give bitwise-identical latents), with what ditproof adds:
CPU-drawn noise, trajectory capture, per-expert timing, batched CFG and single-expert runs as
options.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.generation.trajectory import TrajectoryCapture
from ditproof.hashing import sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import ATTENTION_BACKENDS, RuntimeOptions
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import initial_noise
from ditproof.video import frames_to_uint8

GPU_ONLY_BACKENDS = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn")

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total steps)."""


@dataclass
class GenerationResult:
    """What one generation produced, before encoding."""

    frames: np.ndarray
    noise_sha256: str
    noise_shape: tuple[int, ...]
    capture: TrajectoryCapture
    timings: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)


class _Clock:
    """Wall-clock phases with the device synchronized at every boundary."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.mark = time.perf_counter()

    def lap(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.mark = now - self.mark, now
        return elapsed


def check_prompt_length(model: LoadedModel, *texts: str) -> None:
    """Refuses texts longer than the text encoder's window (they would be truncated silently)."""
    tokenizer = model.pipeline.tokenizer
    for name, text in zip(("prompt", "negative_prompt"), texts, strict=False):
        count = len(tokenizer(prompt_clean(text), add_special_tokens=True, truncation=False)["input_ids"])
        if count > model.text_max_length:
            raise InvalidInputError(
                f"{name}: got {count} tokens; allowed: at most {model.text_max_length} tokens for model "
                f"{model.preset} (longer prompts would be truncated)"
            )


def configure_attention(model: LoadedModel, backend: str) -> None:
    """Selects the attention kernel of both experts (diffusers' attention dispatcher)."""
    if model.attention_backend == backend:
        return
    device = next(model.pipeline.transformer.parameters()).device
    if backend in GPU_ONLY_BACKENDS and device.type != "cuda":
        raise RuntimeUnavailableError(
            f"attention_backend: {backend!r} needs a CUDA device (the model is on {device}); "
            "allowed here: sdpa, sdpa-math, flex"
        )
    name = ATTENTION_BACKENDS[backend]
    for expert in (model.pipeline.transformer, model.pipeline.transformer_2):
        try:
            expert.set_attention_backend(name or "native")
        except (ValueError, RuntimeError, ImportError) as exc:
            raise RuntimeUnavailableError(f"attention_backend: {backend!r} is not available here ({exc})") from None
    model.attention_backend = backend


@torch.inference_mode()
def generate(
    request: GenerationRequest,
    seed: int,
    model: LoadedModel,
    options: RuntimeOptions,
    on_step: StepCallback | None = None,
) -> GenerationResult:
    """Runs one text-to-video generation.

    Args:
        request: the validated request (its ``seed`` field is ignored: ``seed`` is authoritative).
        seed: the seed of the initial noise (derived by the caller).
        model: a loaded two-expert pipeline.
        options: device, dtypes, kernels, deviations and capture settings.
        on_step: progress callback.

    Returns:
        Frames as uint8 ``(F, H, W, 3)``, the noise hash and the captured trajectory.
    """
    pipe = model.pipeline
    device = torch.device(options.device)
    clock = _Clock(device)

    # 1. Check inputs the request model cannot check alone.
    check_prompt_length(model, request.prompt, request.negative_prompt)
    configure_attention(model, options.attention_backend)

    # 2. Initial noise, drawn on the CPU from the seed.
    shape = request.latent_shape(
        channels=pipe.transformer.config.in_channels, spatial_stride=pipe.vae_scale_factor_spatial
    )
    noise = initial_noise(seed, shape)
    noise_sha256 = sha256_tensor(noise)

    # 3. Encode the prompt (as WanPipeline: CFG when guidance_scale > 1).
    do_cfg = request.guidance_scale > 1.0
    if options.offload_text_encoder:
        pipe.text_encoder.to(device)
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        do_classifier_free_guidance=do_cfg,
        num_videos_per_prompt=1,
        max_sequence_length=model.text_max_length,
        device=device,
    )
    if options.offload_text_encoder:
        pipe.text_encoder.to("cpu")
    transformer_dtype = pipe.transformer.dtype
    prompt_embeds = prompt_embeds.to(transformer_dtype)
    if negative_embeds is not None:
        negative_embeds = negative_embeds.to(transformer_dtype)
    timings = {"text_encode_s": clock.lap()}

    # 4. Timesteps, from a fresh scheduler with the request's flow shift.
    scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=request.flow_shift)
    scheduler.set_timesteps(request.num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    scheduler.set_begin_index(0)
    boundary = request.boundary_ratio * scheduler.config.num_train_timesteps
    high = [bool(t >= boundary) for t in timesteps]
    switch_step = high.index(False) if False in high else None

    # 5. Denoising loop, capturing the trajectory.
    capture = TrajectoryCapture(seed=seed, options=options.capture, switch_step=switch_step)
    capture.start(noise)
    latents = noise.to(device)
    phase_time = {"high": 0.0, "low": 0.0}
    clock.lap()
    for i, t in enumerate(timesteps):
        use_high = high[i] or options.experts == "high-noise-only"
        expert = pipe.transformer if use_high else pipe.transformer_2
        scale = request.guidance_scale if high[i] else request.guidance_scale_2
        latent_input = latents.to(transformer_dtype)
        timestep = t.expand(latents.shape[0])
        noise_pred = _predict(
            expert, latent_input, timestep, prompt_embeds, negative_embeds if do_cfg else None, scale, options.cfg_mode
        )
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        capture.after_step(i, latents)
        phase_time["high" if high[i] else "low"] += clock.lap()
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    capture.finish(len(timesteps), latents)
    timings["high_noise_s"] = phase_time["high"]
    timings["low_noise_s"] = phase_time["low"]

    # 6. Decode with the VAE (as WanPipeline), then to uint8 frames.
    vae = pipe.vae
    latents = latents.to(vae.device, dtype=vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(
        latents.device, latents.dtype
    )
    video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    timings["vae_decode_s"] = clock.lap()
    steps = {
        "high_noise_steps": sum(high),
        "low_noise_steps": len(high) - sum(high),
        "forward_passes": len(high) * (2 if do_cfg else 1),
    }
    return GenerationResult(
        frames=frames_to_uint8(np.asarray(frames)),
        noise_sha256=noise_sha256,
        noise_shape=tuple(noise.shape),
        capture=capture,
        timings=timings,
        steps=steps,
    )


def _predict(
    expert: torch.nn.Module,
    latent_input: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    scale: float,
    cfg_mode: str,
) -> torch.Tensor:
    """One guided velocity prediction: conditional, unconditional, combined as in WanPipeline."""
    if negative_embeds is None:
        return expert(
            hidden_states=latent_input, timestep=timestep, encoder_hidden_states=prompt_embeds, return_dict=False
        )[0]
    if cfg_mode == "batched":
        both = expert(
            hidden_states=torch.cat([latent_input, latent_input]),
            timestep=torch.cat([timestep, timestep]),
            encoder_hidden_states=torch.cat([prompt_embeds, negative_embeds]),
            return_dict=False,
        )[0]
        cond, uncond = both.chunk(2)
    else:
        cond = expert(
            hidden_states=latent_input, timestep=timestep, encoder_hidden_states=prompt_embeds, return_dict=False
        )[0]
        uncond = expert(
            hidden_states=latent_input, timestep=timestep, encoder_hidden_states=negative_embeds, return_dict=False
        )[0]
    return uncond + scale * (cond - uncond)
