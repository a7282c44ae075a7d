"""From a vLLM-Omni-style video request to a ditproof job: parse, check, map, never round.

Form fields arrive as text and are converted by the declared type of each field, strictly
(``"5"`` is an integer, ``"5.0"`` is not). Every problem is collected and reported per field in
one 422.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from ditproof.errors import InvalidInputError, InvalidRequestError
from ditproof.generation.execute import resolve_seed
from ditproof.protocol.request import GenerationRequest, parse_request
from ditproof.randomness import check_entropy, check_request_id
from ditproof.server.errors import ApiError, invalid_fields, pydantic_fields
from ditproof.server.jobs import JobSpec, VideoJob
from ditproof.server.schemas import VideoCreateRequest, VideoError, VideoObject

_INT = re.compile(r"^[+-]?[0-9]{1,19}$")
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
_SECONDS = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6})?$")
_INT_FIELDS = {"width", "height", "num_frames", "fps", "num_inference_steps", "seed"}
_FLOAT_FIELDS = {"guidance_scale", "guidance_scale_2", "boundary_ratio", "flow_shift"}


def from_form(items: list[tuple[str, Any]]) -> VideoCreateRequest:
    """Builds the request from multipart or urlencoded form fields.

    Raises:
        ApiError: 422 for files, repeated fields, text that is not of the field's type, unknown fields.
    """
    data: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, value in items:
        if not isinstance(value, str):
            problems.append((key, "got a file; allowed: text fields only (this node serves text-to-video)"))
        elif key in data:
            problems.append((key, "given more than once; allowed: once"))
        elif key in _INT_FIELDS:
            if _INT.match(value):
                data[key] = int(value)
            else:
                problems.append((key, f"got {value!r}; allowed: an integer (values are never rounded)"))
        elif key in _FLOAT_FIELDS:
            try:
                data[key] = float(value)
            except ValueError:
                problems.append((key, f"got {value!r}; allowed: a number"))
        else:
            data[key] = value
    if problems:
        raise invalid_fields(problems)
    return from_json(data)


def from_json(data: Any) -> VideoCreateRequest:
    """Validates a JSON body.

    Raises:
        ApiError: 422 with one entry per invalid field.
    """
    if not isinstance(data, dict):
        raise invalid_fields([("body", f"got a JSON {type(data).__name__}; allowed: a JSON object")])
    try:
        return VideoCreateRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_fields(pydantic_fields(exc)) from None


def to_job_spec(req: VideoCreateRequest, model: str | None) -> JobSpec:
    """Maps the wire request onto a :class:`GenerationRequest` and resolves its seed.

    ``model`` is the name of the model up on this node (None: none is; the caller refuses the job
    after the fields have been checked).

    Raises:
        ApiError: 422 naming every conflicting or invalid field; 409 for another model.
    """
    request, problems = _generation_request(req)
    for name, check in (("request_id", check_request_id), ("entropy", check_entropy)):
        value = getattr(req, name)
        if value is not None:
            try:
                check(value)
            except InvalidInputError as exc:
                problems.append((name, str(exc).removeprefix(f"{name}: ")))
    if problems:
        raise invalid_fields(_dedupe(problems))
    assert request is not None
    if model is not None and req.model is not None and req.model != model:
        raise ApiError(
            409,
            "conflict",
            f"model: got {req.model!r}; this node serves {model!r} (POST /api/v1/inference/up to change)",
        )
    entropy = check_entropy(req.entropy) if req.entropy is not None else None
    request_id, source = req.request_id, "client"
    if request.seed is None and request_id is None and entropy is None:
        # A stock client (the OpenAI SDK) brings none: the node draws them, as `ditproof generate`
        # does, and the record says the entropy was the node's own.
        request_id, entropy, source = f"node-{uuid.uuid4().hex}", os.urandom(32).hex(), "executor"
    try:
        seed, derivation = resolve_seed(request, request_id, entropy)
    except InvalidInputError as exc:
        field, _, rest = str(exc).partition(": ")
        if field not in VideoCreateRequest.model_fields:
            # "request_id and entropy: ..." names a pair: report the one that is missing.
            field = "entropy" if req.request_id is not None else "request_id" if req.entropy is not None else "seed"
        raise invalid_fields([(field, rest)]) from None
    return JobSpec(
        request=request,
        request_id=request_id,
        entropy=entropy,
        entropy_source=source,  # type: ignore[arg-type]
        seed=seed,
        seed_derivation=derivation,  # type: ignore[arg-type]
        model=model or "",
        user=req.user,
    )


def to_generation_request(req: VideoCreateRequest) -> GenerationRequest:
    """The :class:`GenerationRequest` of a wire request (size, seconds and defaults resolved).

    Raises:
        ApiError: 422 naming every conflicting or invalid field.
    """
    request, problems = _generation_request(req)
    if problems:
        raise invalid_fields(_dedupe(problems))
    assert request is not None
    return request


def _generation_request(req: VideoCreateRequest) -> tuple[GenerationRequest | None, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    width, height = req.width, req.height
    if req.size is not None:
        match = _SIZE.match(req.size)
        if match is None:
            problems.append(("size", f"got {req.size!r}; allowed: WIDTHxHEIGHT, e.g. '832x480'"))
        else:
            size_w, size_h = int(match.group(1)), int(match.group(2))
            for name, given, implied in (("width", req.width, size_w), ("height", req.height, size_h)):
                if given is not None and given != implied:
                    problems.append(
                        (name, f"got {given}, but size {req.size!r} says {implied}; allowed: equal values, or only one")
                    )
            width, height = size_w, size_h
    defaults = GenerationRequest.model_fields
    fps = req.fps if req.fps is not None else defaults["fps"].default
    num_frames = req.num_frames
    if req.seconds is not None:
        frames = _frames_from_seconds(req.seconds, fps, problems)
        if frames is not None:
            if num_frames is not None and num_frames != frames:
                problems.append(
                    (
                        "num_frames",
                        f"got {num_frames}, but seconds {req.seconds!r} at {fps} fps means {frames} frames "
                        "(seconds × fps + 1); allowed: agreeing values, or only one",
                    )
                )
            num_frames = frames
    fields: dict[str, Any] = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "width": width,
        "height": height,
        "num_frames": num_frames,
        "fps": req.fps,
        "num_inference_steps": req.num_inference_steps,
        "guidance_scale": req.guidance_scale,
        "guidance_scale_2": req.guidance_scale_2,
        "boundary_ratio": req.boundary_ratio,
        "flow_shift": req.flow_shift,
        "seed": req.seed,
    }
    request: GenerationRequest | None = None
    try:
        request = parse_request({k: v for k, v in fields.items() if v is not None})
    except InvalidRequestError as exc:
        problems.extend(exc.errors)
    return request, problems


def _frames_from_seconds(seconds: object, fps: int, problems: list[tuple[str, str]]) -> int | None:
    """``seconds × fps + 1`` frames, exactly; None (and a problem) when it is not a whole 4k+1."""
    text = str(seconds)
    if (
        isinstance(seconds, bool)
        or (isinstance(seconds, float) and not math.isfinite(seconds))
        or not _SECONDS.match(text)
    ):
        problems.append(("seconds", f"got {seconds!r}; allowed: a positive number such as '5' or '0.25'"))
        return None
    intervals = Fraction(text) * fps
    if intervals <= 0 or intervals.denominator != 1:
        problems.append(
            (
                "seconds",
                f"got {seconds!r}; at {fps} fps that is {float(intervals):g} frame intervals; allowed: a whole, positive number",
            )
        )
        return None
    frames = int(intervals) + 1
    if frames % 4 != 1:
        problems.append(
            (
                "seconds",
                f"got {seconds!r}: {int(intervals)} intervals at {fps} fps give {frames} frames; allowed: seconds × fps "
                "a multiple of 4 (Wan needs 4k+1 frames; nothing is rounded)",
            )
        )
        return None
    return frames


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))


def seconds_text(num_frames: int, fps: int) -> str:
    """The clip length ``(num_frames - 1) / fps`` as text ('5', '0.25')."""
    value = Fraction(num_frames - 1, fps)
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


def video_object(job: VideoJob) -> VideoObject:
    """The wire form of a job."""
    request = job.spec.request
    return VideoObject(
        id=job.id,
        model=job.spec.model,
        prompt=request.prompt,
        status=job.status,
        progress=job.progress,
        created_at=int(job.created_at),
        completed_at=None if job.completed_at is None else int(job.completed_at),
        size=f"{request.width}x{request.height}",
        seconds=seconds_text(request.num_frames, request.fps),
        error=VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        width=request.width,
        height=request.height,
        num_frames=request.num_frames,
        fps=request.fps,
        num_inference_steps=request.num_inference_steps,
        seed=job.spec.seed,
        seed_derivation=job.spec.seed_derivation,
        request_id=job.spec.request_id,
        entropy=job.spec.entropy,
        attempts=job.attempts,
        record_sha256=job.record_sha256,
        video_sha256=job.video_sha256,
    )
