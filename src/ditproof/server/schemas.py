"""Wire models of the HTTP API (request and response bodies).

Requests are strict (``extra="forbid"``, no coercion: ``"5"`` is not an integer in JSON, ``5.0``
is not an integer anywhere); responses are what the routes return. Field names of the video
API follow vLLM-Omni's (``/v1/videos``); ``request_id`` and ``entropy`` are ditproof extensions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ditproof.server.jobs import JobStatus


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class VideoCreateRequest(_Strict):
    """``POST /v1/videos`` and ``/v1/videos/sync`` (JSON body or form fields of the same names).

    Size: ``size`` ("WxH") or ``width``/``height`` (both forms may be given only if they agree).
    Length: ``num_frames`` (4k+1) or ``seconds`` (frames = seconds × fps + 1, which must be 4k+1;
    nothing is rounded). Seed: ``request_id`` + ``entropy`` (the seed is derived; a ``seed`` given
    too must equal it), or an explicit ``seed`` (an experiment record).
    """

    prompt: str = Field(description="What the video shows.")
    negative_prompt: str | None = Field(default=None, description="What to avoid (default: empty).")
    model: str | None = Field(default=None, description="Must name the loaded model if given.")
    size: str | None = Field(default=None, description="WIDTHxHEIGHT, e.g. '832x480'.")
    width: int | None = None
    height: int | None = None
    num_frames: int | None = Field(default=None, description="4k+1 frames (default 81).")
    fps: int | None = Field(default=None, description="Frames per second (default 16).")
    seconds: str | int | float | None = Field(
        default=None, description="Clip length: (num_frames - 1) / fps, e.g. '5' at 16 fps is 81 frames."
    )
    num_inference_steps: int | None = None
    guidance_scale: float | None = Field(default=None, description="CFG scale of the high-noise expert.")
    guidance_scale_2: float | None = Field(default=None, description="CFG scale of the low-noise expert.")
    boundary_ratio: float | None = None
    flow_shift: float | None = None
    seed: int | None = Field(default=None, description="Explicit seed (experiments), or the derived one.")
    request_id: str | None = Field(default=None, description="ditproof extension: the network's request id.")
    entropy: str | None = Field(default=None, description="ditproof extension: public randomness (hex).")
    user: str | None = Field(default=None, max_length=256, description="Caller's tag (stored, not used).")


class VideoError(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class VideoObject(BaseModel):
    """A video job (OpenAI/vLLM-Omni shape, plus ditproof's fields)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    prompt: str
    status: JobStatus
    progress: int
    created_at: int
    completed_at: int | None
    size: str
    seconds: str
    error: VideoError | None
    media_type: Literal["video/mp4"] = "video/mp4"
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    seed: int
    seed_derivation: str
    request_id: str | None
    entropy: str | None
    attempts: int
    record_sha256: str | None
    video_sha256: str | None


class VideoList(BaseModel):
    """``GET /v1/videos``."""

    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    """``DELETE /v1/videos/{id}``."""

    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


class QueueInfo(BaseModel):
    """Jobs and tasks waiting for the accelerator."""

    queued: int
    in_progress: int
    pending_tasks: int
    capacity: int


class StateResponse(BaseModel):
    """``GET /api/v1/state`` (Gonka's fields first, then ditproof's)."""

    state: Literal["POW", "INFERENCE", "TRAIN", "STOPPED"]
    version: str
    poc_status: str | None
    inference_healthy: bool | None
    loaded_model: str | None
    loading: bool
    last_error: str | None
    queue: QueueInfo


class InferenceUpRequest(_Strict):
    """``POST /api/v1/inference/up`` (Gonka's shape)."""

    model: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    additional_args: list[str] = Field(default_factory=list, max_length=32)


class StatusResponse(BaseModel):
    """``{"status": "OK"}`` answers of the management API, with what happened."""

    status: Literal["OK"] = "OK"
    state: str
    detail: str


class HealthResponse(BaseModel):
    """``/health`` and ``/livez``: the process and its worker are alive."""

    status: Literal["healthy", "unhealthy"]
    service_state: str
    worker_alive: bool
    uptime_s: float


class ReadinessResponse(BaseModel):
    """``/readyz``: the node can take inference requests now."""

    ready: bool
    state: str


ValidationMode = Literal["full", "checkpoints", "spot-check", "auto"]
"""How ``POST /api/v1/validate`` regenerates: the whole video; every segment between the
executor's checkpoints; ``spot_segments`` of them per expert phase, chosen with
``validator_entropy``; or, by default, ``auto``: the mode that suits the classes compared
(docs/validation.md)."""
MAX_SPOT_SEGMENTS = 64


def check_spot_fields(mode: str, spot_segments: int | None, validator_entropy: str | None) -> None:
    """``spot_segments`` and ``validator_entropy`` belong to a spot check only."""
    if mode != "spot-check":
        given = [
            n for n, v in (("spot_segments", spot_segments), ("validator_entropy", validator_entropy)) if v is not None
        ]
        if given:
            raise ValueError(f"{given[0]}: given with mode {mode!r}; allowed: only with mode 'spot-check'")


class ValidateReference(_Strict):
    """``POST /api/v1/validate`` with JSON: validate a video already in this node's store.

    ``record`` defaults to the record stored with the video; give one to check a record received
    from elsewhere against the stored video. ``request``: the generation request the client made
    (as sent, or as on chain); the record's copy of it must be equal, checked before anything is
    regenerated. ``mode``: see :data:`ValidationMode`; the checkpoint modes read the executor's
    checkpoint files stored with the video.
    """

    video_id: str = Field(pattern=r"^video_[0-9a-f]{32}$")
    record: dict[str, Any] | None = None
    request: dict[str, Any] | None = None
    mode: ValidationMode = "auto"
    spot_segments: int | None = Field(default=None, ge=1, le=MAX_SPOT_SEGMENTS)
    validator_entropy: str | None = None

    @model_validator(mode="after")
    def _spot_only(self) -> ValidateReference:
        check_spot_fields(self.mode, self.spot_segments, self.validator_entropy)
        return self
