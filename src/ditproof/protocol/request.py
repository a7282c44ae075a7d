"""The generation request: what a client asks for, with every bound checked.

Defaults are the official Wan2.2-T2V-A14B sampling settings (832×480, 81 frames at 16 fps,
40 steps, guidance 4.0 for the high-noise expert and 3.0 for the low-noise one, boundary 0.875,
flow shift 12). Nothing is ever rounded: a width of 830 is refused, not turned into 832.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ditproof.errors import InvalidInputError, InvalidRequestError

REQUEST_SCHEMA: Literal["ditproof.request/1"] = "ditproof.request/1"

MAX_SEED = 2**63 - 1
"""The largest seed: a non-negative int64 (``ditproof.randomness`` derives seeds below it)."""

MAX_PROMPT_CHARS = 2000
MIN_SIDE, MAX_SIDE = 16, 2048
MAX_FRAMES = 241
MAX_STEPS = 200
MAX_FPS = 120
MAX_GUIDANCE = 50.0
MAX_FLOW_SHIFT = 100.0


class GenerationRequest(BaseModel):
    """A text-to-video request.

    ``guidance_scale`` applies to the high-noise expert (``transformer``, t ≥ boundary) and
    ``guidance_scale_2`` to the low-noise expert (``transformer_2``), as in diffusers'
    ``WanPipeline``. Classifier-free guidance runs when a scale is above 1.0.
    ``seed`` is normally left empty and derived from the request id and public entropy
    (:func:`ditproof.randomness.derive_seed`); an explicit seed is for experiments.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal["ditproof.request/1"] = REQUEST_SCHEMA
    prompt: str
    negative_prompt: str = ""
    width: int = 832
    height: int = 480
    num_frames: int = 81
    fps: int = 16
    num_inference_steps: int = 40
    guidance_scale: float = 4.0
    guidance_scale_2: float = 3.0
    boundary_ratio: float = 0.875
    flow_shift: float = 12.0
    seed: int | None = Field(default=None)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"got {value!r}; allowed: a non-empty text of at most {MAX_PROMPT_CHARS} characters")
        return _text(value)

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt(cls, value: str) -> str:
        return _text(value)

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int) -> int:
        if value % 16 or not MIN_SIDE <= value <= MAX_SIDE:
            raise ValueError(f"got {value}; allowed: a multiple of 16 from {MIN_SIDE} to {MAX_SIDE}")
        return value

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, value: int) -> int:
        if value % 4 != 1 or not 1 <= value <= MAX_FRAMES:
            raise ValueError(f"got {value}; allowed: 4k+1 frames (1, 5, 9, ..., 81, ...) up to {MAX_FRAMES}")
        return value

    @field_validator("fps")
    @classmethod
    def _fps(cls, value: int) -> int:
        if not 1 <= value <= MAX_FPS:
            raise ValueError(f"got {value}; allowed: an integer from 1 to {MAX_FPS}")
        return value

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if not 1 <= value <= MAX_STEPS:
            raise ValueError(f"got {value}; allowed: an integer from 1 to {MAX_STEPS}")
        return value

    @field_validator("guidance_scale", "guidance_scale_2")
    @classmethod
    def _guidance(cls, value: float) -> float:
        return _bounded(value, 0.0, MAX_GUIDANCE)

    @field_validator("boundary_ratio")
    @classmethod
    def _boundary(cls, value: float) -> float:
        return _bounded(value, 0.0, 1.0)

    @field_validator("flow_shift")
    @classmethod
    def _shift(cls, value: float) -> float:
        if not math.isfinite(value) or not 0.0 < value <= MAX_FLOW_SHIFT:
            raise ValueError(f"got {value}; allowed: a finite number above 0 and at most {MAX_FLOW_SHIFT}")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEED:
            raise ValueError(f"got {value}; allowed: an integer from 0 to {MAX_SEED}, or none (derived)")
        return value

    @property
    def latent_frames(self) -> int:
        """Latent frames after the VAE's temporal stride of 4."""
        return (self.num_frames - 1) // 4 + 1

    def latent_shape(self, channels: int = 16, spatial_stride: int = 8) -> tuple[int, int, int, int, int]:
        """Shape ``(1, C, F', H/8, W/8)`` of the initial latent."""
        return (1, channels, self.latent_frames, self.height // spatial_stride, self.width // spatial_stride)

    def num_patches(self, spatial_stride: int = 8, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
        """Transformer tokens per forward pass: ``F'/pt · (H/8)/ph · (W/8)/pw``."""
        t, h, w = self.latent_shape(spatial_stride=spatial_stride)[2:]
        return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


def _text(value: str) -> str:
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"got a text of {len(value)} characters; allowed: at most {MAX_PROMPT_CHARS}")
    if "\x00" in value:
        raise ValueError("got a text with a NUL character; allowed: text without NUL characters")
    surrogate = next((i for i, char in enumerate(value) if "\ud800" <= char <= "\udfff"), None)
    if surrogate is not None:
        # A lone surrogate (JSON "\ud800", or bytes that are not UTF-8 decoded with surrogateescape,
        # as Python does for command-line arguments) cannot be encoded, tokenized or hashed as text.
        raise ValueError(
            f"got a text that is not valid Unicode (a lone surrogate U+{ord(value[surrogate]):04X} at character "
            f"{surrogate}, e.g. bytes that are not UTF-8); allowed: UTF-8 text"
        )
    return value


def _bounded(value: float, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"got {value}; allowed: a finite number from {low} to {high}")
    return value


def parse_request(data: dict[str, Any]) -> GenerationRequest:
    """Builds a :class:`GenerationRequest`, turning every problem into a named, readable message.

    Raises:
        InvalidRequestError: with one ``(field, message)`` pair per invalid field.
    """
    try:
        return GenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise request_error(exc) from None


def parse_request_json(text: str | bytes, source: str = "request") -> GenerationRequest:
    """:func:`parse_request` of a JSON text (a request as a client sent it, or as on chain).

    Raises:
        InvalidInputError: not JSON, or not a JSON object (the message names ``source``).
        InvalidRequestError: an invalid field.
    """
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{source}: not valid JSON ({exc}); allowed: a JSON object of request fields") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: got a JSON {type(data).__name__}; allowed: a JSON object of request fields")
    return parse_request(data)


def request_error(exc: ValidationError) -> InvalidRequestError:
    """Converts pydantic's errors into :class:`InvalidRequestError` (field, value, what is allowed)."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "request"
        if error["type"] == "value_error":
            message = str(error["msg"]).removeprefix("Value error, ")
        elif error["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(GenerationRequest.model_fields))
            message = f"unknown field (value {error['input']!r}); allowed fields: {allowed}"
        elif error["type"] == "missing":
            message = "missing; this field is required"
        else:
            message = f"got {error['input']!r}; {error['msg']}"
        problems.append((field, message))
    return InvalidRequestError(problems)
