"""ROC statistics of the DiFR method, with scores turned into "badness" (higher = more suspicious).

For a lower-is-better metric (a distance) the badness is the score; for a higher-is-better one (a
similarity) it is the negated score. A pair is flagged when its badness is strictly above the
threshold, so a threshold ``t`` on the badness is the validator's threshold on the score with
ties passing (``ditproof.validation.policy.Threshold.passes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import beta


@dataclass(frozen=True)
class Roc:
    """A ROC curve: false and true positive rates as the threshold goes from +inf down."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(benign: np.ndarray, malign: np.ndarray) -> Roc:
    """ROC of flagging ``badness > t``, one point per distinct value, starting at (0, 0).

    Raises:
        ValueError: when either side is empty.
    """
    if benign.size == 0 or malign.size == 0:
        raise ValueError("ROC needs at least one benign and one malign score")
    values = np.unique(np.concatenate([benign, malign]))[::-1]
    # Flag when badness > t: thresholds from above the maximum down to just below each value.
    thresholds = np.concatenate([[np.inf], values[1:], [-np.inf]]) if values.size > 1 else np.array([np.inf, -np.inf])
    return Roc(fpr=_share_above(benign, thresholds), tpr=_share_above(malign, thresholds), thresholds=thresholds)


def _share_above(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, the share of ``scores`` above t (sorted once: no scores × thresholds table)."""
    ordered = np.sort(scores)
    return (ordered.size - np.searchsorted(ordered, thresholds, side="right")) / ordered.size


def auc(benign: np.ndarray, malign: np.ndarray) -> float:
    """Area under the ROC: P(malign badness > benign badness) + ½ P(equal) (Mann–Whitney)."""
    if benign.size == 0 or malign.size == 0:
        raise ValueError("AUC needs at least one benign and one malign score")
    ordered = np.sort(benign)
    below = np.searchsorted(ordered, malign, side="left")  # benign scores under each malign one
    at_or_below = np.searchsorted(ordered, malign, side="right")
    greater, equal = int(below.sum()), int((at_or_below - below).sum())
    return float((greater + 0.5 * equal) / (benign.size * malign.size))


def clopper_pearson_upper(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial rate (exact, Clopper–Pearson)."""
    if trials <= 0:
        return 1.0
    if failures >= trials:
        return 1.0
    return float(beta.ppf(confidence, failures + 1, trials - failures))


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold at a false-positive target and what it achieves on the benign pool."""

    threshold: float
    false_positives: int
    benign: int
    fpr: float
    fpr_upper: float


def threshold_at_fpr(benign: np.ndarray, target: float, confidence: float = 0.95) -> OperatingPoint:
    """The lowest badness threshold whose empirical FPR is at most ``target``.

    With ``n`` benign scores, at most ``k = floor(target · n)`` of them may be flagged: the
    threshold is the ``(n − k)``-th smallest badness (so ties with it pass). The FPR's upper
    confidence bound is Clopper–Pearson at ``confidence``: with few benign samples it stays far
    above the target, which is reported rather than hidden.
    """
    if benign.size == 0:
        raise ValueError("a threshold needs at least one benign score")
    ordered = np.sort(benign)
    allowed = math.floor(target * ordered.size + 1e-12)
    threshold = float(ordered[ordered.size - 1 - allowed])
    flagged = int((benign > threshold).sum())
    return OperatingPoint(
        threshold=threshold,
        false_positives=flagged,
        benign=int(benign.size),
        fpr=flagged / benign.size,
        fpr_upper=clopper_pearson_upper(flagged, int(benign.size), confidence),
    )


def clopper_pearson_lower(successes: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound of a binomial rate (exact, Clopper–Pearson)."""
    if trials <= 0 or successes <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, successes, trials - successes + 1))


ThresholdRule = Literal["empirical", "conformal", "bounded"]
THRESHOLD_RULES: tuple[ThresholdRule, ...] = ("empirical", "conformal", "bounded")
BOUND_CONFIDENCE = 0.95
"""The confidence of the ``bounded`` rule's bound."""


