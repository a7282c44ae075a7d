"""A PoC policy derived from target error rates and per-nonce distances.

Inputs: the L2 distance of every nonce under each honest runtime (another batch size, attention
kernel, card) and each cheat class (FP8 weights, a layer skipped, …), all against one reference
run of the same nonces; and the targets:

- ``honest_round_rate``: the largest share of rounds in which an honest node may be called fraud
  (default 0.001). It becomes the policy's ``p_value_threshold``.
- ``cheat_fraction`` and ``detection``: a node that cheats on that share of its nonces must be
  called fraud in at least ``detection`` of rounds (defaults 0.05 and 0.99),
- at ``sample_size`` sampled nonces per round (default 200, Gonka's ValidationSampleSize).

The rule, for a candidate ``dist_threshold`` t (a nonce mismatches when its distance exceeds t):

1. The honest mismatch rate is counted **per nonce**: a nonce counts once when any honest runtime
   puts it beyond t (runtimes repeat the same nonces, so their exceedances are not independent
   trials). ``p_mismatch`` is the one-sided Clopper–Pearson upper bound (95%) of that count over
   the nonces measured, so an honest node whose true rate is at most ``p_mismatch`` is called
   fraud in at most ``honest_round_rate`` of rounds.
2. The fraud test calls a round fraud from ``k`` mismatches of ``sample_size``: the smallest ``k``
   whose binomial p-value under ``p_mismatch`` falls below ``p_value_threshold``.
3. A node cheating on a fraction f of its nonces with cheat class c mismatches at the rate
   ``(1 − f)·p̂ + f·q_c(t)`` (p̂ the honest point estimate, q_c the class's share of nonces beyond
   t); its detection is ``P(Binomial(sample_size, rate) ≥ k)``.

The chosen t maximises the smallest detection over the cheat classes at ``cheat_fraction``, then
the second smallest, and so on; among the thresholds that tie (the counts only change at measured
distances), the widest such interval is taken and t is its geometric middle, so that runtimes or cheats not measured have
room on both sides. Per cheat class the power curve (detection against f) and the smallest f
caught in ``detection`` of rounds are reported; a class that cannot reach the target at any
threshold is named with that smallest fraction.

Pure arithmetic (numpy): no model, no torch. :mod:`ditproof.poc.calibrate` measures the distances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ditproof.protocol.poc import PocPolicy, PolicyDerivation, PolicyTargets, PowerCurve

CURVE_FRACTIONS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
MAX_THRESHOLD = 2.0  # unit vectors are at most 2 apart


def binomial_p_value(mismatches: int, checked: int, p: float) -> float:
    """``P(X ≥ mismatches)`` for ``X ~ Binomial(checked, p)`` (exact sum in log space)."""
    if not 0 <= mismatches <= checked:
        raise ValueError(f"mismatches: got {mismatches}; allowed: 0 to checked ({checked})")
    if mismatches == 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)

    def tail(indices: range) -> float:
        terms = [
            math.lgamma(checked + 1)
            - math.lgamma(i + 1)
            - math.lgamma(checked - i + 1)
            + i * log_p
            + (checked - i) * log_q
            for i in indices
        ]
        top = max(terms)
        return math.exp(top) * sum(math.exp(term - top) for term in terms)

    # The side of the mean the threshold lies on is summed (the other side's sum would round).
    if mismatches - 1 < checked * p:
        return min(1.0, max(0.0, 1.0 - tail(range(0, mismatches))))
    return min(1.0, tail(range(mismatches, checked + 1)))


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper bound of a rate seen ``k`` times in ``n`` (bisection)."""
    if k >= n:
        return 1.0
    low, high = k / n, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        # P(X <= k | mid) = 1 - P(X >= k + 1 | mid); the bound is where this equals 1 - confidence.
        if 1.0 - binomial_p_value(k + 1, n, mid) > 1.0 - confidence:
            low = mid
        else:
            high = mid
    return high


def critical_count(n: int, p_mismatch: float, fraud_threshold: float) -> int:
    """The fewest mismatches of ``n`` whose p-value falls below ``fraud_threshold`` (n + 1 if none)."""
    for k in range(n + 1):
        if binomial_p_value(k, n, p_mismatch) < fraud_threshold:
            return k
    return n + 1


