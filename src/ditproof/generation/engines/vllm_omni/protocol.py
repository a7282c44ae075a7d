"""What ditproof and its vLLM-Omni plugin exchange: the job, the engine's identity, the capture.

A ditproof job travels inside vLLM-Omni's own request, as ``extra_params["ditproof"]`` over HTTP
(vLLM-Omni merges ``extra_params`` into the sampling parameters' ``extra_args``) or
``extra_args["ditproof"]`` in-process. The plugin's pipeline (``ditproof_vllm_omni.pipeline``,
in the worker) writes what it captured into ``$DITPROOF_OMNI_ARTIFACTS/<job_id>/``:

    capture.json           :class:`CaptureBundle` (canonical JSON)
    frames.npy             the decoded uint8 frames ``(F, H, W, 3)``
    video.mp4              the same frames encoded with ditproof's pinned settings (also the
                           bytes vLLM-Omni serves for the request)
    latents/*.safetensors  the trajectory checkpoints (latent + solver state), as the executor
                           writes them

and, once per worker start, ``$DITPROOF_OMNI_ARTIFACTS/engine.json`` (:class:`EngineInfo`).
The folder is on the node's own disk: ditproof's executor runs beside its vLLM-Omni server and
talks to it over loopback (docs/vllm-omni.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_bytes, canonical_json
from ditproof.protocol.options import CaptureOptions, VideoEncoding
from ditproof.protocol.poc import PocParams
from ditproof.protocol.request import GenerationRequest

ARTIFACTS_ENV = "DITPROOF_OMNI_ARTIFACTS"
"""Environment variable naming the folder the worker plugin writes into (server and client)."""

EXTRA_KEY = "ditproof"
"""Key of the ditproof job in vLLM-Omni's ``extra_params`` / ``extra_args``."""

ENGINE_FILE = "engine.json"
CAPTURE_FILE = "capture.json"
FRAMES_FILE = "frames.npy"
VIDEO_FILE = "video.mp4"
POC_FILE = "poc.json"

M = TypeVar("M", bound=BaseModel)

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerateJob(_Model):
    """A generation: the request, its seed, and what to capture and how to encode."""

    schema_version: Literal["ditproof.omni-job/1"] = "ditproof.omni-job/1"
    kind: Literal["generate"] = "generate"
    job_id: str
    request: GenerationRequest
    seed: int = Field(ge=0, le=2**63 - 1)
    dtype: Literal["float32", "bfloat16", "float16"]
    vae_dtype: Literal["float32", "bfloat16", "float16"]
    text_encoder_dtype: Literal["float32", "bfloat16", "float16"]
    capture: CaptureOptions
    encoding: VideoEncoding

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str) -> str:
        return check_job_id(value)


class PocJob(_Model):
    """Proof-of-Compute on the served experts: nonces of one round."""

    schema_version: Literal["ditproof.omni-job/1"] = "ditproof.omni-job/1"
    kind: Literal["poc"] = "poc"
    job_id: str
    params: PocParams
    block_hash: str
    public_key: str
    nonces: list[int] = Field(min_length=1, max_length=100_000)
    batch_size: int = Field(default=16, ge=1, le=1024)

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str) -> str:
        return check_job_id(value)


class EngineInfo(_Model):
    """The worker's software and hardware: what the runtime fingerprint needs from the engine side."""

    schema_version: Literal["ditproof.omni-engine/1"] = "ditproof.omni-engine/1"
    engine: Literal["vllm-omni"] = "vllm-omni"
    engine_version: str
    vllm: str
    plugin: str
    torch: str
    diffusers: str
    transformers: str
    av: str
    python: str
    device_type: Literal["cpu", "cuda"]
    device_name: str
    device_count: int
    sm_count: int | None = None
    compute_capability: str | None = None
    cuda_version: str | None = None
    cpu_arch: str
    cpu_capability: str
    platform: str
    attention_backend: str
    pipeline: str
    solver: str
    model_path: str
    model_revision: str = Field(pattern=r"^[0-9a-f]{64}$")


class CheckpointEntry(_Model):
    """One captured latent: its name, step count and file (relative to the job folder)."""

    name: str
    step: int
    file: str


class CaptureBundle(_Model):
    """What the worker captured for one generation job."""

    schema_version: Literal["ditproof.omni-capture/1"] = "ditproof.omni-capture/1"
    job_id: str
    request_id: str
    noise_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    noise_shape: tuple[int, ...]
    switch_step: int | None
    checkpoints: list[CheckpointEntry]
    fingerprints: list[list[float]]
    timings: dict[str, float]
    steps: dict[str, int]
    solver: str
    dtype: str
    video_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    engine: EngineInfo


def check_job_id(value: str) -> str:
    """Returns ``value`` if it is a safe folder name: 1–128 of ``A-Z a-z 0-9 . _ -``, not starting with ``.``."""
    if not isinstance(value, str) or not _JOB_ID.match(value):
        raise InvalidInputError(
            f"job_id: got {value!r}; allowed: 1 to 128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return value


def artifacts_root(explicit: str | Path | None = None) -> Path:
    """The artifacts folder: ``explicit``, else ``$DITPROOF_OMNI_ARTIFACTS``.

    Raises:
        InvalidInputError: when neither is set.
    """
    import os

    value = explicit if explicit is not None else os.environ.get(ARTIFACTS_ENV)
    if not value:
        raise InvalidInputError(
            f"{ARTIFACTS_ENV}: not set; allowed: the folder the vLLM-Omni server's ditproof plugin writes into "
            "(set the same folder for the server and for ditproof)"
        )
    return Path(value)


def write_model(path: Path, model: BaseModel) -> None:
    """Writes a model as canonical JSON, atomically."""
    atomic_write_bytes(path, canonical_json(model.model_dump(mode="json")) + b"\n")


def read_model(path: Path, cls: type[M]) -> M:
    """Reads and validates one of this module's files; errors name the file and the first problem."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return cls.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise InvalidInputError(f"{path}: not a valid {cls.__name__} ({where}: {first['msg']})") from None
