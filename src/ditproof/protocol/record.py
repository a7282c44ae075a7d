"""The inference record: everything a validator needs to check a generated video.

One JSON file per generation (``record.json``), schema ``ditproof.record/1``, written
canonically (sorted keys). Timings are the only part that differs between two honest runs of
the same request on the same runtime.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ditproof.hashing import atomic_write_bytes, canonical_json, sha256_bytes
from ditproof.protocol.files import load_model_file
from ditproof.protocol.options import RuntimeOptions, VideoEncoding, is_one
from ditproof.protocol.request import GenerationRequest

RECORD_SCHEMA: Literal["ditproof.record/1"] = "ditproof.record/1"
_CURRENT_KEYS = (re.compile(rb'"yuv"\s*:'), re.compile(rb'"schedule"\s*:'))
"""Keys of fields added to records over time: a record with all of them is parsed once (a JSON
string value is never followed by a colon, so a prompt cannot fake a key)."""

VIDEO_FILE = "video.mp4"
RECORD_FILE = "record.json"
LATENTS_DIR = "latents"
"""A generation's folder: the video, its record, and the trajectory checkpoints named in it."""
_SHA256 = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeFingerprint(_Model):
    """What ran the generation: hardware, software, kernels, model and solver."""

    device_type: Literal["cpu", "cuda"]
    device_name: str
    device_count: int
    sm_count: int | None = None
    compute_capability: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    cudnn_version: int | None = None
    cpu_arch: str
    cpu_capability: str
    # PyTorch's intra-op threads of a CPU run (None on a GPU, and in records made before it was
    # recorded): the CPU VAE decode's bytes depend on it.
    cpu_threads: int | None = None
    # A CPU run's kernel probe (ditproof.generation.runtime.cpu_kernels_probe): eight hex digits
    # naming the code paths the processor's libraries chose; None on a GPU and in records made
    # before 2026-12-06.
    cpu_kernels: str | None = None
    # Kernel libraries of a GPU run besides torch's own version: Triton (compiled and fused
    # kernels) and cuBLAS (the matrix products); None on the CPU or when not installed.
    triton: str | None = None
    cublas: str | None = None
    python: str
    torch: str
    diffusers: str
    transformers: str
    av: str
    ditproof: str
    ftfy: bool
    engine: str = "diffusers"
    # The engine's own version when it is not diffusers (e.g. vllm-omni 0.30.0); see ditproof.generation.engines.
    engine_version: str | None = None
    attention_backend: str
    # The versions of a kernel library outside torch that the attention backend runs
    # (flash-attn-4: "flash-attn-4==X,nvidia-cutlass-dsl==Y,tile=MxN,cross-attention=cudnn";
    # flash-attn-3: "fa3-fwd==X,cross-attention=cudnn"); None for torch's own kernels.
    attention_library: str | None = None
    dtype: str
    vae_dtype: str
    text_encoder_dtype: str
    cfg_mode: str
    experts: str
    weights: str = "native"
    cache: str | None = None
    # A compute-saving malign deviation (ditproof.protocol.options.shortcut_label); None: none.
    shortcut: str | None = None
    tp_degree: int = 1
    cp_degree: int = 1
    # CFG's two passes on two halves of the ranks (ditproof.models.parallel); left out when 1.
    cfg_degree: int = Field(default=1, exclude_if=is_one)
    ffn_chunks: int = 1
    fuse_projections: bool = False
    fuse_elementwise: bool = False
    # Which steps fuse_elementwise fused (ditproof.kernels.fused.STEPS), e.g.
    # "gelu-epilogue,norm-rope,norm-modulate"; None in records made before the list was recorded.
    elementwise_steps: str | None = None
    compile: str = "none"
    model_preset: str
    model_revision: str = Field(pattern=_SHA256)
    solver: str
    encoding: VideoEncoding


class NoiseInfo(_Model):
    """The initial latent noise: drawn on the CPU from the seed (see ``ditproof.randomness``)."""

    shape: tuple[int, ...]
    dtype: Literal["float32"] = "float32"
    derivation: str
    sha256: str = Field(pattern=_SHA256)


class CheckpointRef(_Model):
    """A saved latent: ``step`` is the number of denoising steps applied before it."""

    name: str
    step: int
    file: str
    sha256: str = Field(pattern=_SHA256)
    tensor_sha256: str = Field(pattern=_SHA256)
    shape: tuple[int, ...]


class TrajectoryFingerprints(_Model):
    """Per-step JL projections of the latent after each denoising step (``values[i]``: step i)."""

    derivation: str
    dim: int
    projection_seed: int
    values: list[list[float]]


