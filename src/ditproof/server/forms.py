"""Multipart forms read strictly: text fields are UTF-8, or the request is refused.

Starlette's parser decodes a text field (and a field name) that is not valid UTF-8 as latin-1
without a word, so a prompt sent as ``b"\\xff\\xfe"`` would be recorded as ``"ÿþ"``, text the
client never sent, and a ``charset`` parameter in the content type changes how every field
is read. A record names its prompt exactly, so here a field is UTF-8 or it is refused, like
JSON and URL-encoded bodies.
"""

from __future__ import annotations

from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ditproof.server.errors import ApiError, invalid_fields

UTF8_NAMES = frozenset({"utf-8", "utf8"})


def _charset_problem(content_type: bytes | str, where: str) -> tuple[str, str] | None:
    """A problem if ``content_type`` declares a charset other than UTF-8."""
    raw = content_type.encode("latin-1") if isinstance(content_type, str) else content_type
    _, params = parse_options_header(raw)
    charset = params.get(b"charset")
    if charset is None or charset.decode("latin-1").strip().lower() in UTF8_NAMES:
        return None
    return (where, f"declares charset {charset.decode('latin-1')!r}; allowed: utf-8 (text fields are UTF-8)")


def _not_utf8(data: bytes | bytearray) -> str | None:
    """Why ``data`` is not UTF-8 text, or None when it is."""
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = bytes(data[exc.start : exc.end])
        return f"byte {exc.start} ({bad!r}) is not UTF-8 ({exc.reason})"
    return None


class StrictMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, with text fields and field names decoded as strict UTF-8.

    Problems are collected per field (in :attr:`problems`) rather than raised mid-stream, so one
    422 names every field that was wrong.
    """

    def __init__(self, headers: Headers, stream: Any, **limits: Any) -> None:
        super().__init__(headers, stream, **limits)
        self.problems: list[tuple[str, str]] = []

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        _, options = parse_options_header(part.content_disposition)
        reason = _not_utf8(options.get(b"name", b""))
        if reason is not None:
            self.problems.append((f"field name {part.field_name!r}", f"{reason}; allowed: UTF-8 text"))
        for name, value in part.item_headers:
            if name == b"content-type":
                problem = _charset_problem(value, part.field_name)
                if problem is not None:
                    self.problems.append(problem)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        reason = _not_utf8(part.data)
        if reason is not None:
            self.problems.append((part.field_name, f"{reason}; allowed: UTF-8 text"))
            self.items.append((part.field_name, ""))
        else:
            self.items.append((part.field_name, part.data.decode("utf-8")))


async def read_multipart(request: Request, *, max_files: int, max_fields: int, max_part_size: int) -> FormData:
    """The multipart form of ``request``, every text field checked to be UTF-8.

    The caller closes the form (its files) when done with it.

    Raises:
        ApiError: 422 naming each field that is not UTF-8 (or a declared charset that is not
            utf-8); 400 for a body that is not a well-formed multipart form, or past its limits.
    """
    problem = _charset_problem(request.headers.get("content-type", ""), "content-type")
    if problem is not None:
        raise invalid_fields([problem])
    parser = StrictMultiPartParser(
        request.headers, request.stream(), max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_request", f"body: multipart form refused: {exc.message}") from None
    if parser.problems:
        await form.close()
        raise invalid_fields(list(dict.fromkeys(parser.problems)))
    return form
