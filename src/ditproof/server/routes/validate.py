"""``POST /api/v1/validate``: a record and a video in, a verdict out (docs/validation.md).

Two forms:

* multipart: ``record`` (the record JSON, as a file or a text field) and ``video`` (the mp4
  file), or ``video_id`` instead of ``video`` for a video already in this node's store;
* JSON: ``{"video_id": ..., "record": {...}?}``: validate a stored video against its own record
  or against the given one.

Both forms take an optional ``request``: the generation request the client made. The record's
copy must equal it (check ``request``, the first one), or an executor could record a cheaper
request than the one it was paid for and be checked against that.

The regeneration runs on the worker, ahead of waiting jobs, never beside a generation.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
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
from ditproof.server.errors import ApiError, conflict, invalid, invalid_fields, pydantic_fields
from ditproof.server.forms import read_multipart
from ditproof.server.jobs import is_job_id
from ditproof.server.routes.deps import WorkerDep
from ditproof.server.routes.videos import ERRORS, _completed
from ditproof.server.schemas import ValidateReference
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


Inputs = tuple[InferenceRecord, bytes, Path | None, GenerationRequest | None]
"""The record, the video bytes, for a stored video its folder (with the latents), and the
client's request when given."""


def _stored(worker: GpuWorker, video_id: str) -> tuple[InferenceRecord, bytes, Path]:
    job = _completed(worker, video_id)
    record = worker.artifacts.record(job.id)
    folder = worker.artifacts.path(job.id)
    return record, (folder / record.video.file).read_bytes(), folder


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
        return (_parse_record(ref.record) if ref.record is not None else record), video, folder, expected
    if content_type != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content-type: got {content_type or 'none'!r}; allowed: multipart/form-data, application/json",
        )
    max_size = worker.config.max_upload_bytes
    form = await read_multipart(request, max_files=3, max_fields=8, max_part_size=1024 * 1024)
    try:
        fields = dict(form.multi_items())
        unknown = sorted(set(fields) - {"record", "video", "video_id", "request"})
        if unknown:
            raise invalid_fields(
                [(name, "unknown field; allowed: record, video, video_id, request") for name in unknown]
            )
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
        if video_id is not None:
            if not isinstance(video_id, str) or not is_job_id(video_id):
                raise invalid("video_id", f"got {video_id!r}; allowed: video_ followed by 32 hex digits")
            _, video, folder = _stored(worker, video_id)
            return record, video, folder, expected
        if not isinstance(video_field, UploadFile):
            raise invalid("video", "got a text field; allowed: the mp4 as a file upload")
        return record, await video_field.read(max_size), None, expected
    finally:
        await form.close()


@router.post("/validate", response_model=Verdict, responses=ERRORS, openapi_extra=VALIDATE_OPENAPI)
async def validate_video(request: Request, worker: WorkerDep) -> Verdict:
    """Validate a video against its inference record by regenerating it on this node."""
    record, video, folder, expected = await _inputs(request, worker)
    setup: ValidationSetup = request.app.state.validation

    def run(model: LoadedModel, options: RuntimeOptions) -> Verdict:
        from ditproof.validation import validate

        if model.preset != record.model.preset:
            raise conflict(
                f"record.model.preset: got {record.model.preset!r}; this node has {model.preset!r} loaded "
                "(bring that model up, or ask a node that serves it)"
            )
        return validate(
            record,
            video,
            model,
            device=options.device,
            policy=setup.policy,
            validators=setup.validators,
            allowed=setup.allowed,
            artifacts_dir=folder,
            expected_request=expected,
        )

    future = worker.run_task("validate", run)
    return await asyncio.wrap_future(future)
