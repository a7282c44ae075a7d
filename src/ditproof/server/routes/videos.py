"""The video API, compatible with vLLM-Omni's ``/v1/videos``.

``POST /v1/videos`` queues a job and answers at once; ``POST /v1/videos/sync`` queues the same
job and answers with the mp4 when it is done. Both take a JSON body or form fields (multipart
or urlencoded) with the same names. Every video goes through the one worker and the
persistent queue, so a sync request waits its turn like any other.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, Response

from ditproof.generation.text import check_prompt_length
from ditproof.protocol.record import RECORD_FILE
from ditproof.server.errors import ApiError, ErrorResponse, conflict, invalid_fields, not_found
from ditproof.server.forms import read_multipart
from ditproof.server.jobs import JOB_ID_PATTERN, QueueFullError, VideoJob
from ditproof.server.node import Node
from ditproof.server.routes.deps import NodeDep, WorkerDep
from ditproof.server.schemas import VideoCreateRequest, VideoDeleted, VideoList, VideoObject
from ditproof.server.video_request import from_form, from_json, to_job_spec, video_object
from ditproof.server.worker import GpuWorker

router = APIRouter(prefix="/v1/videos", tags=["videos"])

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A video id: video_ and 32 hex digits.")]
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
TERMINAL = ("completed", "failed")
_POLL_S = 0.05

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "missing or invalid bearer token"),
        (404, "no video with this id"),
        (409, "the node's state or the job's status does not allow this"),
        (413, "body too large"),
        (415, "unsupported content type"),
        (422, "invalid fields (one entry per field)"),
        (429, "the job queue is full"),
    )
}

_BODY_SCHEMA = {"$ref": "#/components/schemas/VideoCreateRequest"}
CREATE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _BODY_SCHEMA},
            "multipart/form-data": {"schema": _BODY_SCHEMA},
            "application/x-www-form-urlencoded": {"schema": _BODY_SCHEMA},
        },
    }
}


async def read_create_request(request: Request) -> VideoCreateRequest:
    """Parses the body by its content type into a :class:`VideoCreateRequest`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = await request.body()
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid_fields([("body", f"not valid JSON ({exc})")]) from None
        return from_json(data)
    if content_type == "application/x-www-form-urlencoded":
        # Parsed here, strictly: Starlette's parser turns bytes that are not UTF-8 into U+FFFD, so a
        # prompt would be recorded as something the client never sent.
        body = await request.body()
        try:
            items = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=64)
        except (UnicodeDecodeError, ValueError) as exc:
            raise invalid_fields([("body", f"not a URL-encoded form of UTF-8 text ({exc})")]) from None
        return from_form(items)
    if content_type == "multipart/form-data":
        form = await read_multipart(request, max_files=4, max_fields=64, max_part_size=256 * 1024)
        try:
            return from_form(list(form.multi_items()))
        finally:
            await form.close()
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content-type: got {content_type or 'none'!r}; allowed: application/json, {', '.join(FORM_TYPES)}",
    )


def _submit(node: Node, worker: GpuWorker, req: VideoCreateRequest) -> VideoJob:
    choice = node.choice
    spec = to_job_spec(req, choice.name if choice is not None else None)
    if node.model is not None and node.healthy:
        # Refuse prompts the text encoder would truncate now, not when the job runs.
        check_prompt_length(node.model, spec.request.prompt, spec.request.negative_prompt)
    try:
        return worker.submit_job(spec)
    except QueueFullError as exc:
        raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": "5"}) from None


@router.post("", response_model=VideoObject, responses=ERRORS, openapi_extra=CREATE_OPENAPI)
async def create_video(request: Request, node: NodeDep, worker: WorkerDep) -> VideoObject:
    """Queue a video generation job; poll ``GET /v1/videos/{id}``."""
    req = await read_create_request(request)
    return video_object(_submit(node, worker, req))


