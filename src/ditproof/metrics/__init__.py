"""Measurements between a submitted video and its regeneration (pure functions, no decisions).

Frame metrics take uint8 RGB frames ``(F, H, W, 3)``, score each frame, then aggregate (mean,
worst frame, low-tail percentile); latent metrics compare final latents. Decisions live in
``ditproof.validation.policy``.
"""

from ditproof.metrics.aggregate import aggregate
from ditproof.metrics.functional import (
    PSNR_IDENTICAL,
    dists_frames,
    latent_cosine,
    latent_relative_l2,
    lpips_frames,
    ms_ssim3_frames,
    ms_ssim_frames,
    psnr_frames,
    ssim_frames,
)
from ditproof.metrics.registry import (
    FRAME_METRICS,
    LATENT_METRICS,
    METRICS,
    MetricSpec,
    frame_values,
    metric_spec,
    metric_weights,
    parse_score_key,
    score_key,
    score_latents,
    score_videos,
)
from ditproof.metrics.weights import MetricWeightsInvalidError, MetricWeightsMissingError

__all__ = [
    "FRAME_METRICS",
    "LATENT_METRICS",
    "METRICS",
    "PSNR_IDENTICAL",
    "MetricSpec",
    "MetricWeightsInvalidError",
    "MetricWeightsMissingError",
    "aggregate",
    "dists_frames",
    "frame_values",
    "latent_cosine",
    "latent_relative_l2",
    "lpips_frames",
    "metric_spec",
    "metric_weights",
    "ms_ssim3_frames",
    "ms_ssim_frames",
    "parse_score_key",
    "psnr_frames",
    "score_key",
    "score_latents",
    "score_videos",
    "ssim_frames",
]
