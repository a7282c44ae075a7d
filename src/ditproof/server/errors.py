"""The one error shape of every endpoint, and the handlers that produce it.

Every error response has the body::

    {"error": {"status": 422, "code": "invalid_request", "message": "...",
               "fields": [{"field": "width", "message": "got 830; allowed: a multiple of 16 ..."}]}}

``fields`` lists one entry per invalid field (empty for errors that are not about a field).
Codes: ``invalid_request`` (422), ``unauthorized`` (401), ``not_found`` (404),
``method_not_allowed`` (405), ``conflict`` (409), ``not_ready`` (409), ``payload_too_large``
(413), ``unsupported_media_type`` (415), ``queue_full`` (429), ``internal_error`` (500),
``unavailable`` (503), ``timeout`` (504).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ditproof.errors import DitproofError, InvalidInputError, InvalidRequestError, ModelNotFoundError

log = logging.getLogger("ditproof.server")


class FieldError(BaseModel):
    """One invalid field: its dotted name and what was wrong (value and what is allowed)."""

    model_config = ConfigDict(extra="forbid")

    field: str
    message: str


class ErrorBody(BaseModel):
    """The content of an error response."""

    model_config = ConfigDict(extra="forbid")

    status: int
    code: str
    message: str
    fields: list[FieldError] = []


class ErrorResponse(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


class ApiError(Exception):
    """An error the service answers with on purpose (never a stack trace)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []
        self.headers = headers


def invalid(field: str, message: str) -> ApiError:
    """A 422 about one field."""
    return ApiError(422, "invalid_request", f"{field}: {message}", [(field, message)])


def invalid_fields(problems: list[tuple[str, str]]) -> ApiError:
    """A 422 listing several fields."""
    summary = "; ".join(f"{field}: {message}" for field, message in problems)
    return ApiError(422, "invalid_request", f"invalid request: {summary}", problems)


def conflict(message: str, code: str = "conflict") -> ApiError:
    """A 409: the request does not fit the node's current state."""
    return ApiError(409, code, message)


def not_found(what: str) -> ApiError:
    """A 404 for an id this node does not hold."""
    return ApiError(404, "not_found", f"{what} not found")


def error_response(error: ApiError) -> JSONResponse:
    """Renders an :class:`ApiError` in the one error shape."""
    body = ErrorResponse(
        error=ErrorBody(
            status=error.status,
            code=error.code,
            message=error.message,
            fields=[FieldError(field=f, message=m) for f, m in error.fields],
        )
    )
    return JSONResponse(body.model_dump(), status_code=error.status, headers=error.headers)


def from_ditproof(exc: DitproofError) -> ApiError:
    """Maps a library error to an HTTP error: caller mistakes are 422, the rest 500."""
    if isinstance(exc, InvalidRequestError):
        return invalid_fields(exc.errors)
    if isinstance(exc, InvalidInputError | ModelNotFoundError):
        message = str(exc)
        field, sep, rest = message.partition(": ")
        # Library messages start with the field name ("seed: got ..."); keep it as the field.
        if sep and field.replace("_", "").replace(".", "").isalnum() and len(field) <= 64:
            return ApiError(422, "invalid_request", message, [(field, rest)])
        return ApiError(422, "invalid_request", message)
    return ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}")


def pydantic_fields(exc: ValidationError | RequestValidationError, drop_prefix: int = 0) -> list[tuple[str, str]]:
    """One ``(field, message)`` per pydantic error, with the value and what is allowed."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]][drop_prefix:]
        field = ".".join(loc) or "body"
        kind = error["type"]
        message = str(error["msg"]).removeprefix("Value error, ")
        if kind == "value_error":
            # A check across fields names its field first ("node_id: got 3; ..."): use that name.
            named = _NAMED.match(message)
            if named:
                field = ".".join([*loc, named.group(1)]) if loc and loc != ["body"] else named.group(1)
                message = named.group(2)
        elif kind == "missing":
            message = "missing; this field is required"
        elif kind == "extra_forbidden":
            message = f"unknown field (value {_short(error.get('input'))}); it is not part of this endpoint's schema"
        else:
            message = f"got {_short(error.get('input'))}; {message}"
        problems.append((field, message))
    return problems


_NAMED = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*): (.+)$", re.DOTALL)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_handlers(app: FastAPI) -> None:
    """Registers the handlers that turn every failure into the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Body fields are named as in the video API ("dtype", not "body.dtype"); path and query
        # parameters keep their prefix ("path.video_id"), which tells where the value was.
        problems = [(field.removeprefix("body."), message) for field, message in pydantic_fields(exc)]
        return error_response(invalid_fields(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)))

    @app.exception_handler(DitproofError)
    async def _ditproof(_: Request, exc: DitproofError) -> JSONResponse:
        return error_response(from_ditproof(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The edge of the service: log the traceback, answer without internals.
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal_error", f"internal error ({type(exc).__name__})"))
