"""Runtime options of the one generation path.

Every option that can change the numbers is recorded in the inference record and the runtime
fingerprint, so that an executor and a validator can pin it. :class:`LoadOptions` are applied
when a model is loaded and belong to it; :class:`RunOptions` are a run's own choices on a loaded
model; :class:`RuntimeOptions`, the record's complete view, joins both. Deviations studied by the
experiments (CFG batching, a single expert, another attention kernel, ...) are options here,
never forks of the generation code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

AttentionBackend = Literal[
    "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex", "flash-attn-4", "flash-attn-3"
]
DType = Literal["float32", "bfloat16", "float16"]

ATTENTION_BACKENDS: dict[str, str | None] = {
    # ditproof name -> diffusers AttentionBackendName (None: diffusers' default, torch SDPA
    # choosing its kernel itself).
    "sdpa": None,
    "sdpa-flash": "_native_flash",
    "sdpa-efficient": "_native_efficient",
    "sdpa-cudnn": "_native_cudnn",
    "sdpa-math": "_native_math",
    "flex": "flex",
    # The local flash-attn-4 package in diffusers' flash_4_hub slot (ditproof.kernels.flash4).
    "flash-attn-4": "flash_4_hub",
    # A local FlashAttention-3 build, through the same slot (ditproof.kernels.flash3).
    "flash-attn-3": "flash_4_hub",
}
GPU_ONLY_BACKENDS = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flash-attn-4", "flash-attn-3")

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


class VideoEncoding(BaseModel):
    """Pinned encoder settings. The same frames and settings give the same mp4 bytes.

    ``h264``: libx264, yuv420p, constant rate factor ``crf``. ``h264-lossless``: libx264rgb with
    qp 0 in rgb24, so decoded frames equal the generated ones exactly (for experiments).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    codec: Literal["h264", "h264-lossless"] = "h264"
    crf: int = Field(default=18, ge=0, le=51)
    preset: str = "medium"
    threads: int = Field(default=1, ge=1, le=64)
    # x264's macroblock-tree rate control. Off: with it on, the same frames gave other H.264
    # bytes from one encode to the next in one process (2026-11-27, PyAV 18.1, medium preset,
    # 832x480x81: 4 streams in 12 encodes here, and on an H100 host); off, every encode agreed.
    # Records written before this field existed were encoded with it on.
    mbtree: bool = False
    # How the encoder's yuv420p input is computed from RGB (ditproof.video): exact integers, or
    # the float64 matrix product of records made before 2026-12, whose last bits follow the CPU's
    # BLAS kernel. Records without the field are read as "bt601-float64".
    yuv: Literal["bt601-integer", "bt601-float64"] = "bt601-integer"

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        if value not in X264_PRESETS:
            raise ValueError(f"got {value!r}; allowed: {', '.join(X264_PRESETS)}")
        return value


