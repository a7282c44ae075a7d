"""The validator: integrity → record → class → regenerate (whole, or checkpoint segments) → exact
match → compare by policy."""

from ditproof.validation.auto import choose_mode, validate_auto
from ditproof.validation.checkpoints import (
    SEGMENT_KEY,
    choose_spot_segments,
    validate_checkpoints,
    validate_spot_check,
)
from ditproof.validation.compare import ComparisonOptions
from ditproof.validation.delegation import ValidatorNode, ValidatorRegistry
from ditproof.validation.fingerprints import Divergence, first_divergent_step
from ditproof.validation.policy import Threshold, ThresholdPolicy, ThresholdsFile, parse_threshold
from ditproof.validation.preflight import regeneration_options
from ditproof.validation.validate import validate

__all__ = [
    "SEGMENT_KEY",
    "ComparisonOptions",
    "Divergence",
    "Threshold",
    "ThresholdPolicy",
    "ThresholdsFile",
    "ValidatorNode",
    "ValidatorRegistry",
    "choose_mode",
    "choose_spot_segments",
    "first_divergent_step",
    "parse_threshold",
    "regeneration_options",
    "validate",
    "validate_auto",
    "validate_checkpoints",
    "validate_spot_check",
]
