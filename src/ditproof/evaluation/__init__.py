"""Evaluation of generated videos against their prompts (the shipped shapes model's grammar)."""

from ditproof.evaluation.adherence import (
    AdherenceScore,
    ObjectMeasurement,
    ObjectScore,
    VideoMeasurement,
    evaluate,
    measure_video,
    score,
    summarize,
)

__all__ = [
    "AdherenceScore",
    "ObjectMeasurement",
    "ObjectScore",
    "VideoMeasurement",
    "evaluate",
    "measure_video",
    "score",
    "summarize",
]
