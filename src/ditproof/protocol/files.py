"""Reading versioned protocol files: one error shape for every kind of file."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ditproof.errors import InvalidInputError

M = TypeVar("M", bound=BaseModel)


def load_model_file(cls: type[M], path: str | Path, kind: str, schema: str) -> M:
    """Reads ``path`` as JSON and validates it as ``cls``.

    Args:
        cls: the pydantic model of the file.
        path: where the file is.
        kind: what the file is, for messages ("record", "thresholds", ...).
        schema: the schema name the file must follow, for messages.

    Raises:
        InvalidInputError: missing or unreadable file, not JSON, or not valid for ``cls``; the
            message names the file, the number of problems and the first one.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidInputError(f"{kind} {path}: cannot be read ({exc.strerror})") from None
    try:
        return cls.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(
            f"{kind} {path}: not a valid {schema} {'record' if kind == 'record' else 'file'} "
            f"({exc.error_count()} problem{'s' if exc.error_count() != 1 else ''}; first at {where or '<root>'}: "
            f"{message})"
        ) from None
