"""ROC statistics of the DiFR method, with scores turned into "badness" (higher = more suspicious).

For a lower-is-better metric (a distance) the badness is the score; for a higher-is-better one (a
similarity) it is the negated score. A pair is flagged when its badness is strictly above the
threshold, so a threshold ``t`` on the badness is the validator's threshold on the score with
ties passing (``ditproof.validation.policy.Threshold.passes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    fpr = np.array([(benign > t).mean() for t in thresholds])
    tpr = np.array([(malign > t).mean() for t in thresholds])
    return Roc(fpr=fpr, tpr=tpr, thresholds=thresholds)


def auc(benign: np.ndarray, malign: np.ndarray) -> float:
    """Area under the ROC: P(malign badness > benign badness) + ½ P(equal) (Mann–Whitney)."""
    if benign.size == 0 or malign.size == 0:
        raise ValueError("AUC needs at least one benign and one malign score")
    greater = (malign[:, None] > benign[None, :]).sum()
    equal = (malign[:, None] == benign[None, :]).sum()
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