def detection_probability(rate: float, n: int, critical: int) -> float:
    """``P(Binomial(n, rate) ≥ critical)``: how often a sample of ``n`` flags a node mismatching at ``rate``."""
    if critical > n:
        return 0.0
    if rate <= 0.0:
        return 0.0 if critical > 0 else 1.0
    if rate >= 1.0:
        return 1.0
    return binomial_p_value(critical, n, rate)


def _survival(rates: np.ndarray, n: int, critical: np.ndarray) -> np.ndarray:
    """``P(Binomial(n, rates[i]) ≥ critical[i])`` for arrays of rates and critical counts."""
    i = np.arange(n + 1, dtype=np.float64)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in range(n + 1)])
    r = np.clip(rates, 1e-300, 1.0 - 1e-16)[:, None]
    pmf = np.exp(log_choose[None, :] + i[None, :] * np.log(r) + (n - i[None, :]) * np.log1p(-r))
    tail = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]  # tail[:, k] = P(X >= k)
    padded = np.concatenate([tail, np.zeros((len(rates), 1))], axis=1)
    out = padded[np.arange(len(rates)), np.minimum(critical, n + 1)]
    out = np.where(rates <= 0.0, (critical <= 0).astype(np.float64), out)
    return np.clip(np.where(rates >= 1.0, (critical <= n).astype(np.float64), out), 0.0, 1.0)


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array), array, np.inf)


