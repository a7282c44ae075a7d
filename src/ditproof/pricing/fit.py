"""Least-squares fit of the per-pass cost ``alpha·N² + beta·N + gamma`` on relative error.

Forward times span more than two orders of magnitude between the smallest and the largest
sizes, so an ordinary fit would spend all its accuracy on the largest N. Minimizing
``Σ ((predicted_i − t_i) / t_i)²`` instead weights every size equally in relative terms: it is
an ordinary least-squares problem on rows divided by ``t_i`` with a target of ones.

The coefficients are constrained to be non-negative (a price must not fall as N grows): with
at most three unknowns, every subset of free coefficients is solved and the best feasible one
kept, which is the exact non-negative solution.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from ditproof.errors import InvalidInputError
from ditproof.protocol.pricing import FitQuality, PassCost

TERMS = ("alpha", "beta", "gamma")


def _design(patches: Sequence[int], terms: int) -> np.ndarray:
    n = np.asarray(patches, dtype=np.float64)
    columns = [n * n, n, np.ones_like(n)][:terms]
    return np.stack(columns, axis=1)


def _check(patches: Sequence[int], seconds: Sequence[float], terms: int) -> None:
    if terms not in (2, 3):
        raise InvalidInputError(f"terms: got {terms}; allowed: 2 (alpha, beta) or 3 (alpha, beta, gamma)")
    if len(patches) != len(seconds):
        raise InvalidInputError(f"seconds: got {len(seconds)} values for {len(patches)} sizes; allowed: one per size")
    if len(set(patches)) < terms:
        raise InvalidInputError(
            f"patches: got {len(set(patches))} distinct sizes; allowed: at least {terms} for a {terms}-term fit"
        )
    for n, t in zip(patches, seconds, strict=True):
        if n < 1:
            raise InvalidInputError(f"patches: got {n}; allowed: integers ≥ 1")
        if not math.isfinite(t) or t <= 0:
            raise InvalidInputError(f"seconds: got {t} at N={n}; allowed: finite times above 0")


def fit_pass_cost(patches: Sequence[int], seconds: Sequence[float], terms: int = 3) -> PassCost:
    """Fits the per-pass cost to measured forward times, minimizing the relative error.

    Args:
        patches: latent patch counts N of the measured sizes.
        seconds: the measured seconds of one forward pass at each size.
        terms: 3 for ``alpha·N² + beta·N + gamma``; 2 for ``alpha·N² + beta·N`` (gamma = 0).

    Returns:
        The non-negative coefficients with the least sum of squared relative errors.

    Raises:
        InvalidInputError: too few distinct sizes, or non-positive times.
    """
    _check(patches, seconds, terms)
    t = np.asarray(seconds, dtype=np.float64)
    design = _design(patches, terms) / t[:, None]
    # Columns differ by up to ~10^10 (N² vs 1): scale them to unit norm so lstsq is well conditioned.
    scale = np.linalg.norm(design, axis=0)
    scaled = design / scale
    target = np.ones_like(t)
    best: tuple[float, np.ndarray] | None = None
    for size in range(terms, 0, -1):
        for free in itertools.combinations(range(terms), size):
            solution, *_ = np.linalg.lstsq(scaled[:, free], target, rcond=None)
            if np.any(solution < 0):
                continue
            full = np.zeros(terms)
            full[list(free)] = solution
            residual = float(np.sum((scaled @ full - target) ** 2))
            if best is None or residual < best[0] - 1e-15:
                best = (residual, full)
    if best is None:  # unreachable: a one-column fit of positive data has a positive solution
        raise InvalidInputError("no non-negative fit exists for these timings")
    coefficients = best[1] / scale
    values = dict(zip(TERMS, [*coefficients.tolist(), 0.0, 0.0][:3], strict=True))
    return PassCost(**values)


def relative_errors(cost: PassCost, patches: Sequence[int], seconds: Sequence[float]) -> list[float]:
    """``predicted / measured − 1`` at each size."""
    return [cost.seconds(n) / t - 1.0 for n, t in zip(patches, seconds, strict=True)]


def fit_quality(cost: PassCost, patches: Sequence[int], seconds: Sequence[float]) -> FitQuality:
    """The worst and RMS relative error of ``cost`` over the measured sizes."""
    errors = relative_errors(cost, patches, seconds)
    worst = max(range(len(errors)), key=lambda i: abs(errors[i]))
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    return FitQuality(max_rel_error=abs(errors[worst]), rms_rel_error=rms, worst_patches=int(patches[worst]))
