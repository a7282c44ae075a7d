"""Gonka ML-node management (``/api/v1``) and the health probes (docs/server.md).

One service state at a time: ``inference/up`` in another state, or with another model up,
answers 409. ``/health``, ``/livez`` and ``/readyz`` answer without a token (also under
``/api/v1``), for orchestrators.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from ditproof.server.loading import allowed_models, resolve_model
from ditproof.server.routes.deps import NodeDep, WorkerDep
from ditproof.server.routes.videos import ERRORS
from ditproof.server.schemas import (
    HealthResponse,
    InferenceUpRequest,
    ReadinessResponse,
    StateResponse,
    StatusResponse,
)

router = APIRouter(prefix="/api/v1", tags=["management"])
health = APIRouter(tags=["health"])


@router.get("/state", response_model=StateResponse, responses=ERRORS)
async def get_state(node: NodeDep, worker: WorkerDep) -> StateResponse:
    """The service state, the loaded model and the queue."""
    return StateResponse.model_validate({**node.describe(), "queue": worker.queue_summary()})


@router.get("/models", responses=ERRORS)
async def get_models(worker: WorkerDep) -> dict[str, list[str]]:
    """Model names this node can load with ``inference/up``."""
    return {"models": allowed_models(worker.config)}


@router.post("/stop", response_model=StatusResponse, responses=ERRORS)
async def stop(node: NodeDep) -> StatusResponse:
    """Stop everything: cancel jobs, unload the model, state STOPPED."""
    node.stop("the node was stopped (POST /api/v1/stop)")
    return StatusResponse(state=node.state, detail="stopped; queued and running jobs were cancelled")


@router.post("/inference/up", response_model=StatusResponse, responses=ERRORS)
async def inference_up(body: InferenceUpRequest, node: NodeDep, worker: WorkerDep) -> StatusResponse:
    """Load a model and serve inference; poll ``/api/v1/state`` until ``inference_healthy``."""
    choice = resolve_model(worker.config, body.model, body.dtype, body.additional_args)
    started = node.inference_up(choice)  # the worker follows and loads it
    detail = f"loading {choice.name}" if started else f"{choice.name} is already up with these options"
    return StatusResponse(state=node.state, detail=detail)


@router.post("/inference/down", response_model=StatusResponse, responses=ERRORS)
async def inference_down(node: NodeDep) -> StatusResponse:
    """Stop serving inference: cancel jobs, unload the model."""
    node.inference_down("the model was unloaded (POST /api/v1/inference/down)")
    return StatusResponse(state=node.state, detail="inference is down; queued and running jobs were cancelled")


def _health(node: NodeDep, worker: WorkerDep, response: Response) -> HealthResponse:
    alive = worker.alive
    if not alive:
        response.status_code = 503
    return HealthResponse(
        status="healthy" if alive else "unhealthy",
        service_state=node.state,
        worker_alive=alive,
        uptime_s=round(time.time() - node.started_at, 3),
    )


def _ready(node: NodeDep, worker: WorkerDep, response: Response) -> ReadinessResponse:
    ready = worker.alive and node.healthy
    if not ready:
        response.status_code = 503
    return ReadinessResponse(ready=ready, state=node.state)


for _prefix in ("", "/api/v1"):
    health.add_api_route(
        f"{_prefix}/health",
        _health,
        methods=["GET"],
        response_model=HealthResponse,
        summary="Liveness (no token needed)",
    )
    health.add_api_route(
        f"{_prefix}/livez",
        _health,
        methods=["GET"],
        response_model=HealthResponse,
        summary="Liveness (no token needed)",
    )
    health.add_api_route(
        f"{_prefix}/readyz",
        _ready,
        methods=["GET"],
        response_model=ReadinessResponse,
        summary="Readiness: a model is up (no token needed)",
    )
