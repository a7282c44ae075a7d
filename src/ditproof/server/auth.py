"""Bearer-token authentication and request size limits, as ASGI middleware.

Both run before routing, so an unauthenticated caller learns nothing (not even which paths
exist: every path but the health probes answers 401 without a valid token), and an oversized
body is refused before it is read (by its Content-Length) or as soon as it passes the limit
(chunked bodies).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ditproof.server.errors import ApiError, ErrorBody, ErrorResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = frozenset({"/health", "/livez", "/readyz", "/api/v1/health", "/api/v1/livez", "/api/v1/readyz"})
"""Paths answered without a token: orchestrators probe them without credentials."""


async def _send_error(send: Send, error: ApiError) -> None:
    body = ErrorResponse(error=ErrorBody(status=error.status, code=error.code, message=error.message)).model_dump()
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on every HTTP path except :data:`HEALTH_PATHS`."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((value for key, value in scope["headers"] if key == b"authorization"), None)
        # Constant-time comparison: the time to refuse does not reveal how much of a guess matched.
        if given is None or not hmac.compare_digest(given, self.expected):
            reason = "missing" if given is None else "invalid"
            await _send_error(
                send,
                ApiError(
                    401,
                    "unauthorized",
                    f"authorization: {reason} bearer token; allowed: the header 'Authorization: Bearer <token>' "
                    "with this node's API token",
                    headers={"WWW-Authenticate": 'Bearer realm="ditproof"'},
                ),
            )
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses request bodies larger than a per-path limit with 413.

    ``upload_paths`` get ``upload_limit`` (video uploads); every other path gets ``limit``.
    """

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int, upload_paths: frozenset[str]):
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] in self.upload_paths else self.limit
        too_large = ApiError(413, "payload_too_large", f"body: larger than this endpoint's limit of {limit} bytes")
        length = next((value for key, value in scope["headers"] if key == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                await _send_error(
                    send, ApiError(400, "bad_request", f"content-length: got {length!r}; allowed: digits")
                )
                return
            if int(length) > limit:
                await _send_error(send, too_large)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the endpoint's body read: the exception handlers render it.
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)
