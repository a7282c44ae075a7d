"""``ditproof serve``: run the ML-node HTTP service on uvicorn."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ditproof.cli.common import out, reported
from ditproof.errors import DitproofError, InvalidInputError
from ditproof.models.quiet import quiet_libraries

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ditproof.server.config import ServerConfig

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's log levels."""


def serve_command(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default 8080)."),
    config_path: Path | None = typer.Option(None, "--config", help="A TOML or JSON server configuration."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Job database and artifacts (default ./ditproof-data)."
    ),
    model: str | None = typer.Option(None, "--model", help="Model to load at start (default: start STOPPED)."),
    model_path: str | None = typer.Option(None, "--model-path", help="Folder of the wan2.2-t2v-a14b preset."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default cpu)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: preset's)."),
    max_queue: int | None = typer.Option(None, "--max-queue", help="Waiting jobs before 429 (default 16)."),
    thresholds: Path | None = typer.Option(None, "--thresholds", help="Validation thresholds file (step 6)."),
    validators: Path | None = typer.Option(None, "--validators", help="Validator registry for delegate verdicts."),
    allowed_classes: Path | None = typer.Option(
        None, "--allowed-classes", help="The network's allowed runtime classes (default: the packaged list)."
    ),
    print_openapi: bool = typer.Option(False, "--print-openapi", help="Print the OpenAPI schema and exit."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the video API, ML-node management and validation over HTTP.

    The bearer token comes from DITPROOF_API_TOKEN or api_token in --config; the server refuses
    to start without one.
    """
    with reported():
        if log_level.lower() not in LOG_LEVELS:
            raise InvalidInputError(f"log-level: got {log_level!r}; allowed: {', '.join(LOG_LEVELS)}")
        quiet_libraries()
        from ditproof.server import create_app, load_config

        config = load_config(
            config_path,
            host=host,
            port=port,
            data_dir=data_dir,
            model=model,
            model_path=model_path,
            device=device,
            dtype=dtype,
            max_queue=max_queue,
            thresholds=thresholds,
            validators=validators,
            allowed_classes=allowed_classes,
        )
        if print_openapi:
            # The schema does not depend on the token; a placeholder lets it print without one.
            app = _app(create_app, config.model_copy(update={"api_token": config.api_token or "x" * 32}))
            out.print_json(json.dumps(app.openapi()))
            return
        app = _app(create_app, config)
        import uvicorn

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        uvicorn.run(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level.lower(),
            timeout_graceful_shutdown=30,
            server_header=False,
            # Bounded concurrency: beyond it uvicorn answers 503 instead of piling up connections.
            limit_concurrency=256,
        )


def _app(create_app: Callable[[ServerConfig], FastAPI], config: ServerConfig) -> FastAPI:
    """The app, with the server's own refusals of the configuration (an unknown ``--model``)
    reported as ditproof errors: exit 2 with the message, not an internal error."""
    from ditproof.server.errors import ApiError

    try:
        return create_app(config)
    except ApiError as exc:
        # Its message already names the field, the value and what is allowed.
        if exc.status == 422:
            raise InvalidInputError(exc.message) from None
        raise DitproofError(exc.message) from None
