"""The FastAPI application of the ML-node service.

Layers, outermost first: bearer-token authentication → body size limit → routing → routes
(parse, ask the node or call the library, format) → the GPU worker's thread (all model work).

At start-up the app builds the node's parts, each in its own module: the state owner
(:class:`~ditproof.server.node.Node`), the GPU worker that follows it
(:class:`~ditproof.server.worker.GpuWorker`), the PoC side that asks it for POW
(:class:`~ditproof.server.poc.PocService`), and runs crash recovery
(:func:`~ditproof.server.recovery.recover`) before the worker starts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ditproof import __version__
from ditproof.server.artifacts import ArtifactStore
from ditproof.server.auth import HEALTH_PATHS, BearerAuth, BodyLimit
from ditproof.server.config import ServerConfig
from ditproof.server.errors import install_handlers
from ditproof.server.jobs import JobStore
from ditproof.server.loading import resolve_model
from ditproof.server.node import Node
from ditproof.server.poc import PocService
from ditproof.server.recovery import recover
from ditproof.server.routes import management, poc, pricing, validate, videos
from ditproof.server.routes.validate import ValidationSetup
from ditproof.server.worker import GpuWorker

log = logging.getLogger("ditproof.server")

DB_FILE = "jobs.sqlite3"
ARTIFACTS_DIR = "artifacts"
UPLOAD_PATHS = frozenset({"/api/v1/validate"})


def create_app(config: ServerConfig) -> FastAPI:
    """Builds the app for ``config`` (the job store and artifact folder are opened at start-up).

    Raises:
        InvalidInputError: no API token configured, or a start-up model that cannot be resolved.
    """
    token = config.token()
    startup = resolve_model(config, config.model) if config.model is not None else None
    validation = load_validation(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = JobStore(config.data_dir / DB_FILE)
        artifacts = ArtifactStore(config.data_dir / ARTIFACTS_DIR)
        node = Node()
        worker = GpuWorker(node, config, store, artifacts)
        app.state.node, app.state.worker = node, worker
        app.state.poc = PocService(node, worker, config)
        app.state.validation = validation
        report = recover(store, artifacts, config.max_attempts, will_load=startup is not None)
        log.info("recovered jobs: %s", {k: len(v) for k, v in report.items()})
        worker.start()
        if startup is not None:
            node.inference_up(startup)  # the worker follows: loads it
        try:
            yield
        finally:
            app.state.poc.shutdown("the server shut down")
            worker.shutdown()
            store.close()

    app = FastAPI(
        title="ditproof ML node",
        version=__version__,
        description=(
            "Verifiable text-to-video inference: a vLLM-Omni-compatible video API, Gonka ML-node "
            "management, Proof-of-Compute v2 (Gonka's shapes), and validation. Every endpoint but the health probes needs "
            "'Authorization: Bearer <token>'. Errors share one shape: {error: {status, code, message, fields}}."
        ),
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(videos.router)
    app.include_router(management.router)
    app.include_router(validate.router)
    app.include_router(poc.router)
    app.include_router(pricing.router)
    app.include_router(management.health)
    # Added last = outermost: authentication runs before the body is read.
    app.add_middleware(
        BodyLimit, limit=config.max_body_bytes, upload_limit=config.max_upload_bytes, upload_paths=UPLOAD_PATHS
    )
    app.add_middleware(BearerAuth, token=token)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def load_validation(config: ServerConfig) -> ValidationSetup:
    """The thresholds policy, validator registry and allowed classes of ``/api/v1/validate``
    (checked at start-up)."""
    from ditproof.validation.allowed import AllowedClasses
    from ditproof.validation.delegation import ValidatorRegistry
    from ditproof.validation.policy import ThresholdPolicy

    policy = ThresholdPolicy.from_cli(config.thresholds, [])  # no file configured: the shipped defaults
    registry = ValidatorRegistry.load(config.validators) if config.validators else None
    return ValidationSetup(policy, registry, AllowedClasses.load(config.allowed_classes))


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the bearer scheme required everywhere but the health probes."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    # Schemas referenced only from openapi_extra request bodies.
    from ditproof.server.schemas import ValidateReference, VideoCreateRequest

    for model in (VideoCreateRequest, ValidateReference):
        components.setdefault("schemas", {})[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    schema["security"] = [{"bearer": []}]
    for path, operations in schema["paths"].items():
        if path in HEALTH_PATHS:
            for operation in operations.values():
                operation["security"] = []
    app.openapi_schema = schema
    return schema
