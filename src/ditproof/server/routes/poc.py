"""PoC v2 under ``/api/v1/inference/pow/`` in Gonka's ML-node shapes (docs/poc.md, docs/server.md).

``init/generate`` starts a continuous round (state POW) whose artifacts go to ``{url}/generated``;
``generate`` computes given nonces (generation mode) or checks given artifacts (validation mode,
``validation {artifacts}`` and ``stat_test``), queued (``wait: false``, poll ``generate/{id}``)
or answered at once (``wait: true``); ``status`` reports the round; ``stop`` ends it. The work
runs on the node's GPU worker (:mod:`ditproof.server.poc`); paths and wire names stay Gonka's
(``pow``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path

from ditproof.server.errors import not_found
from ditproof.server.poc_schemas import (
    POC_REQUEST_ID_PATTERN,
    PowAck,
    PowGenerateRequest,
    PowGenerateResponse,
    PowInitGenerateRequest,
    PowStatusBody,
    PowStatusResponse,
)
from ditproof.server.routes.deps import NodeDep, PocDep
from ditproof.server.routes.videos import ERRORS

router = APIRouter(prefix="/api/v1/inference/pow", tags=["pow"])

RequestId = Annotated[str, Path(pattern=POC_REQUEST_ID_PATTERN, description="poc_ and 32 hex digits.")]


@router.post("/init/generate", response_model=PowAck, responses=ERRORS)
async def init_generate(body: PowInitGenerateRequest, poc: PocDep, node: NodeDep) -> PowAck:
    """Start computing this node's nonces continuously (state POW) until ``stop``."""
    poc.init_generate(body)
    return PowAck(pow_status=PowStatusBody(status="GENERATING"), state=node.state)


@router.post("/generate", response_model=PowGenerateResponse, response_model_exclude_none=True, responses=ERRORS)
async def generate(body: PowGenerateRequest, poc: PocDep) -> PowGenerateResponse:
    """Compute the given nonces, or check the given artifacts against them (``validation``)."""
    request, future = poc.submit(body)
    if not body.wait:
        return PowGenerateResponse(status="queued", request_id=request.id, queued_count=request.nonce_count)
    # Errors of the run itself (409 when the node left its state meanwhile) reach the handlers.
    # The request's own done callback ran first (it was added first), so it holds the result.
    await asyncio.wrap_future(future)
    return request.response()


@router.get(
    "/generate/{request_id}", response_model=PowGenerateResponse, response_model_exclude_none=True, responses=ERRORS
)
async def get_generate(request_id: RequestId, poc: PocDep) -> PowGenerateResponse:
    """A ``generate`` request: queued, running, completed (with its result), failed or cancelled."""
    request = poc.get(request_id)
    if request is None:
        raise not_found(f"PoC request {request_id}")
    return request.response()


@router.get("/status", response_model=PowStatusResponse, responses=ERRORS)
async def status(poc: PocDep) -> PowStatusResponse:
    """The running round (config and throughput), or IDLE."""
    return poc.status()


@router.post("/stop", response_model=PowAck, responses=ERRORS)
async def stop(poc: PocDep, node: NodeDep) -> PowAck:
    """End the round and cancel queued ``generate`` requests; POW goes back to INFERENCE."""
    poc.stop()
    return PowAck(pow_status=PowStatusBody(status="STOPPED"), state=node.state)