@router.post(
    "/sync",
    responses={200: {"content": {"video/mp4": {}}, "description": "the mp4 file"}, **ERRORS},
    openapi_extra=CREATE_OPENAPI,
    response_class=Response,
)
async def create_video_sync(request: Request, node: NodeDep, worker: WorkerDep) -> Response:
    """Generate a video and answer with the mp4 (headers carry the record's sha256 and ids)."""
    req = await read_create_request(request)
    job = _submit(node, worker, req)
    deadline = asyncio.get_running_loop().time() + worker.config.sync_timeout_s
    while job.status not in TERMINAL:
        if asyncio.get_running_loop().time() > deadline:
            raise ApiError(504, "timeout", f"job {job.id} still {job.status}; poll GET /v1/videos/{job.id}")
        await asyncio.sleep(_POLL_S)
        current = worker.store.get(job.id)
        if current is None:
            raise ApiError(409, "cancelled", f"job {job.id} was deleted before it finished")
        job = current
    if job.status == "failed":
        status = {"invalid_request": 422, "cancelled": 409, "model_mismatch": 409}.get(job.error_code or "", 500)
        raise ApiError(status, job.error_code or "generation_failed", f"job {job.id}: {job.error_message}")
    return _video_file(worker, job)


def _video_file(worker: GpuWorker, job: VideoJob) -> FileResponse:
    record = worker.artifacts.record(job.id)
    headers = {
        "X-Ditproof-Video-Id": job.id,
        "X-Ditproof-Record-Sha256": job.record_sha256 or record.sha256(),
        "X-Ditproof-Video-Sha256": record.video.sha256,
        "X-Ditproof-Seed": str(record.seed),
        "X-Ditproof-Seed-Derivation": record.seed_derivation,
    }
    if record.request_id is not None:
        headers["X-Ditproof-Request-Id"] = record.request_id
    path = worker.artifacts.path(job.id) / record.video.file
    return FileResponse(path, media_type="video/mp4", headers=headers, filename=f"{job.id}.mp4")


def _job(worker: GpuWorker, job_id: str) -> VideoJob:
    job = worker.store.get(job_id)
    if job is None:
        raise not_found(f"video {job_id}")
    return job


def _completed(worker: GpuWorker, job_id: str) -> VideoJob:
    job = _job(worker, job_id)
    if job.status != "completed":
        detail = f" ({job.error_code}: {job.error_message})" if job.status == "failed" else ""
        raise conflict(f"video {job_id} is {job.status}{detail}; allowed: completed videos", code="not_ready")
    return job


@router.get("", response_model=VideoList, responses=ERRORS)
async def list_videos(
    worker: WorkerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
) -> VideoList:
    """List jobs in submission order."""
    jobs = worker.store.page(limit + 1, after)
    data = [video_object(job) for job in jobs[:limit]]
    return VideoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(jobs) > limit,
    )


@router.get("/{video_id}", response_model=VideoObject, responses=ERRORS)
async def get_video(video_id: JobId, worker: WorkerDep) -> VideoObject:
    """Status of a job (with the record's and video's sha256 once completed)."""
    return video_object(_job(worker, video_id))


@router.get(
    "/{video_id}/content",
    responses={200: {"content": {"video/mp4": {}}, "description": "the mp4 file"}, **ERRORS},
    response_class=Response,
)
async def get_video_content(video_id: JobId, worker: WorkerDep) -> Response:
    """The mp4 of a completed job."""
    return _video_file(worker, _completed(worker, video_id))


@router.get(
    "/{video_id}/record",
    responses={200: {"content": {"application/json": {}}, "description": "the inference record"}, **ERRORS},
    response_class=Response,
)
async def get_video_record(video_id: JobId, worker: WorkerDep) -> Response:
    """The inference record of a completed job, byte for byte as stored (canonical JSON)."""
    _completed(worker, video_id)
    data = (worker.artifacts.path(video_id) / RECORD_FILE).read_bytes()
    return Response(data, media_type="application/json")


@router.delete("/{video_id}", response_model=VideoDeleted, responses=ERRORS)
async def delete_video(video_id: JobId, worker: WorkerDep) -> VideoDeleted:
    """Delete a job: a queued one leaves the queue, a running one is stopped, files are removed."""
    _job(worker, video_id)
    running = worker.delete_job(video_id)
    if running:
        # The worker stops the job at its next denoising step and then removes it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + worker.config.sync_timeout_s
        while worker.store.get(video_id) is not None and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
    return VideoDeleted(id=video_id, deleted=worker.store.get(video_id) is None)
