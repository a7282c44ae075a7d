"""The one generation path: request + seed + loaded model + run options → frames and trajectory.

The denoising loop follows diffusers' ``WanPipeline.__call__`` step for step (and the tests
check that, with default options, both give bitwise-identical latents), with what ditproof adds:
CPU-drawn noise, trajectory capture, per-expert timing, batched CFG, single-expert runs and the
experiments' compute-saving shortcuts (:mod:`ditproof.generation.shortcuts`) as options.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler

from ditproof.errors import InvalidInputError
from ditproof.generation.attention import attention_for_run
from ditproof.generation.result import FrameSink, GenerationResult, StepCallback
from ditproof.generation.shortcuts import ShortcutPlan, blocks_skipped
from ditproof.generation.solver_state import ResumePoint
from ditproof.generation.text import check_prompt_length
from ditproof.generation.trajectory import TrajectoryCapture
from ditproof.hashing import sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import CacheOptions, RunOptions, RuntimeOptions, VideoEncoding
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import initial_noise
from ditproof.video import BackgroundEncode, frames_to_uint8

if TYPE_CHECKING:
    from ditproof.models.parallel import CfgGroup


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


def check_segment(request: GenerationRequest, resume: ResumePoint | None, stop_after: int | None) -> None:
    """Checks that a resume point and a stop step lie inside the request's steps, in order."""
    steps = request.num_inference_steps
    start = 0 if resume is None else resume.step
    if not 0 <= start < steps:
        raise InvalidInputError(f"resume: got step {start}; allowed: 0 to {steps - 1} for a {steps}-step request")
    if resume is not None and tuple(resume.latent.shape) != request.latent_shape():
        raise InvalidInputError(
            f"resume: got a latent of shape {tuple(resume.latent.shape)}; allowed: {request.latent_shape()}"
        )
    if stop_after is not None and not start < stop_after <= steps:
        raise InvalidInputError(f"stop_after: got {stop_after}; allowed: {start + 1} to {steps}")


def expert_phases(scheduler: UniPCMultistepScheduler, request: GenerationRequest) -> list[bool]:
    """Per step (timesteps already set), whether the high-noise expert runs it (t ≥ the boundary)."""
    boundary = request.boundary_ratio * scheduler.config.num_train_timesteps
    return [bool(t >= boundary) for t in scheduler.timesteps]


def expert_switch(scheduler_config: Any, request: GenerationRequest) -> int | None:
    """The first step the low-noise expert runs (the ``pre_switch`` latent's step), as
    :func:`generate` computes it; None when one expert runs every step."""
    high = expert_phases(_request_scheduler(scheduler_config, request), request)
    return high.index(False) if False in high else None


def step_sigmas(scheduler_config: Any, request: GenerationRequest) -> list[float]:
    """The noise level of the latent after each number of steps (index 0: the noise, 1.0; the last:
    the final latent, 0.0), as :func:`generate`'s scheduler sets it for ``request``."""
    return [float(sigma) for sigma in _request_scheduler(scheduler_config, request).sigmas]


def _request_scheduler(scheduler_config: Any, request: GenerationRequest) -> UniPCMultistepScheduler:
    """A fresh scheduler of ``scheduler_config`` set for ``request`` (a loaded model's own is left alone)."""
    scheduler = UniPCMultistepScheduler.from_config(scheduler_config, flow_shift=request.flow_shift)
    scheduler.set_timesteps(request.num_inference_steps, device="cpu")
    return scheduler


@contextmanager
def step_cache(model: LoadedModel, cache: CacheOptions | None) -> Iterator[None]:
    """Step caching (diffusers' first-block cache) on both experts for the block, removed after
    (nothing without a cache). Each run starts with an empty cache."""
    if cache is None:
        yield
        return
    from diffusers import FirstBlockCacheConfig

    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    enabled = []
    try:
        for expert in experts:
            expert.enable_cache(FirstBlockCacheConfig(threshold=cache.threshold))
            enabled.append(expert)
        yield
    finally:
        for expert in enabled:
            expert.disable_cache()


