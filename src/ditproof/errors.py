"""The exceptions ditproof raises.

    DitproofError
    ├── InvalidInputError       bad request, option or file given by the caller (CLI exit code 2)
    │   └── InvalidRequestError a GenerationRequest field out of bounds
    ├── ModelNotFoundError      a model folder missing or incomplete, an unknown preset
    ├── IntegrityError          a hash that does not match what a record claims
    └── RuntimeUnavailableError the device, kernel or library a run asks for is not here

Every message names what was wrong, the value that was given and what is allowed.
"""

from __future__ import annotations


class DitproofError(Exception):
    """Base class of every error ditproof raises on purpose."""


class InvalidInputError(DitproofError, ValueError):
    """Input from the caller that ditproof refuses (never silently adjusted)."""


class InvalidRequestError(InvalidInputError):
    """A generation request with one or more fields out of bounds.

    Attributes:
        errors: one ``(field, message)`` pair per problem.
    """

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        lines = [f"{field}: {message}" for field, message in errors]
        super().__init__("invalid generation request:\n  " + "\n  ".join(lines))


class ModelNotFoundError(DitproofError, FileNotFoundError):
    """A model preset that does not exist, or a model folder that is missing or incomplete."""


class IntegrityError(DitproofError):
    """A hash or size that differs from the one a record states."""


class RuntimeUnavailableError(DitproofError, RuntimeError):
    """A device, kernel or library that the requested runtime options need is not available."""