class PhaseTimings(_Model):
    """Wall-clock seconds per phase (device synchronized at each boundary)."""

    load_s: float = 0.0
    text_encode_s: float
    high_noise_s: float
    low_noise_s: float
    high_noise_steps: int
    low_noise_steps: int
    forward_passes: int
    vae_decode_s: float
    encode_s: float
    """The mp4 encode's time after the VAE decode ended (it runs beside the decode; records made
    before 2026-12-06: the whole encode, after the decode)."""
    total_s: float


class VideoInfo(_Model):
    """The encoded video file."""

    # A file name beside the record, never a path: a validator opens it relative to the record's
    # folder, so "../../etc/passwd" must not be expressible.
    file: str = Field(default="video.mp4", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
    sha256: str = Field(pattern=_SHA256)
    size_bytes: int
    width: int
    height: int
    num_frames: int
    fps: int
    encoding: VideoEncoding


class ModelInfo(_Model):
    """Which weights ran: a preset name and the revision hash of its weights and configs."""

    preset: str
    revision: str = Field(pattern=_SHA256)
    text_max_length: int


class InferenceRecord(_Model):
    """The executor's record of one generation."""

    schema_version: Literal["ditproof.record/1"] = RECORD_SCHEMA
    request_id: str | None
    entropy: str | None
    # Who chose the entropy: "client" (the requester or the network: public randomness such as a
    # block hash) or "executor" (drawn by the executor itself, e.g. for a client that brought none;
    # a network that needs seeds no executor can choose refuses those). None: explicit-seed
    # experiment records, and records made before the field.
    entropy_source: Literal["client", "executor"] | None = None
    request: GenerationRequest
    seed: int
    seed_derivation: Literal["ditproof-seed-v1", "explicit"]
    noise: NoiseInfo
    model: ModelInfo
    options: RuntimeOptions
    runtime: RuntimeFingerprint
    runtime_class: str
    video: VideoInfo
    checkpoints: list[CheckpointRef]
    fingerprints: TrajectoryFingerprints | None
    timings: PhaseTimings

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> InferenceRecord:
        """Validates a JSON record; one made before ``VideoEncoding.yuv`` existed is read with the
        colour conversion it was encoded with (``bt601-float64``), one made before
        ``CaptureOptions.schedule`` existed with no checkpoint schedule (it committed only to the
        checkpoints it lists)."""
        data_bytes = json_data.encode() if isinstance(json_data, str) else bytes(json_data)
        if all(key.search(data_bytes) for key in _CURRENT_KEYS):  # a record with both fields: parsed once
            return super().model_validate_json(json_data, **kwargs)
        try:
            data = json.loads(json_data)
        except ValueError:  # not JSON, or not UTF-8: pydantic's own error says so
            data = None
        if isinstance(data, dict) and _upgrade(data):
            json_data = json.dumps(data)
        return super().model_validate_json(json_data, **kwargs)

    def canonical(self) -> bytes:
        """Canonical JSON bytes of the record."""
        return canonical_json(self.model_dump(mode="json"))

    def sha256(self) -> str:
        """sha256 of the canonical JSON: the record's identity."""
        return sha256_bytes(self.canonical())

    def content_sha256(self) -> str:
        """sha256 of the record without its timings: equal for two honest identical runs."""
        data = self.model_dump(mode="json", exclude={"timings"})
        return sha256_bytes(canonical_json(data))

    def save(self, path: str | Path) -> None:
        """Writes the record atomically as canonical JSON (with a trailing newline)."""
        atomic_write_bytes(path, self.canonical() + b"\n")

    @classmethod
    def load(cls, path: str | Path) -> InferenceRecord:
        """Reads and validates a record file.

        Raises:
            InvalidInputError: if the file is missing, not JSON, or not a valid record.
        """
        return load_model_file(cls, path, "record", RECORD_SCHEMA)


def _upgrade(data: dict[str, Any]) -> bool:
    """Fills in what records made before a field existed meant by its absence: ``yuv:
    bt601-float64`` in their encodings, ``schedule: null`` in their capture options; True when
    something was added."""
    changed = False
    for key in ("options", "runtime", "video"):
        encoding = data.get(key, {}).get("encoding") if isinstance(data.get(key), dict) else None
        if isinstance(encoding, dict) and "yuv" not in encoding:
            encoding["yuv"] = "bt601-float64"
            changed = True
    capture = data.get("options", {}).get("capture") if isinstance(data.get("options"), dict) else None
    if isinstance(capture, dict) and "schedule" not in capture:
        capture["schedule"] = None
        changed = True
    return changed
