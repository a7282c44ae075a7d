"""The validator: integrity → record → class → regenerate → exact match → compare by policy."""

from ditproof.validation.compare import ComparisonOptions
from ditproof.validation.delegation import ValidatorNode, ValidatorRegistry
from ditproof.validation.policy import Threshold, ThresholdPolicy, ThresholdsFile, parse_threshold
from ditproof.validation.validate import regeneration_options, validate

__all__ = [
    "ComparisonOptions",
    "Threshold",
    "ThresholdPolicy",
    "ThresholdsFile",
    "ValidatorNode",
    "ValidatorRegistry",
    "parse_threshold",
    "regeneration_options",
    "validate",
]