def allowed_false_positives(n: int, target: float, rule: ThresholdRule = "empirical") -> int:
    """How many of ``n`` benign scores a threshold at ``target`` may flag.

    * ``empirical``: ``floor(target · n)`` — the in-sample FPR is at most the target, but a new
      score is flagged more often than that (the threshold was fitted to these scores);
    * ``conformal``: the threshold is the ``ceil((n + 1)(1 − target))``-th smallest score, so a new
      score exchangeable with the ``n`` (here: a new prompt's pair) exceeds it with probability at
      most ``target`` on average over calibration sets (split conformal). Below
      ``n = 1/target − 1`` no threshold can promise that; the rule then takes the maximum.
    * ``bounded``: the most that keeps the 95% upper bound of a new score's exceedance probability
      at or below ``target``. A threshold that ``a`` of ``n`` exchangeable scores exceed leaves a
      new one an exceedance probability distributed as Beta(a + 1, n − a), whose 95% quantile is
      the Clopper–Pearson bound of ``a`` in ``n``: the largest ``a`` with that bound ≤ ``target``
      (a bound, not an average, at the target: about half the conformal rule's ``a``). Below
      ``n = ln(0.05)/ln(1 − target)`` (299 at 1%) even the maximum's bound is above the target;
      the rule then takes the maximum.
    """
    if rule == "empirical":
        return math.floor(target * n + 1e-12)
    if rule == "bounded":
        low, high = 0, n  # clopper_pearson_upper(a, n) grows with a: the largest a at or under target
        while low < high:
            middle = (low + high + 1) // 2
            if clopper_pearson_upper(middle, n, BOUND_CONFIDENCE) <= target:
                low = middle
            else:
                high = middle - 1
        return low
    rank = math.ceil((n + 1) * (1.0 - target) - 1e-9)
    return max(n - rank, 0)


def threshold_value(benign: np.ndarray, target: float, rule: ThresholdRule = "empirical") -> float:
    """The threshold alone (no bound): the ``(n − allowed)``-th smallest badness (see :func:`allowed_false_positives`)."""
    if benign.size == 0:
        raise ValueError("a threshold needs at least one benign score")
    allowed = allowed_false_positives(int(benign.size), target, rule)
    return float(np.partition(benign, benign.size - 1 - allowed)[benign.size - 1 - allowed])


def prompt_splits(prompts: int, repeats: int, seed: int, train_fraction: float = 0.5) -> np.ndarray:
    """Random splits of ``prompts`` prompts into training and test sets, one row per repeat.

    Returns a boolean matrix ``(repeats, prompts)``: ``True`` marks a training prompt. Every split
    has ``round(train_fraction · prompts)`` training prompts (at least one, and at least one test
    prompt); the rows come from ``numpy.random.default_rng(seed)``, so a seed gives the same splits.

    Raises:
        ValueError: fewer than two prompts, no repeat, or a fraction outside (0, 1).
    """
    if prompts < 2:
        raise ValueError(f"splitting by prompt needs at least 2 prompts, got {prompts}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    train = min(max(round(train_fraction * prompts), 1), prompts - 1)
    rng = np.random.default_rng(seed)
    masks = np.zeros((repeats, prompts), dtype=bool)
    for row in masks:
        row[rng.permutation(prompts)[:train]] = True
    return masks


def bootstrap_counts(prompts: int, resamples: int, seed: int) -> np.ndarray:
    """Cluster-bootstrap weights: how often each prompt is drawn in each resample.

    Each resample draws ``prompts`` prompts with replacement; a pair counts as many times as its
    prompt was drawn, so all pairs of a prompt move together (the unit of independence is the
    prompt, not the pair). Returns an integer matrix ``(resamples, prompts)`` whose rows sum to
    ``prompts``.
    """
    if prompts < 1 or resamples < 1:
        raise ValueError(f"a bootstrap needs prompts and resamples >= 1, got {prompts} and {resamples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, prompts, size=(resamples, prompts))
    counts = np.zeros((resamples, prompts), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(resamples), prompts), draws.ravel()), 1)
    return counts


def bootstrap_rates(flags: np.ndarray, prompt: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The rate of ``flags`` in every cluster-bootstrap resample (``counts`` from :func:`bootstrap_counts`).

    ``prompt[i]`` is the prompt index of pair ``i``. A resample that drew none of the pairs' prompts
    has no rate; it is left out (NaN), so the quantiles are over the resamples that hold pairs.
    """
    prompts = counts.shape[1]
    hits = np.bincount(prompt, weights=flags.astype(np.float64), minlength=prompts)
    sizes = np.bincount(prompt, minlength=prompts).astype(np.float64)
    drawn = counts @ sizes
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(drawn > 0, (counts @ hits) / drawn, np.nan)


ROC_FPR_GRID = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
"""False-positive rates at which an analysis keeps its ROC curves (enough to plot; small files)."""


def tpr_at_fprs(benign: np.ndarray, malign: np.ndarray, fprs: tuple[float, ...] = ROC_FPR_GRID) -> list[float]:
    """The highest TPR whose FPR is at most each of ``fprs`` (the ROC's upper envelope, sampled)."""
    roc = roc_curve(benign, malign)
    return [float(roc.tpr[roc.fpr <= f + 1e-12].max()) for f in fprs]
