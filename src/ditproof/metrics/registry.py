"""The metrics ditproof knows, their direction, and one call that scores two videos.

Scores are named ``"{metric}:{statistic}"`` (for example ``lpips_alex:worst``,
``latent_rel_l2:value``): these keys appear in verdicts and in thresholds files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from ditproof.errors import InvalidInputError
from ditproof.metrics import functional as fn
from ditproof.metrics.aggregate import aggregate, frame_statistics
from ditproof.metrics.frames import FrameArray, check_pair
from ditproof.metrics.functional import DEFAULT_BATCH

Direction = Literal["higher-is-better", "lower-is-better"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric: what it compares, which way is better, whether it needs weight files."""

    name: str
    kind: Literal["frames", "latent", "segment", "trajectory"]
    higher_is_better: bool
    learned: bool
    description: str

    @property
    def direction(self) -> Direction:
        """``higher-is-better`` for similarities, ``lower-is-better`` for distances."""
        return "higher-is-better" if self.higher_is_better else "lower-is-better"

    @property
    def statistics(self) -> tuple[str, ...]:
        """The statistics this metric reports (``value`` for latent metrics)."""
        return frame_statistics(self.higher_is_better) if self.kind == "frames" else ("value",)


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("psnr", "frames", True, False, "PSNR in dB (200 for identical frames)"),
        MetricSpec("ssim", "frames", True, False, "SSIM, Gaussian window 11, σ 1.5"),
        MetricSpec("ms_ssim", "frames", True, False, "MS-SSIM, 5 scales, window 11 (frames ≥ 176 px)"),
        MetricSpec("ms_ssim3", "frames", True, False, "MS-SSIM, 3 scales, window 7 (frames ≥ 28 px)"),
        MetricSpec("lpips_alex", "frames", False, True, "LPIPS v0.1, AlexNet backbone"),
        MetricSpec("lpips_vgg", "frames", False, True, "LPIPS v0.1, VGG16 backbone"),
        MetricSpec("dists", "frames", False, True, "DISTS, VGG16 backbone with L2 pooling"),
        MetricSpec("latent_rel_l2", "latent", False, False, "‖x − ref‖ / ‖ref‖ of the final latents"),
        MetricSpec("latent_cosine", "latent", True, False, "cosine similarity of the final latents"),
        # Decided on by the checkpoint and spot-check modes (ditproof.validation.checkpoints), not step 6.
        MetricSpec(
            "latent_rel_l2_segment",
            "segment",
            False,
            False,
            "worst ‖x − ref‖ / ‖ref‖ over a re-run trajectory segment's end state (latent and solver history)",
        ),
        # Decided on per committed step by a full regeneration in another class
        # (ditproof.validation.trajectory), thresholds per trajectory position.
        MetricSpec(
            "latent_rel_l2_checkpoint",
            "trajectory",
            False,
            False,
            "‖x − ref‖ / ‖ref‖ of the executor's committed checkpoint latent and the regeneration's at that step",
        ),
        MetricSpec(
            "fingerprint_rel_l2",
            "trajectory",
            False,
            False,
            "relative distance of the per-step JL fingerprints (an estimate of the latents' relative L2)",
        ),
    )
}

FRAME_METRICS = tuple(name for name, spec in METRICS.items() if spec.kind == "frames")
LATENT_METRICS = tuple(name for name, spec in METRICS.items() if spec.kind == "latent")
TRAJECTORY_KINDS = ("segment", "trajectory")
"""Metric kinds measured along the trajectory: their thresholds may name a position on it."""


def metric_spec(name: str) -> MetricSpec:
    """The spec of metric ``name``.

    Raises:
        InvalidInputError: naming the allowed metrics.
    """
    if name not in METRICS:
        raise InvalidInputError(f"metric: got {name!r}; allowed: {', '.join(METRICS)}")
    return METRICS[name]


def score_key(metric: str, statistic: str) -> str:
    """The key of one score: ``"{metric}:{statistic}"``."""
    return f"{metric}:{statistic}"


def parse_score_key(key: str) -> tuple[str, str]:
    """Splits ``"metric:statistic"``, checking both parts.

    Raises:
        InvalidInputError: unknown metric, or a statistic the metric does not report.
    """
    metric, _, statistic = key.partition(":")
    spec = metric_spec(metric)
    if statistic not in spec.statistics:
        raise InvalidInputError(f"statistic of {metric}: got {statistic!r}; allowed: {', '.join(spec.statistics)}")
    return metric, statistic


def frame_values(
    metric: str, a: FrameArray, b: FrameArray, device: str = "cpu", batch: int = DEFAULT_BATCH
) -> torch.Tensor:
    """Per-frame values ``(F,)`` of frame metric ``metric`` between videos ``a`` and ``b``."""
    spec = metric_spec(metric)
    if spec.kind != "frames":
        raise InvalidInputError(f"metric: got {metric!r}, a latent metric; allowed here: {', '.join(FRAME_METRICS)}")
    calls: dict[str, Callable[[], torch.Tensor]] = {
        "psnr": lambda: fn.psnr_frames(a, b, batch=batch),
        "ssim": lambda: fn.ssim_frames(a, b, device, batch),
        "ms_ssim": lambda: fn.ms_ssim_frames(a, b, device, batch),
        "ms_ssim3": lambda: fn.ms_ssim3_frames(a, b, device, batch),
        "lpips_alex": lambda: fn.lpips_frames(a, b, "alex", device, batch),
        "lpips_vgg": lambda: fn.lpips_frames(a, b, "vgg", device, batch),
        "dists": lambda: fn.dists_frames(a, b, device, batch),
    }
    return calls[metric]()


def score_videos(
    metrics: Iterable[str],
    submitted: FrameArray,
    reference: FrameArray,
    device: str = "cpu",
    batch: int = DEFAULT_BATCH,
) -> dict[str, float]:
    """Every statistic of each frame metric, keyed ``"{metric}:{statistic}"``."""
    check_pair(submitted, reference)
    scores: dict[str, float] = {}
    for metric in metrics:
        spec = metric_spec(metric)
        values = frame_values(metric, submitted, reference, device, batch)
        for statistic, value in aggregate(values, spec.higher_is_better).items():
            scores[score_key(metric, statistic)] = value
    return scores


def score_latents(submitted: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Both latent metrics between the executor's final latent and the validator's."""
    return {
        score_key("latent_rel_l2", "value"): fn.latent_relative_l2(submitted, reference),
        score_key("latent_cosine", "value"): fn.latent_cosine(submitted, reference),
    }


def metric_weights(metric: str, device: str = "cpu") -> dict[str, str]:
    """The sha256 of the weight files a learned metric uses here (role → sha256); {} for the others.

    Raises:
        MetricWeightsMissingError / MetricWeightsInvalidError: see ``ditproof.metrics.weights``.
    """
    from ditproof.metrics.dists import load_dists
    from ditproof.metrics.lpips import load_lpips

    if metric in ("lpips_alex", "lpips_vgg"):
        return load_lpips(metric.removeprefix("lpips_"), device)[1]
    if metric == "dists":
        return load_dists(device)[1]
    metric_spec(metric)
    return {}