class CheckpointSchedule(BaseModel):
    """Which steps a record commits to, as a rule of the step count and the expert switch.

    ``per-phase-v1``: the trajectory is cut into about ``segments`` segments of equal length, each
    expert phase on its own: the high-noise phase (steps 0 to the switch) gets
    ``max(1, round(segments * switch / steps))`` segments and the low-noise phase the same of its
    length, their boundaries at ``start + round(i * length / n)`` (halves rounded up). The switch
    step (the ``pre_switch`` latent, the one entering the low-noise expert), the noise and the
    final latent are always boundaries. 40 steps switching at 26 with 8 segments: 0, 5, 10, 16,
    21, 26, 31, 35, 40. See :meth:`steps`.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rule: Literal["per-phase-v1"] = "per-phase-v1"
    segments: int = Field(default=8, ge=1, le=256)

    def steps(self, total: int, switch: int | None) -> tuple[int, ...]:
        """The committed steps (steps done, 0 to ``total``, ascending) of a ``total``-step run whose
        low-noise expert starts at step ``switch`` (None: one expert phase)."""
        if total < 1:
            raise ValueError(f"total: got {total}; allowed: 1 or more steps")
        phases = [(0, total)] if switch is None or not 0 < switch < total else [(0, switch), (switch, total)]
        points = {0, total}
        for start, end in phases:
            length = end - start
            count = max(1, (2 * self.segments * length + total) // (2 * total))
            count = min(count, length)
            points.update(start + (2 * i * length + count) // (2 * count) for i in range(count + 1))
        return tuple(sorted(points))


class CaptureOptions(BaseModel):
    """What the trajectory capture keeps besides the video.

    ``schedule``: the rule that fixes which steps' latents are committed (hashed in the record,
    saved as files the executor keeps), from the step count and the expert switch; recorded in
    the record, so a validator knows what was promised. None: no scheduled checkpoints (records
    made before the schedule existed are read so). ``checkpoint_steps``: extra steps committed
    besides the schedule's, the initial noise, the latent just before the expert switch and the
    final latent. ``jl_dim``: values per step of the Johnson–Lindenstrauss trajectory fingerprint
    (1 to 256).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schedule: CheckpointSchedule | None = CheckpointSchedule()
    checkpoint_steps: tuple[int, ...] = ()
    # At least one value per step: the fingerprints are mandatory in a record (a validator uses
    # them to name the step where a regeneration first differs).
    jl_dim: int = Field(default=8, ge=1, le=256)

    @field_validator("checkpoint_steps")
    @classmethod
    def _steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(step < 0 for step in value) or list(value) != sorted(set(value)):
            raise ValueError(f"got {value}; allowed: distinct step indices (0-based), ascending")
        return value

    def committed_steps(self, total: int, switch: int | None) -> tuple[int, ...]:
        """Every step whose latent a ``total``-step run commits to: the noise (0), the schedule's,
        the extra ``checkpoint_steps``, the switch step and the final latent (``total``)."""
        points = {0, total, *(s for s in self.checkpoint_steps if s <= total)}
        if switch is not None and 0 < switch < total:
            points.add(switch)
        if self.schedule is not None:
            points.update(self.schedule.steps(total, switch))
        return tuple(sorted(points))


class CacheOptions(BaseModel):
    """Step caching (a malign deviation in the experiments: it skips computation).

    ``first-block``: diffusers' FirstBlockCacheConfig on both experts; the remaining blocks are
    skipped when the first block's output changed by less than ``threshold`` (relative).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["first-block"] = "first-block"
    threshold: float = Field(default=0.05, gt=0.0, le=1.0)


class LowNoiseReuse(BaseModel):
    """Adaptive malign deviation: honest until the expert switch, then every ``every``-th low-noise
    step reuses the previous step's guided velocity instead of running the expert (a step cache
    that only starts where the record's early checkpoints can no longer see it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["low-noise-reuse"]
    every: int = Field(default=2, ge=2, le=64)


class CfgOffTail(BaseModel):
    """Malign deviation: the last ``steps`` steps run the conditional pass only (no CFG)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["cfg-off-tail"]
    steps: int = Field(default=3, ge=1, le=1000)


class UncondReuseTail(BaseModel):
    """Malign deviation: in the last ``steps`` steps the unconditional pass runs every other step
    and its output is reused in between (a CFG cache)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["uncond-reuse-tail"]
    steps: int = Field(default=8, ge=2, le=1000)


