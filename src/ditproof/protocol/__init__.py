"""Versioned data models that cross a boundary: requests, records, verdicts."""

from ditproof.protocol.record import (
    CheckpointRef,
    InferenceRecord,
    NoiseInfo,
    PhaseTimings,
    RuntimeFingerprint,
    TrajectoryFingerprints,
    VideoEncoding,
    VideoInfo,
)
from ditproof.protocol.request import GenerationRequest, parse_request

__all__ = [
    "CheckpointRef",
    "GenerationRequest",
    "InferenceRecord",
    "NoiseInfo",
    "PhaseTimings",
    "RuntimeFingerprint",
    "TrajectoryFingerprints",
    "VideoEncoding",
    "VideoInfo",
    "parse_request",
]
