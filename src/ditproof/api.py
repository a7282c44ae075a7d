"""ditproof's public API: what a program needs to generate, record and validate, in one import.

    from ditproof.api import LoadOptions, RunOptions, execute, load_model, parse_request, validate

    model = load_model("wan-shapes-small", LoadOptions())
    request = parse_request({"prompt": "a red circle moves left", "num_inference_steps": 20})
    record = execute(request, model, RunOptions(), "out", request_id="req-1", entropy="5e" * 32)
    verdict = validate(record, "out/video.mp4", model)
    assert verdict.decision == "valid"

The names below are the stable surface (``__all__`` is pinned by a test): the data models of
requests, options, records, verdicts and thresholds; loading; generation; the validation
modes (full, checkpoints, spot check, and auto, which picks one); seeds; the HTTP client; the errors. Everything else is reachable in its module but may
move. The CLI and the HTTP server are built on these same functions (docs/architecture.md).
"""

from ditproof.client import Client, ClientError, DownloadIntegrityError
from ditproof.errors import (
    DitproofError,
    IntegrityError,
    InvalidInputError,
    InvalidRequestError,
    ModelNotFoundError,
    RuntimeUnavailableError,
)
from ditproof.generation.execute import execute
from ditproof.generation.generate import generate
from ditproof.models.presets import PRESETS
from ditproof.models.registry import LoadedModel, load_model
from ditproof.protocol.options import CaptureOptions, LoadOptions, RunOptions, RuntimeOptions, VideoEncoding
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import GenerationRequest, parse_request
from ditproof.protocol.verdict import Verdict
from ditproof.randomness import derive_seed
from ditproof.validation.allowed import AllowedClasses
from ditproof.validation.auto import validate_auto
from ditproof.validation.checkpoints import validate_checkpoints, validate_spot_check
from ditproof.validation.delegation import ValidatorRegistry
from ditproof.validation.policy import ThresholdPolicy, ThresholdsFile
from ditproof.validation.validate import validate

__all__ = [
    "PRESETS",
    "AllowedClasses",
    "CaptureOptions",
    "Client",
    "ClientError",
    "DitproofError",
    "DownloadIntegrityError",
    "GenerationRequest",
    "InferenceRecord",
    "IntegrityError",
    "InvalidInputError",
    "InvalidRequestError",
    "LoadOptions",
    "LoadedModel",
    "ModelNotFoundError",
    "RunOptions",
    "RuntimeOptions",
    "RuntimeUnavailableError",
    "ThresholdPolicy",
    "ThresholdsFile",
    "ValidatorRegistry",
    "Verdict",
    "VideoEncoding",
    "derive_seed",
    "execute",
    "generate",
    "load_model",
    "parse_request",
    "validate",
    "validate_auto",
    "validate_checkpoints",
    "validate_spot_check",
]
