"""Aggregation of per-frame scores into a video's statistics.

Three statistics per frame metric, named the same for every metric so that thresholds can name
them:

* ``mean``: the mean over frames;
* ``worst``: the worst frame (the minimum of a similarity, the maximum of a distance), which
  catches a single changed frame that the mean dilutes;
* ``p05`` (similarities) / ``p95`` (distances): the 5th percentile of a similarity or the 95th of
  a distance, i.e. the bad tail without its single worst frame (linear interpolation between
  order statistics, numpy's default "linear" method, in float64).

Latent metrics are one number per video, statistic ``value``.
"""

from __future__ import annotations

import torch

from ditproof.errors import InvalidInputError

TAIL_QUANTILE = 0.05


def tail_statistic(higher_is_better: bool) -> str:
    """The name of the low-tail statistic: ``p05`` for similarities, ``p95`` for distances."""
    return "p05" if higher_is_better else "p95"


def frame_statistics(higher_is_better: bool) -> tuple[str, ...]:
    """The statistics a frame metric reports."""
    return ("mean", "worst", tail_statistic(higher_is_better))


def aggregate(values: torch.Tensor, higher_is_better: bool) -> dict[str, float]:
    """Mean, worst frame and low-tail percentile of per-frame ``values`` ``(F,)``.

    Raises:
        InvalidInputError: on an empty or non-finite input.
    """
    v = values.detach().to("cpu", torch.float64).reshape(-1)
    if v.numel() == 0:
        raise InvalidInputError("frame scores: got none; allowed: at least one frame")
    if not torch.isfinite(v).all():
        raise InvalidInputError(f"frame scores: got non-finite values {v.tolist()}; allowed: finite values")
    quantile = TAIL_QUANTILE if higher_is_better else 1.0 - TAIL_QUANTILE
    return {
        "mean": float(v.mean()),
        "worst": float(v.min() if higher_is_better else v.max()),
        tail_statistic(higher_is_better): float(torch.quantile(v, quantile, interpolation="linear")),
    }
