"""``POST /api/v1/validate``: a record and a video in, a verdict out (docs/validation.md).

Two forms:

* multipart: ``record`` (the record JSON, as a file or a text field) and ``video`` (the mp4
  file), or ``video_id`` instead of ``video`` for a video already in this node's store;
* JSON: ``{"video_id": ..., "record": {...}?}``: validate a stored video against its own record
  or against the given one.

Both forms take an optional ``request``: the generation request the client made. The record's
copy must equal it (check ``request``, the first one), or an executor could record a cheaper
request than the one it was paid for and be checked against that.

Both forms take a ``mode`` (``auto``, the default, ``full``, ``checkpoints``, ``spot-check``; with
``spot_segments`` and ``validator_entropy`` for a spot check), as ``ditproof validate --mode``. The
checkpoint modes re-run segments from the executor's checkpoint files: those stored with a
``video_id``, or in a multipart upload one ``checkpoint`` file part per file the record names (the
part's file name is the file's base name, e.g. ``step_005.safetensors``). ``auto`` takes them too;
``full`` refuses them.

The regeneration runs on the worker, ahead of waiting jobs, never beside a generation.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ditproof.errors import InvalidInputError
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import GenerationRequest, parse_request, parse_request_json
from ditproof.protocol.verdict import Verdict
from ditproof.randomness import check_entropy
from ditproof.server.errors import ApiError, conflict, invalid, invalid_fields, pydantic_fields
from ditproof.server.forms import read_multipart
from ditproof.server.jobs import is_job_id
from ditproof.server.routes.deps import WorkerDep
from ditproof.server.routes.videos import ERRORS, _completed
from ditproof.server.schemas import MAX_SPOT_SEGMENTS, ValidateReference, ValidationMode, check_spot_fields
from ditproof.server.worker import GpuWorker
from ditproof.validation.allowed import AllowedClasses
from ditproof.validation.delegation import ValidatorRegistry
from ditproof.validation.policy import ThresholdPolicy

router = APIRouter(prefix="/api/v1", tags=["validation"])


@dataclass(frozen=True)
class ValidationSetup:
    """What the operator configured for step 6, delegation and the allowed classes (see
    ``ServerConfig``)."""

    policy: ThresholdPolicy | None
    validators: ValidatorRegistry | None
    allowed: AllowedClasses | None = None


VALIDATE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ValidateReference"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["record"],
                    "properties": {
                        "record": {"type": "string", "format": "binary", "description": "record.json"},
                        "video": {"type": "string", "format": "binary", "description": "the mp4"},
                        "video_id": {"type": "string", "pattern": r"^video_[0-9a-f]{32}$"},
                        "request": {"type": "string", "description": "the client's request JSON (optional)"},
                        "mode": {
                            "type": "string",
                            "enum": ["full", "checkpoints", "spot-check", "auto"],
                            "default": "auto",
                        },
                        "spot_segments": {"type": "integer", "minimum": 1, "maximum": MAX_SPOT_SEGMENTS},
                        "validator_entropy": {"type": "string", "description": "16-256 hex digits"},
                        "checkpoint": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "the executor's checkpoint files (with an uploaded video; not in mode full)",
                        },
                    },
                }
            },
        },
    }
}


def _parse_record(data: Any) -> InferenceRecord:
    try:
        if isinstance(data, str | bytes):
            return InferenceRecord.model_validate_json(data)
        return InferenceRecord.model_validate(data)
    except ValidationError as exc:
        raise invalid_fields(
            [(f"record.{f}" if f != "body" else "record", m) for f, m in pydantic_fields(exc)]
        ) from None


def _parse_request(data: str | bytes | dict[str, Any]) -> GenerationRequest:
    try:
        return parse_request(data) if isinstance(data, dict) else parse_request_json(data)
    except InvalidInputError as exc:
        raise invalid("request", str(exc).removeprefix("request: ")) from None


@dataclass
class Inputs:
    """What one validation needs: the record, the video bytes, the folder of the executor's
    checkpoint files (a stored video's, or a scratch folder of uploaded ones), the client's request
    when given, and the mode."""

    record: InferenceRecord
    video: bytes
    folder: Path | None
    expected: GenerationRequest | None
    mode: ValidationMode = "auto"
    spot_segments: int | None = None
    validator_entropy: str | None = None
    scratch: list[Path] = field(default_factory=list)  # removed when the validation is done

    def cleanup(self) -> None:
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)


MODES: tuple[ValidationMode, ...] = ("full", "checkpoints", "spot-check", "auto")
FORM_FIELDS = ("record", "video", "video_id", "request", "mode", "spot_segments", "validator_entropy", "checkpoint")
MAX_CHECKPOINT_FILES = 64


def _stored(worker: GpuWorker, video_id: str) -> tuple[InferenceRecord, bytes, Path]:
    job = _completed(worker, video_id)
    record = worker.artifacts.record(job.id)
    folder = worker.artifacts.path(job.id)
    return record, (folder / record.video.file).read_bytes(), folder


def _form_mode(fields: dict[str, Any]) -> tuple[ValidationMode, int | None, str | None]:
    """``mode``, ``spot_segments`` and ``validator_entropy`` of a multipart form, checked."""
    values: dict[str, str | None] = {}
    for name in ("mode", "spot_segments", "validator_entropy"):
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(name, "got a file; allowed: a text field")
        values[name] = value
    mode = values["mode"] or "auto"
    if mode not in MODES:
        raise invalid("mode", f"got {mode!r}; allowed: {', '.join(MODES)}")
    spot_segments: int | None = None
    if values["spot_segments"] is not None:
        text = values["spot_segments"]
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_SPOT_SEGMENTS:
            raise invalid("spot_segments", f"got {text!r}; allowed: an integer from 1 to {MAX_SPOT_SEGMENTS}")
        spot_segments = int(text)
    try:
        check_spot_fields(mode, spot_segments, values["validator_entropy"])
    except ValueError as exc:
        name, _, message = str(exc).partition(": ")
        raise invalid(name, message) from None
    return mode, spot_segments, values["validator_entropy"]


async def _uploaded_checkpoints(record: InferenceRecord, uploads: list[Any], scratch_root: Path, max_size: int) -> Path:
    """Writes the uploaded checkpoint files where the record names them, under a new scratch folder.

    Each part's file name must be the base name of one file the record's checkpoints name, once.
    Files the record names but the upload lacks stay missing: the validation says which.
    """
    by_name: dict[str, str] = {}
    for ref in record.checkpoints:
        path = PurePosixPath(ref.file)
        if ref.file and not path.is_absolute() and ".." not in path.parts and "\\" not in ref.file:
            by_name.setdefault(path.name, ref.file)
    if len(uploads) > MAX_CHECKPOINT_FILES:
        raise invalid("checkpoint", f"got {len(uploads)} files; allowed: at most {MAX_CHECKPOINT_FILES}")
    scratch_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".validate-", dir=scratch_root))
    seen: set[str] = set()
    try:
        for upload in uploads:
            if not isinstance(upload, UploadFile):
                raise invalid("checkpoint", "got a text field; allowed: checkpoint files as file uploads")
            name = upload.filename or ""
            if name not in by_name:
                allowed = ", ".join(sorted(by_name)) or "none (the record names no checkpoint files)"
                raise invalid("checkpoint", f"got file {name!r}; allowed: the record's checkpoint files: {allowed}")
            if name in seen:
                raise invalid("checkpoint", f"got file {name!r} twice; allowed: each once")
            seen.add(name)
            target = folder / by_name[name]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(await upload.read(max_size))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


async def _inputs(request: Request, worker: GpuWorker) -> Inputs:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid_fields([("body", f"not valid JSON ({exc})")]) from None
        try:
            ref = ValidateReference.model_validate(body)
        except ValidationError as exc:
            raise invalid_fields(pydantic_fields(exc)) from None
        expected = _parse_request(ref.request) if ref.request is not None else None
        record, video, folder = _stored(worker, ref.video_id)
        if ref.record is not None:
            record = _parse_record(ref.record)
        return Inputs(record, video, folder, expected, ref.mode, ref.spot_segments, ref.validator_entropy)
    if content_type != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content-type: got {content_type or 'none'!r}; allowed: multipart/form-data, application/json",
        )
    max_size = worker.config.max_upload_bytes
    form = await read_multipart(request, max_files=3 + MAX_CHECKPOINT_FILES, max_fields=12, max_part_size=1024 * 1024)
    try:
        items = form.multi_items()
        fields = dict(items)
        unknown = sorted(set(fields) - set(FORM_FIELDS))
        if unknown:
            raise invalid_fields([(name, f"unknown field; allowed: {', '.join(FORM_FIELDS)}") for name in unknown])
        counts = Counter(name for name, _ in items)
        repeated = sorted(name for name, count in counts.items() if count > 1 and name != "checkpoint")
        if repeated:
            raise invalid_fields([(name, "given more than once; allowed: once") for name in repeated])
        mode, spot_segments, entropy = _form_mode(fields)
        raw_record = fields.get("record")
        if raw_record is None:
            raise invalid("record", "missing; allowed: the record JSON as a file or a text field")
        record_data = await raw_record.read(max_size) if isinstance(raw_record, UploadFile) else raw_record
        record = _parse_record(record_data)
        raw_request = fields.get("request")
        expected = None
        if raw_request is not None:
            request_data = await raw_request.read(max_size) if isinstance(raw_request, UploadFile) else raw_request
            expected = _parse_request(request_data)
        video_field, video_id = fields.get("video"), fields.get("video_id")
        if (video_field is None) == (video_id is None):
            raise invalid("video", "allowed: exactly one of a 'video' file or a 'video_id'")
        uploads = [value for name, value in items if name == "checkpoint"]
        if uploads and (video_id is not None or mode == "full"):
            why = "with a video_id (its stored checkpoints are used)" if video_id is not None else "in mode 'full'"
            raise invalid("checkpoint", f"given {why}; allowed: with an uploaded video, in any mode but 'full'")
        if video_id is not None:
            if not isinstance(video_id, str) or not is_job_id(video_id):
                raise invalid("video_id", f"got {video_id!r}; allowed: video_ followed by 32 hex digits")
            _, video, folder = _stored(worker, video_id)
            return Inputs(record, video, folder, expected, mode, spot_segments, entropy)
        if not isinstance(video_field, UploadFile):
            raise invalid("video", "got a text field; allowed: the mp4 as a file upload")
        video = await video_field.read(max_size)
        if not uploads:
            return Inputs(record, video, None, expected, mode, spot_segments, entropy)
        scratch = await _uploaded_checkpoints(record, uploads, worker.config.data_dir / "validate-uploads", max_size)
        return Inputs(record, video, scratch, expected, mode, spot_segments, entropy, scratch=[scratch])
    finally:
        await form.close()


@router.post("/validate", response_model=Verdict, responses=ERRORS, openapi_extra=VALIDATE_OPENAPI)
async def validate_video(request: Request, worker: WorkerDep) -> Verdict:
    """Validate a video against its inference record by regenerating it (or segments of it) on this node."""
    inputs = await _inputs(request, worker)
    if inputs.validator_entropy is not None:
        try:
            check_entropy(inputs.validator_entropy)
        except InvalidInputError as exc:
            inputs.cleanup()
            raise invalid("validator_entropy", str(exc).removeprefix("entropy: ")) from None
    setup: ValidationSetup = request.app.state.validation
    record = inputs.record

    def run(model: LoadedModel, options: RuntimeOptions) -> Verdict:
        from ditproof.api import validate, validate_auto, validate_checkpoints, validate_spot_check

        if model.preset != record.model.preset:
            raise conflict(
                f"record.model.preset: got {record.model.preset!r}; this node has {model.preset!r} loaded "
                "(bring that model up, or ask a node that serves it)"
            )
        common: dict[str, Any] = {
            "policy": setup.policy,
            "validators": setup.validators,
            "allowed": setup.allowed,
            "artifacts_dir": inputs.folder,
            "expected_request": inputs.expected,
        }
        if inputs.mode == "spot-check":
            k = inputs.spot_segments or 1
            return validate_spot_check(
                record, inputs.video, model, k, inputs.validator_entropy, options.device, **common
            )
        if inputs.mode == "checkpoints":
            return validate_checkpoints(record, inputs.video, model, options.device, **common)
        if inputs.mode == "auto":
            return validate_auto(record, inputs.video, model, options.device, **common)
        return validate(record, inputs.video, model, device=options.device, **common)

    try:
        future = worker.run_task("validate", run)
        return await asyncio.wrap_future(future)
    finally:
        inputs.cleanup()