class SkipBlock(BaseModel):
    """Malign deviation: transformer block ``block`` of one expert is skipped (its input passed
    through) at every step that expert runs."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["skip-block"]
    expert: Literal["high-noise", "low-noise"] = "low-noise"
    block: int = Field(default=0, ge=0, le=255)


Shortcut = Annotated[LowNoiseReuse | CfgOffTail | UncondReuseTail | SkipBlock, Field(discriminator="kind")]
"""The compute-saving deviations the experiments run (:mod:`ditproof.generation.shortcuts`)."""


def shortcut_label(shortcut: LowNoiseReuse | CfgOffTail | UncondReuseTail | SkipBlock | None) -> str | None:
    """How a runtime fingerprint states a shortcut: ``"cfg-off-tail:steps=3"`` (None: none)."""
    if shortcut is None:
        return None
    params = ",".join(f"{k}={v}" for k, v in shortcut.model_dump().items() if k != "kind")
    return f"{shortcut.kind}:{params}"


def is_one(value: int) -> bool:
    """A parallel degree of 1 (none), which a dump leaves out (``exclude_if``)."""
    return value == 1


def check_device(value: str) -> str:
    """``value`` when it names a device the options allow (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        ValueError: another value.
    """
    base, _, index = value.partition(":")
    if base not in ("cpu", "cuda") or (index and (not index.isdigit() or base == "cpu")):
        raise ValueError(f"got {value!r}; allowed: cpu, cuda or cuda:N")
    return value


class LoadOptions(BaseModel):
    """What is applied when a model is loaded (:func:`ditproof.models.registry.load_model`); a
    loaded model holds its own and every run on it runs with them.

    ``device``, ``dtype`` (both experts), ``vae_dtype``, ``text_encoder_dtype`` (None: ``dtype``):
    where and in which precision the weights live.
    ``offload_text_encoder``: the text encoder stays in pinned host memory and is on the device
    for a prompt's encoding only (:mod:`ditproof.models.offload`); not in the runtime class.
    ``weights``: ``native`` as loaded; ``fp8-e4m3`` rounds every linear weight of both experts
    through float8 e4m3 and back (weight-only FP8, a malign deviation a validator never adopts).
    ``tp_degree`` / ``cp_degree``: tensor / context (Ulysses) parallelism over that many GPUs,
    one process per GPU (``torchrun``); 1 means none.
    ``fuse_projections``: both experts' attention projections fused into one matrix product per
    attention (diffusers' ``fuse_projections``); ``compile``: ``regional`` compiles the experts'
    repeated blocks with ``torch.compile`` (diffusers' ``compile_repeated_blocks``), fusing the
    elementwise work around the matrix products. Both change the kernels and so the low bits:
    they are part of the runtime class.
    ``fuse_elementwise``: the feed-forward's tanh-GELU in its up-projection's epilogue and the
    self-attention's query/key RMS norm with the rotary embedding in one kernel
    (:mod:`ditproof.kernels.fused`); changes the low bits, part of the runtime class.
    ``ffn_chunks``: above 1, every block's feed-forward network runs as that many independent
    slices of its hidden units (each its own up-projection, GELU and down-projection), whose
    partial outputs are summed in one fixed order (:mod:`ditproof.models.parallel`). Tensor
    parallelism then hands whole slices to the ranks and gathers the partial outputs, so a run
    with ``tp_degree`` N (dividing ``ffn_chunks``) gives the bytes of one process: the degree
    leaves the runtime class. Not with ``fuse_elementwise``.
    ``cfg_degree``: 2 runs classifier-free guidance's two passes in parallel on two halves of the
    processes (the conditional on ranks ``0 … N/2−1``, the unconditional on the others, each half
    with ``cp_degree`` context parallelism), which exchange their outputs and combine them as one
    process does: every pass is the forward one process runs, so the bytes are one process's and
    the degree leaves the runtime class. Not with tensor parallelism or ``cfg_mode="batched"``.
    Left out of a record's options when 1 (records without it keep their bytes).
    ``engine``: what runs the denoising loop: ``diffusers`` (ditproof's own loop on a diffusers
    pipeline) or ``vllm-omni`` (vLLM-Omni's Wan2.2 pipeline with ditproof's plugin; see
    :mod:`ditproof.generation.engines` and docs/vllm-omni.md). Part of the runtime class.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    device: str = "cpu"
    dtype: DType = "float32"
    vae_dtype: DType = "float32"
    text_encoder_dtype: DType | None = None
    offload_text_encoder: bool = False
    weights: Literal["native", "fp8-e4m3"] = "native"
    tp_degree: int = Field(default=1, ge=1, le=8)
    cp_degree: int = Field(default=1, ge=1, le=8)
    engine: Literal["diffusers", "vllm-omni"] = "diffusers"
    fuse_projections: bool = False
    fuse_elementwise: bool = False
    compile: Literal["none", "regional"] = "none"
    ffn_chunks: int = Field(default=1, ge=1, le=64)
    cfg_degree: int = Field(default=1, ge=1, le=2, exclude_if=is_one)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)


class RunOptions(BaseModel):
    """What one run chooses on a loaded model (:func:`ditproof.generation.generate.generate`);
    nothing here outlives the run.

    ``attention_backend``: the experts' attention kernel (:mod:`ditproof.generation.attention`).
    ``cfg_mode``: ``sequential`` runs the conditional and unconditional passes one after the
    other (diffusers' WanPipeline); ``batched`` runs both in one forward of batch 2.
    ``experts``: ``both`` is the model as published; ``high-noise-only`` runs the high-noise
    expert at every step (the malign "one expert only" node).
    ``cache``: diffusers' first-block step cache on both experts for this run (a malign deviation).
    ``shortcut``: a compute-saving malign deviation (:data:`Shortcut`: a low-noise step cache,
    CFG off or the unconditional pass reused for the last steps, one block skipped); None is the
    published algorithm. Like ``experts``, ``cache`` and the load option ``weights``, a validator
    never adopts it.
    ``capture``: the trajectory the run commits to; ``encoding``: the pinned mp4 encoder.
    ``cpu_threads``: PyTorch's intra-op threads for a run on the CPU (None: the process's current
    count). The CPU VAE decode's bytes depend on it (docs/determinism.md), so it is recorded and
    part of a CPU runtime class; a validator runs with the record's count. Ignored on a GPU.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    attention_backend: AttentionBackend = "sdpa"
    cfg_mode: Literal["sequential", "batched"] = "sequential"
    experts: Literal["both", "high-noise-only"] = "both"
    cache: CacheOptions | None = None
    shortcut: Shortcut | None = None
    capture: CaptureOptions = CaptureOptions()
    encoding: VideoEncoding = VideoEncoding()
    cpu_threads: int | None = Field(default=None, ge=1, le=256)


class RuntimeOptions(BaseModel):
    """How a request is run, as a record declares it: the :class:`LoadOptions` of the model it
    ran on and the :class:`RunOptions` of the run, in one flat model (the record's ``options``;
    its fields and their serialization are the record format). :attr:`load` and :attr:`run` give
    the two parts, :meth:`of` joins them. Each field is described in the part it belongs to.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    device: str = "cpu"
    dtype: DType = "float32"
    vae_dtype: DType = "float32"
    text_encoder_dtype: DType | None = None
    attention_backend: AttentionBackend = "sdpa"
    cfg_mode: Literal["sequential", "batched"] = "sequential"
    experts: Literal["both", "high-noise-only"] = "both"
    offload_text_encoder: bool = False
    weights: Literal["native", "fp8-e4m3"] = "native"
    cache: CacheOptions | None = None
    shortcut: Shortcut | None = None
    tp_degree: int = Field(default=1, ge=1, le=8)
    cp_degree: int = Field(default=1, ge=1, le=8)
    capture: CaptureOptions = CaptureOptions()
    encoding: VideoEncoding = VideoEncoding()
    engine: Literal["diffusers", "vllm-omni"] = "diffusers"
    fuse_projections: bool = False
    fuse_elementwise: bool = False
    compile: Literal["none", "regional"] = "none"
    cpu_threads: int | None = Field(default=None, ge=1, le=256)
    ffn_chunks: int = Field(default=1, ge=1, le=64)
    cfg_degree: int = Field(default=1, ge=1, le=2, exclude_if=is_one)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)

    @property
    def load(self) -> LoadOptions:
        """The part applied when the model is loaded."""
        return LoadOptions(**{name: getattr(self, name) for name in LoadOptions.model_fields})

    @property
    def run(self) -> RunOptions:
        """The part the run chooses."""
        return RunOptions(**{name: getattr(self, name) for name in RunOptions.model_fields})

    @classmethod
    def of(cls, load: LoadOptions, run: RunOptions) -> RuntimeOptions:
        """The complete options of ``run`` on a model loaded with ``load``."""
        return cls(
            **{name: getattr(load, name) for name in LoadOptions.model_fields},
            **{name: getattr(run, name) for name in RunOptions.model_fields},
        )