def _exceeding(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of ``sorted_values`` lie strictly above each threshold."""
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="right")


def smallest_fraction(q: float, p_hat: float, n: int, critical: int, detection: float) -> float | None:
    """The smallest cheated fraction f whose rate ``(1 − f)·p̂ + f·q`` is flagged in ``detection`` of
    rounds (None when even f = 1 is not)."""
    if detection_probability(q, n, critical) < detection:
        return None
    if detection_probability(p_hat, n, critical) >= detection:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if detection_probability((1 - mid) * p_hat + mid * q, n, critical) >= detection:
            high = mid
        else:
            low = mid
    return high


def derive_policy(
    honest: Mapping[str, Sequence[float] | np.ndarray],
    cheats: Mapping[str, Sequence[float] | np.ndarray],
    targets: PolicyTargets,
) -> PolicyDerivation:
    """The policy the targets ask for, given per-nonce distances (see the module docstring).

    Args:
        honest: per honest runtime, the distance of each nonce (same nonces, same order, in all).
        cheats: per cheat class, likewise.
        targets: the error rates to meet.

    Raises:
        ValueError: no honest runtime, or runtimes of different nonce counts.
    """
    if not honest:
        raise ValueError("honest: got no runtime; allowed: at least one honest runtime's per-nonce distances")
    sizes = {name: len(values) for name, values in [*honest.items(), *cheats.items()]}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(
            f"per-nonce distances: got counts {sizes}; allowed: every runtime measured on the same nonces (one "
            "count, at least 1)"
        )
    worst = np.max(np.stack([_clean(v) for v in honest.values()]), axis=0)
    nonces = int(worst.size)
    cheat_arrays = {name: np.sort(_clean(v)) for name, v in cheats.items()}
    honest_sorted = np.sort(worst)
    pool = np.concatenate([honest_sorted, *cheat_arrays.values()])
    finite = pool[np.isfinite(pool)]
    floor = targets.min_threshold
    candidates = np.unique(np.clip(finite[finite >= floor], floor, MAX_THRESHOLD))
    candidates = np.unique(np.concatenate([[floor], candidates]))
    candidates = candidates[candidates < MAX_THRESHOLD]
    n, alpha = targets.sample_size, targets.honest_round_rate

    k_honest = _exceeding(honest_sorted, candidates)
    bound_of: dict[int, float] = {}
    critical_of: dict[int, int] = {}
    for k in np.unique(k_honest):
        bound_of[int(k)] = upper_bound(int(k), nonces, targets.confidence)
        critical_of[int(k)] = critical_count(n, bound_of[int(k)], alpha)
    critical = np.array([critical_of[int(k)] for k in k_honest])
    p_hat = k_honest / nonces
    f = targets.cheat_fraction
    if cheat_arrays:
        detections = np.stack(
            [
                _survival((1 - f) * p_hat + f * _exceeding(values, candidates) / nonces, n, critical)
                for values in cheat_arrays.values()
            ]
        )
        good = _lexicographic_best(np.sort(detections, axis=0))
    else:
        good = k_honest == k_honest.min()  # no cheat measured: keep the honest nonces in
    # The widest run of consecutive candidates that reach the best score (log scale).
    runs: list[tuple[int, int]] = []
    start = None
    for index, ok in enumerate(good):
        if ok and start is None:
            start = index
        if not ok and start is not None:
            runs.append((start, index - 1))
            start = None
    if start is not None:
        runs.append((start, len(good) - 1))

    def upper_end(run: tuple[int, int]) -> float:
        return float(candidates[run[1] + 1]) if run[1] + 1 < len(candidates) else MAX_THRESHOLD

    low_index, high_index = max(runs, key=lambda run: math.log(upper_end(run)) - math.log(candidates[run[0]]))
    low, high = float(candidates[low_index]), upper_end((low_index, high_index))
    threshold = _round_inside(math.sqrt(low * high), low, high)
    chosen = int(np.searchsorted(candidates, threshold, side="right") - 1)
    k_h = int(k_honest[chosen])
    p_mismatch, k_crit = bound_of[k_h], critical_of[k_h]
    p_point = k_h / nonces
    curves = []
    warnings = []
    for name, values in cheat_arrays.items():
        q = float((values > threshold).sum() / nonces)
        detection = [detection_probability((1 - x) * p_point + x * q, n, k_crit) for x in CURVE_FRACTIONS]
        smallest = smallest_fraction(q, p_point, n, k_crit, targets.detection)
        curves.append(
            PowerCurve(
                name=name,
                mismatch_rate=q,
                fractions=list(CURVE_FRACTIONS),
                detection=detection,
                detection_at_target=detection_probability((1 - f) * p_point + f * q, n, k_crit),
                smallest_fraction=smallest,
            )
        )
        if smallest is None or smallest > f:
            reach = "no fraction" if smallest is None else f"a fraction of {smallest:.3f} or more"
            warnings.append(
                f"{name}: cheating on {f:.0%} of nonces is caught in {curves[-1].detection_at_target:.3f} of rounds, "
                f"below {targets.detection}; {reach} is caught in {targets.detection} of rounds (its nonces exceed "
                f"the threshold at rate {q:.3f})"
            )
    if not cheat_arrays:
        warnings.append("no cheat was measured: the threshold only keeps honest nonces in")
    policy = PocPolicy(
        dist_threshold=threshold,
        p_mismatch=float(f"{p_mismatch:.4g}") if p_mismatch < 1 else 0.999,
        fraud_threshold=alpha,
        sample_size=n,
        max_porosity=targets.max_porosity,
    )
    return PolicyDerivation(
        targets=targets,
        policy=policy,
        nonces=nonces,
        honest_runtimes=sorted(honest),
        honest_exceeding=k_h,
        honest_rate=p_point,
        honest_rate_bound=p_mismatch,
        critical_mismatches=k_crit,
        honest_round_rate=detection_probability(p_point, n, k_crit),
        honest_round_rate_bound=detection_probability(p_mismatch, n, k_crit),
        threshold_interval=(low, high),
        honest_max=float(worst.max()),
        curves=curves,
        warnings=warnings,
    )


def _lexicographic_best(sorted_columns: np.ndarray) -> np.ndarray:
    """Which columns hold the best ascending-sorted detections: the highest smallest detection,
    then among those the highest second smallest, and so on (a weak class does not leave the
    others' detection unweighed)."""
    good = np.ones(sorted_columns.shape[1], dtype=bool)
    for row in sorted_columns:
        best = row[good].max()
        good &= row >= best - 1e-12
    return good


def _round_inside(value: float, low: float, high: float) -> float:
    """``value`` to the fewest significant digits (3 or more) that keep it in ``[low, high)``."""
    for digits in range(3, 17):
        rounded = float(f"{value:.{digits}g}")
        if low <= rounded < high:
            return rounded
    return value