@contextmanager
def cpu_threads(device: str, wanted: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``wanted`` for a run on the CPU ``device``, and
    restored after (nothing on a GPU, or when ``wanted`` is None: the process's count)."""
    before = torch.get_num_threads()
    if wanted is None or torch.device(device).type != "cpu" or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


P = ParamSpec("P")
R = TypeVar("R")


def with_cpu_threads(function: Callable[P, R]) -> Callable[P, R]:
    """Runs ``function(request, seed, model, options, ...)`` under :func:`cpu_threads` of the
    model's device and the options' thread count (the fourth argument, or ``options=``)."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        model = kwargs["model"] if "model" in kwargs else args[2]
        options = kwargs["options"] if "options" in kwargs else args[3]
        assert isinstance(model, LoadedModel) and isinstance(options, RunOptions | RuntimeOptions)
        with cpu_threads(model.load.device, options.cpu_threads):
            return function(*args, **kwargs)

    return run


def encode(
    model: LoadedModel, request: GenerationRequest, do_cfg: bool, run: RunOptions, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt's (and, with CFG, the negative prompt's) text-encoder outputs, as WanPipeline's.

    Kept in the model's :class:`~ditproof.models.registry.PromptCache`: a repeat is not encoded
    again. An offloaded text encoder is on the device for the encoding only.
    """
    key = (request.prompt, request.negative_prompt, do_cfg, str(device), run.attention_backend)
    kept = model.prompts.get(key)
    if kept is not None:
        return kept
    host = model.text_encoder_host
    with nullcontext() if host is None else host.on(device):  # see ditproof.models.offload
        embeddings = model.pipeline.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=1,
            max_sequence_length=model.text_max_length,
            device=device,
        )
    model.prompts.put(key, embeddings)
    return embeddings


@with_cpu_threads
@torch.inference_mode()
def generate(
    request: GenerationRequest,
    seed: int,
    model: LoadedModel,
    options: RunOptions | RuntimeOptions,
    on_step: StepCallback | None = None,
    *,
    resume: ResumePoint | None = None,
    stop_after: int | None = None,
    on_frames: FrameSink | None = None,
) -> GenerationResult:
    """Runs one text-to-video generation, or a segment of one, on a loaded model.

    Args:
        request: the validated request (its ``seed`` field is ignored: ``seed`` is authoritative).
        seed: the seed of the initial noise (derived by the caller).
        model: a loaded two-expert pipeline; its load options (device, dtypes, weights, kernels,
            parallelism, engine) are the run's.
        options: the run's choices (kernel, CFG mode, deviations, capture; on the CPU the thread
            count ``cpu_threads``: see :func:`with_cpu_threads`). Complete
            :class:`RuntimeOptions` are taken too when their load part is the model's
            (:meth:`LoadedModel.run_options`).
        on_step: progress callback.
        resume: start from a checkpoint (latent and solver state after ``resume.step`` steps)
            instead of the noise.
        stop_after: stop once this many steps are done; the VAE is then skipped, ``frames`` is
            None and the last latent is captured as ``step_NNN``.
        on_frames: takes the frames as the VAE decodes them, a latent frame's worth at a time
            (:func:`decode_frames`); ditproof's own loop only (another engine's frames come whole
            in the result).

    Returns:
        Frames as uint8 ``(F, H, W, 3)``, the noise hash and the captured trajectory.
    """
    run = model.run_options(options)
    engine = model.load.engine
    if engine != "diffusers" and run.shortcut is not None:
        raise InvalidInputError(
            f"shortcut: got {run.shortcut.kind!r} with engine {engine!r}; allowed: engine 'diffusers' "
            "(ditproof's own loop runs the experiments' shortcuts)"
        )
    if engine != "diffusers":
        # Another engine runs the loop (ditproof.generation.engines); it returns the same GenerationResult.
        from ditproof.generation.engines import run_engine

        return run_engine(request, seed, model, run, on_step, resume=resume, stop_after=stop_after)

    if model.cfg_group is not None:
        from ditproof.models.parallel import check_cfg_mode

        check_cfg_mode(model.load.cfg_degree, run.cfg_mode)
    # 1. Check inputs the request model cannot check alone.
    check_prompt_length(model, request.prompt, request.negative_prompt)
    check_segment(request, resume, stop_after)
    device = torch.device(model.load.device)
    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    with attention_for_run(experts, run.attention_backend, device), step_cache(model, run.cache):
        return _denoise(request, seed, model, run, device, on_step, resume, stop_after, on_frames)


def _denoise(
    request: GenerationRequest,
    seed: int,
    model: LoadedModel,
    options: RunOptions,
    device: torch.device,
    on_step: StepCallback | None,
    resume: ResumePoint | None,
    stop_after: int | None,
    on_frames: FrameSink | None = None,
) -> GenerationResult:
    """Steps 2 to 6 of :func:`generate`: noise, prompt, timesteps, the loop, the VAE."""
    pipe = model.pipeline
    clock = _Clock(device)

    # 2. Initial noise, drawn on the CPU from the seed.
    shape = request.latent_shape(
        channels=pipe.transformer.config.in_channels, spatial_stride=pipe.vae_scale_factor_spatial
    )
    noise = initial_noise(seed, shape)
    noise_sha256 = sha256_tensor(noise)

    # 3. Encode the prompt (as WanPipeline: CFG when guidance_scale > 1).
    do_cfg = request.guidance_scale > 1.0
    prompt_embeds, negative_embeds = encode(model, request, do_cfg, options, device)
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
    high = expert_phases(scheduler, request)
    switch_step = high.index(False) if False in high else None

    # 5. Denoising loop, capturing the trajectory.
    capture = TrajectoryCapture(seed=seed, options=options.capture, switch_step=switch_step, total_steps=len(timesteps))
    first = 0
    if resume is None:
        capture.start(0, noise, scheduler)
        latents = noise.to(device)
    else:
        resume.solver.restore(scheduler, device)
        first = resume.step
        capture.start(first, resume.latent, scheduler, name=f"step_{first:03d}")
        latents = resume.latent.to(device=device, dtype=torch.float32)
    last = len(timesteps) if stop_after is None else stop_after
    phase_time = {"high": 0.0, "low": 0.0}
    # Without a shortcut the plan leaves nothing out (ditproof.generation.shortcuts).
    plan = ShortcutPlan(options.shortcut, len(timesteps), switch_step)
    previous: tuple[torch.Tensor, torch.Tensor | None] | None = None  # last guided velocity, uncond
    passes = 0
    clock.lap()
    for i in range(first, last):
        t = timesteps[i]
        use_high = high[i] or options.experts == "high-noise-only"
        expert = pipe.transformer if use_high else pipe.transformer_2
        scale = request.guidance_scale if high[i] else request.guidance_scale_2
        latent_input = latents.to(transformer_dtype)
        timestep = t.expand(latents.shape[0])
        context = {"step_index": i, "sigma": float(scheduler.sigmas[i]), "num_inference_steps": len(timesteps)}
        if previous is not None and plan.reuses_prediction(i):
            noise_pred = previous[0]
        else:
            guided = do_cfg and not plan.cfg_off(i)
            reuse = previous[1] if previous is not None and guided and plan.reuses_uncond(i) else None
            with blocks_skipped(expert, plan.skipped_block(use_high)):
                noise_pred, uncond = _predict(
                    expert,
                    latent_input,
                    timestep,
                    prompt_embeds,
                    negative_embeds if guided else None,
                    scale,
                    options.cfg_mode,
                    context,
                    uncond=reuse,
                    cfg_group=model.cfg_group,
                )
            previous = (noise_pred, uncond)
            passes += 2 if guided and reuse is None else 1
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        capture.after_step(i, latents, scheduler)
        phase_time["high" if high[i] else "low"] += clock.lap()
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    capture.finish(last, latents, scheduler, name="final" if last == len(timesteps) else f"step_{last:03d}")
    timings["high_noise_s"] = phase_time["high"]
    timings["low_noise_s"] = phase_time["low"]
    steps = {
        "high_noise_steps": sum(high[first:last]),
        "low_noise_steps": (last - first) - sum(high[first:last]),
        "forward_passes": passes,
    }
    if last < len(timesteps):
        return GenerationResult(None, noise_sha256, tuple(noise.shape), capture, timings, steps)

    # 6. Decode with the VAE (as WanPipeline), then to uint8 frames.
    frames = decode_frames(pipe, latents, on_frames)
    timings["vae_decode_s"] = clock.lap()
    return GenerationResult(
        frames=frames,
        noise_sha256=noise_sha256,
        noise_shape=tuple(noise.shape),
        capture=capture,
        timings=timings,
        steps=steps,
    )


@torch.inference_mode()
def decode_frames(pipe: Any, latents: torch.Tensor, on_frames: FrameSink | None = None) -> np.ndarray:
    """The final latent through the VAE (un-normalized as WanPipeline does) to uint8 frames.

    With ``on_frames``, the frames are also handed over as they are decoded: the Wan VAE decodes
    one latent frame at a time (its causal convolutions keep what the next one needs), and here
    each latent frame's video frames (1, then 4 each) go to ``on_frames`` before the next is
    decoded. The loop is the VAE's own (``AutoencoderKLWan._decode``: the same modules, inputs and
    order, clamped and converted elementwise), so the frames are the same bytes as one decode
    (tested); a VAE that tiles, patchifies or is moved by offload hooks is decoded whole and its
    frames handed over at once.
    """
    vae = pipe.vae
    latents = latents.to(vae.device, dtype=vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(
        latents.device, latents.dtype
    )
    z = latents / inv_std + mean
    if on_frames is None or not _decodes_by_latent_frame(vae):
        frames = _to_uint8(pipe, vae.decode(z, return_dict=False)[0])
        if on_frames is not None:
            on_frames(frames)
        return frames
    chunks = []
    for video in _decode_by_latent_frame(vae, z):
        chunks.append(_to_uint8(pipe, video))
        on_frames(chunks[-1])
    return np.concatenate(chunks)


def encodes_beside_decode(model: LoadedModel) -> bool:
    """Whether the mp4 encode runs beside the VAE decode (on a GPU) rather than after it (on the
    CPU both need the cores: see :func:`generate_video`)."""
    return torch.device(model.load.device).type == "cuda"


def start_decode_video(
    model: LoadedModel,
    latents: torch.Tensor,
    fps: int,
    encoding: VideoEncoding,
    threads: int | None = None,
    overlap: bool | None = None,
) -> BackgroundEncode:
    """A final latent's mp4 on its way: the VAE decode (under :func:`cpu_threads` of ``threads``)
    is done when this returns, every frame handed to an encode whose thread goes on, so that the GPU
    can run other work while the CPU encodes. With ``overlap`` (default:
    :func:`encodes_beside_decode`) the encode runs beside the decode too, as in
    :func:`generate_video`. ``finish()`` gives the bytes of ``encode_video(decode_frames(...), fps,
    encoding)``; use the result as a context manager, so that its thread stops when the caller
    leaves early."""
    beside = encodes_beside_decode(model) if overlap is None else overlap
    with ExitStack() as cleanup:
        encoder = cleanup.enter_context(BackgroundEncode(fps, encoding))
        with cpu_threads(model.load.device, threads):
            frames = decode_frames(model.pipeline, latents, on_frames=encoder if beside else None)
        if encoder.frames == 0:
            encoder(frames)
        cleanup.pop_all()  # the caller stops it from here on
    return encoder


def _to_uint8(pipe: Any, video: torch.Tensor) -> np.ndarray:
    frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    return frames_to_uint8(np.asarray(frames))


def _decodes_by_latent_frame(vae: Any) -> bool:
    """Whether :func:`_decode_by_latent_frame` runs exactly what ``vae.decode`` would."""
    from diffusers import AutoencoderKLWan

    return (
        isinstance(vae, AutoencoderKLWan)
        and not vae.use_tiling
        and vae.config.patch_size is None
        and not hasattr(vae, "_hf_hook")  # accelerate's offload hooks run around decode() only
        and all(hasattr(vae, name) for name in ("clear_cache", "post_quant_conv", "decoder"))
    )


def _decode_by_latent_frame(vae: Any, z: torch.Tensor) -> Iterator[torch.Tensor]:
    """``vae.decode(z)``'s output, a latent frame's decoded frames at a time (clamped to [-1, 1])."""
    vae.clear_cache()  # the causal convolutions' carried features (the decode's own first step)
    try:
        x = vae.post_quant_conv(z)
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
            yield torch.clamp(out, min=-1.0, max=1.0)
    finally:
        vae.clear_cache()


def generate_video(
    request: GenerationRequest,
    seed: int,
    model: LoadedModel,
    options: RunOptions | RuntimeOptions,
    encoding: VideoEncoding,
    on_step: StepCallback | None = None,
) -> tuple[GenerationResult, bytes, float]:
    """:func:`generate` and the mp4 encode; on a GPU overlapped: the CPU encodes the frames the VAE
    has decoded while the GPU decodes the next ones (:class:`~ditproof.video.BackgroundEncode`).

    On the CPU the decode comes first and the encode after it: there both need the cores, and the
    decode slowed down by about half with the encode beside it (shipped VAE, 480×832×33, 2 cores:
    68–101 s alone, 116–151 s beside the encode; ``bench/decode_encode_overlap.py``).

    Returns:
        The result, the mp4's bytes (those of ``encode_video(result.frames, ...)``) and the
        seconds the encode went on after the decode.
    """
    side_by_side = encodes_beside_decode(model)
    with BackgroundEncode(request.fps, encoding) as encoder:
        result = generate(request, seed, model, options, on_step, on_frames=encoder if side_by_side else None)
        assert result.frames is not None  # a whole run always decodes
        if encoder.frames == 0:  # on the CPU, or another engine's loop: the frames come whole, after it
            encoder(result.frames)
        started = time.perf_counter()
        data = encoder.finish()
    return result, data, time.perf_counter() - started


def _predict(
    expert: Any,
    latent_input: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    scale: float,
    cfg_mode: str,
    context: dict[str, float | int],
    uncond: torch.Tensor | None = None,
    cfg_group: CfgGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One guided velocity prediction: conditional, unconditional, combined as in WanPipeline.

    Returns the guided prediction and the unconditional output (None without CFG). ``uncond``: an
    unconditional output to reuse instead of running that pass (the ``uncond-reuse-tail``
    shortcut; None in the published algorithm). ``cfg_group``: under CFG parallelism this rank
    runs only its pass and takes the other from its counterpart; a forward without guidance runs
    on every rank alike.

    Each forward runs inside the expert's ``cache_context`` as in WanPipeline, which step caches
    (first-block cache) key on; without a cache it does nothing.
    """

    def forward(name: str, hidden: torch.Tensor, steps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with expert.cache_context(name, **context):
            return expert(hidden_states=hidden, timestep=steps, encoder_hidden_states=text, return_dict=False)[0]

    if negative_embeds is None:
        return forward("cond", latent_input, timestep, prompt_embeds), None
    if uncond is not None:
        cond = forward("cond", latent_input, timestep, prompt_embeds)
    elif cfg_group is not None:
        # The same forward as one process's on this rank's half, then the two outputs exchanged.
        mine = (
            forward("cond", latent_input, timestep, prompt_embeds)
            if cfg_group.branch == 0
            else forward("uncond", latent_input, timestep, negative_embeds)
        )
        cond, uncond = cfg_group.exchange(mine)
    elif cfg_mode == "batched":
        both = forward(
            "cond_uncond",
            torch.cat([latent_input, latent_input]),
            torch.cat([timestep, timestep]),
            torch.cat([prompt_embeds, negative_embeds]),
        )
        cond, uncond = both.chunk(2)
    else:
        cond = forward("cond", latent_input, timestep, prompt_embeds)
        uncond = forward("uncond", latent_input, timestep, negative_embeds)
    return uncond + scale * (cond - uncond), uncond
