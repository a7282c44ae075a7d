"""Least-squares fit of the per-pass cost ``alpha·N² + beta·N + gamma`` on relative error.

Forward times span more than two orders of magnitude between the smallest and the largest
sizes, so an ordinary fit would spend all its accuracy on the largest N. Minimizing
``Σ ((predicted_i − t_i) / t_i)²`` instead weights every size equally in relative terms: it is
an ordinary least-squares problem on rows divided by ``t_i`` with a target of ones.

The coefficients are constrained to be non-negative (a price must not fall as N grows): with
at most three unknowns, every subset of free coefficients is solved and the best feasible one
kept, which is the exact non-negative solution.

Small passes do not fill a GPU: their time is bound by kernel launches and stays flat (45 ms
from N = 1 to N ≈ 400 for the A14B expert on an H100) before the quadratic takes over, and no
quadratic follows both regimes within a few percent. :func:`fit_floored` therefore also fits
a floor: ``max(floor, alpha·N² + beta·N + gamma)``, trying each split of the sizes (sorted by
N) into a floor part and a quadratic part and keeping the split with the least relative error
over all sizes. The split with no floor part is the plain three-term fit, so the floored fit is
never worse than it.
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


def _squared(cost: PassCost, patches: Sequence[int], seconds: Sequence[float]) -> float:
    return sum(e * e for e in relative_errors(cost, patches, seconds))


def fit_floored(patches: Sequence[int], seconds: Sequence[float]) -> PassCost:
    """Fits ``max(floor, alpha·N² + beta·N + gamma)`` on relative error (see the module doc).

    For a split putting the ``k`` smallest sizes on the floor, the floor is their relative
    least-squares constant (``Σ 1/t / Σ 1/t²``) and the quadratic is fitted to the others
    (at least 3 distinct sizes); the split with the least error over all sizes is kept.
    """
    _check(patches, seconds, 3)
    order = sorted(range(len(patches)), key=lambda i: patches[i])
    n = [int(patches[i]) for i in order]
    t = [float(seconds[i]) for i in order]
    best = fit_pass_cost(n, t, terms=3)
    best_error = _squared(best, n, t)
    for k in range(1, len(n)):
        if len(set(n[k:])) < 3:
            break
        if n[k] == n[k - 1]:
            continue  # one size cannot be on both sides
        floor = sum(1.0 / x for x in t[:k]) / sum(1.0 / (x * x) for x in t[:k])
        candidate = fit_pass_cost(n[k:], t[k:], terms=3).model_copy(update={"floor": floor})
        error = _squared(candidate, n, t)
        # A floor must earn its place: ties (a floor equal to the quadratic) keep the plain form.
        if error < best_error - 1e-12:
            best, best_error = candidate, error
    return best
