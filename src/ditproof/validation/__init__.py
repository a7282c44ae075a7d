"""The validator: integrity → record checks → class match → regenerate → exact match → compare."""

from ditproof.validation.validate import validate

__all__ = ["validate"]
