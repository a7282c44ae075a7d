"""Calibration of one score against one benign pool: in sample, out of sample and bootstrapped by prompt.

The unit of independence is the **prompt**: every configuration of a prompt starts from the same
noise and its benign distances move together (on the shipped model's Stage 1 run, Spearman 0.93
to 0.96 between configurations of a prompt), so a pool's pairs are not independent samples.
Three estimates stand side by side:

* **in sample**: the threshold at the target FPR on all of the pool's benign pairs (by the rule of
  :func:`~ditproof.experiment.stats.allowed_false_positives`: empirical or conformal) and the rates
  measured on the same pairs — optimistic, since the threshold was fitted to them;
* **out of sample**: ``R`` random splits of the prompts (``prompt_splits``); the threshold is
  fitted on the training prompts' benign pairs, FPR and each malign class's TPR are measured on the
  test prompts' pairs; mean and spread over the repeats;
* **bootstrap by prompt**: prompts resampled with replacement, all pairs of a prompt together
  (``bootstrap_counts``); the FPR at the in-sample threshold gets its 95% upper bound, each
  class's TPR its 95% lower bound. Beside it, the exact Clopper–Pearson bound with the prompt as
  the unit: the share of prompts with at least one false positive.

A score enters as *badness* (higher = more suspicious, flagged when strictly above the threshold).
Its badness may depend on the training prompts: a joint score over many positions (the full and
checkpoints modes' maximum over checkpoints or segments, :func:`normalised_max`) standardises each
position's distance by that position's benign **median** and the distance from it to the benign
**99th percentile**, both on the training prompts (:func:`column_standards`), then fits one
threshold on the maximum: a position's limit is its median plus the threshold times that width.
The training pairs' own joint scores are **cross-fitted**: each pair is standardised with the
medians and percentiles of the other training prompts (:data:`CROSS_FIT_FOLDS` folds by prompt),
so the threshold is fitted on scores that behave as a new prompt's would (a position's percentile
fitted on the very pairs it then judges keeps them inside it, and the joint FPR out of sample
overshoots: on the shipped model's GPU preview, 11.2% against 2.0% for the worst pool, 30 training
prompts). Measured and left: a scale without a centre (each position over its benign 90th
percentile). It puts the tight early positions of a trajectory (benign maximum 1.1–1.5× the
median) and the heavy-tailed middle ones (a few prompts whose trajectories spread, 4–13× the 99th
percentile) on one footing, so the heavy tails set the joint threshold and the early limits sat
at many times their benign maximum. On the same preview (worst pool, out of sample) the full mode
caught 28% of the cache pairs, 47% of FP8 and 32% of 39 steps for 40 with this standardisation,
against 16%, 18% and 12% under the 90th-percentile scale. A logarithmic standardisation did less
well in a trial, and breaks down where a position is exact for some prompts and not for others;
so did a Pareto tail fitted beyond each position's benign 90th percentile (on the GPU run's first
three tenths, 281 prompts: cache 26% and steps-39 30% instead of 22% and 19%, but high-noise-only 20% and
skip-block-low 19% instead of 93% and 75%, docs/experiment.md).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from ditproof.experiment.stats import (
    ThresholdRule,
    auc,
    bootstrap_rates,
    clopper_pearson_upper,
    threshold_value,
    tpr_at_fprs,
)

Badness = Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]
"""Training-prompt mask → badness of the pool's benign pairs and of each malign class's pairs."""


@dataclass(frozen=True)
class PoolScores:
    """One score over one benign pool and the malign classes, with each pair's prompt index."""

    benign_prompt: np.ndarray
    malign_prompt: dict[str, np.ndarray]
    badness: Badness
    trained: bool = False
    """Whether the badness depends on the training prompts (then it is recomputed per split)."""
    fitting: Callable[[np.ndarray], np.ndarray] | None = None
    """A training-prompt mask → the benign badness the threshold is fitted on, where it differs
    from ``badness``'s (a joint score's training pairs cross-fitted); None: ``badness``'s."""
    standards: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    """A joint score's training-prompt mask → each column's centre and width (NaN: a column
    without training values); None for a score of one column."""


def fixed(
    benign: np.ndarray, benign_prompt: np.ndarray, malign: dict[str, tuple[np.ndarray, np.ndarray]]
) -> PoolScores:
    """A score whose badness is given per pair (every frame or latent metric)."""
    malign_badness = {name: values for name, (values, _) in malign.items()}
    return PoolScores(
        benign_prompt=benign_prompt,
        malign_prompt={name: prompts for name, (_, prompts) in malign.items()},
        badness=lambda _train: (benign, malign_badness),
    )


NORMALISER_FLOOR = 1e-12
"""The least width a column with any spread gets."""
WIDTH_QUANTILE = 0.99
"""A column's width in a joint score: this quantile of its benign values minus their median."""
CROSS_FIT_FOLDS = 5
"""Folds (by prompt) of the training pairs' cross-fitted joint scores (module docstring)."""


def column_standards(benign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's centre (the median of its finite benign values) and width (their
    :data:`WIDTH_QUANTILE` quantile minus the median, at least :data:`NORMALISER_FLOOR`); width 0
    for a column whose every value is the same (a position the pool never moves: any larger
    distance there is flagged, as an exact match requires); NaN for a column without any value.

    A column whose quantile is its median but that moves above it on a few pairs (a position
    exact for all but under 1% of the prompts, as segments re-run with CFG batched are) takes its
    largest value minus the median as its width. The floor would put those few pairs at 10^8
    widths, their joint score would set the pool's threshold, and nothing could pass it."""
    centres = np.full(benign.shape[1], np.nan)
    widths = np.full(benign.shape[1], np.nan)
    # Columns without a missing value at once (numpy's median and quantile along an axis compute
    # each column as they would alone); the others one by one, over their finite values.
    whole = np.isfinite(benign).all(axis=0) if benign.shape[0] else np.zeros(benign.shape[1], dtype=bool)
    if whole.any():
        block = benign[:, whole]
        centres[whole] = np.median(block, axis=0)
        spread = np.quantile(block, WIDTH_QUANTILE, axis=0) - centres[whole]
        highest = block.max(axis=0)
        spread = np.where(spread > 0, spread, highest - centres[whole])
        still = highest == block.min(axis=0)
        widths[whole] = np.where(still, 0.0, np.maximum(spread, NORMALISER_FLOOR))
    for k in np.flatnonzero(~whole):
        column = benign[:, k][np.isfinite(benign[:, k])]
        if column.size:
            centres[k] = float(np.median(column))
            spread = float(np.quantile(column, WIDTH_QUANTILE)) - centres[k]
            highest = float(column.max())
            spread = spread if spread > 0 else highest - centres[k]
            widths[k] = 0.0 if highest == column.min() else max(spread, NORMALISER_FLOOR)
    return centres, widths


def _standardised(values: np.ndarray, centres: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``(values - centres) / widths`` with a missing value (NaN) at ``-inf``: it never decides a
    maximum. An unmeasurable one (``+inf``: a segment the validator could not re-run) stays
    ``+inf``: caught. Over a width of 0: a value at most the centre scores 0, any other ``+inf``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (values - centres) / widths
    still = (widths == 0) & np.isfinite(values)
    scaled[still & (values <= centres)] = 0.0
    scaled[still & (values > centres)] = np.inf
    scaled[np.isnan(scaled)] = -np.inf
    scaled[np.isposinf(values)] = np.inf
    return scaled


def _cross_fitted(
    benign: np.ndarray,
    benign_prompt: np.ndarray,
    train: np.ndarray,
    reduce: Callable[[np.ndarray], np.ndarray],
    widths: np.ndarray,
    scores: np.ndarray,
) -> np.ndarray:
    """``scores`` (every benign pair's joint score(s) under the training prompts' standards, whose
    widths are ``widths``) with each training pair's replaced by its score under the standards of
    the other folds' training pairs (folds by prompt index modulo :data:`CROSS_FIT_FOLDS`)."""
    in_train = train[benign_prompt]
    fold = benign_prompt % CROSS_FIT_FOLDS
    repeat = scores.size // max(benign.shape[0], 1)  # a spot check's draws per pair
    by_pair = scores.reshape(-1, repeat)  # a view: writing a pair's row writes its scores
    for k in range(CROSS_FIT_FOLDS):
        held = in_train & (fold == k)
        rest = in_train & (fold != k)
        if not held.any() or not rest.any():
            continue
        fold_centres, fold_widths = column_standards(benign[rest])
        # A position the other folds never moved but the training prompts did: the training width
        # (a held-out pair beyond it would otherwise score infinity, and no threshold could be fitted).
        fold_widths = np.where((fold_widths == 0) & (widths > 0), widths, fold_widths)
        folded = reduce(_standardised(benign[held], fold_centres, fold_widths))
        by_pair[held] = folded.reshape(-1, repeat)
    return scores


def _block_scaled(
    benign: np.ndarray,
    benign_prompt: np.ndarray,
    train: np.ndarray,
    widths: np.ndarray,
    standardised: np.ndarray,
    blocks: list[list[int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block rule's widths and standardised rows: each column's width times its block's factor,
    the block's largest cross-fitted maximum over the training pairs (1 for a column in no block,
    or a block without a positive finite maximum), so that every block reaches 1 at its own
    training maximum. Returns the widths, every benign pair's row over them, and the same rows with
    the training pairs' cross-fitted (one cross-fit serves the factors and the threshold's fit)."""
    crossed = _cross_fitted(benign, benign_prompt, train, lambda rows: rows, widths, standardised.copy())
    trained = crossed[train[benign_prompt]]
    factors = np.ones(benign.shape[1])
    for block in blocks:
        maxima = trained[:, block].max(axis=1)
        finite = maxima[np.isfinite(maxima)]
        if finite.size and finite.max() > 0:
            factors[block] = finite.max()
    return widths * factors, standardised / factors, crossed / factors


def _joint_scores(
    benign: np.ndarray,
    benign_prompt: np.ndarray,
    malign: dict[str, tuple[np.ndarray, np.ndarray]],
    reduce: Callable[[np.ndarray], np.ndarray],
    repeat: int,
    cross_fit: bool,
    blocks: list[list[int]] | None = None,
) -> PoolScores:
    """The :class:`PoolScores` of a joint score: each column standardised by
    :func:`column_standards` of the training prompts' benign pairs (each width times its block's
    factor, :func:`_block_scaled`, where ``blocks`` are given), then ``reduce`` gives each pair's
    ``repeat`` score(s); the training pairs' scores cross-fitted for the threshold unless
    ``cross_fit`` is False. One mask's standards and benign scores are computed once and shared by
    ``badness``, ``fitting`` and ``standards`` (the calibration asks all three per split)."""
    last: dict[bytes, tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray | None]] = {}

    def fit(train: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray | None]:
        """The mask's standards, benign scores and (a block rule's, already computed) cross-fitted scores."""
        key = train.tobytes()
        if key not in last:
            centres, widths = column_standards(benign[train[benign_prompt]])
            standardised = _standardised(benign, centres, widths)
            crossed = None
            if blocks is not None:
                widths, standardised, crossed = _block_scaled(
                    benign, benign_prompt, train, widths, standardised, blocks
                )
            last.clear()
            last[key] = ((centres, widths), reduce(standardised), None if crossed is None else reduce(crossed))
        return last[key]

    def badness(train: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        standards, scores, _ = fit(train)
        return scores, {name: reduce(_standardised(values, *standards)) for name, (values, _) in malign.items()}

    def fitting(train: np.ndarray) -> np.ndarray:
        (_, widths), scores, crossed = fit(train)
        if crossed is not None:
            return crossed
        return _cross_fitted(benign, benign_prompt, train, reduce, widths, scores.copy())

    return PoolScores(
        benign_prompt=np.repeat(benign_prompt, repeat),
        malign_prompt={name: np.repeat(prompts, repeat) for name, (_, prompts) in malign.items()},
        badness=badness,
        trained=True,
        fitting=fitting if cross_fit else None,
        standards=lambda train: fit(train)[0],
    )


def normalised_max(
    benign: np.ndarray,
    benign_prompt: np.ndarray,
    malign: dict[str, tuple[np.ndarray, np.ndarray]],
    cross_fit: bool = True,
    blocks: list[list[int]] | None = None,
) -> PoolScores:
    """A joint score over many positions: ``max_k (d_k - c_k) / w_k`` over the columns ``k`` a pair has.

    ``benign`` and each malign matrix hold one row per pair and one column per position's distance
    (a checkpoint, a segment, the final latent or a frame metric as a distance; NaN where the pair
    lacks that position; every row has at least one value). ``c_k`` is the median of column ``k``
    over the training prompts' benign pairs and ``w_k`` its 99th percentile minus that median
    (:func:`column_standards`), so a pair scores 1 where it sits at a position's 99th-percentile
    benign distance, and the one threshold fitted on the maximum is the joint decision: a pair is
    flagged when any position exceeds its centre plus the threshold times its width. The training
    pairs' scores are cross-fitted (module docstring) unless ``cross_fit`` is False. A column without
    training values is left out of the maximum; an unmeasurable value (``+inf``) is caught.

    ``blocks`` (lists of column indices; the full mode's blocks of steps,
    :func:`ditproof.experiment.keys.trajectory_blocks`): each block's widths are multiplied by the
    largest cross-fitted maximum the block reaches on the training pairs (:func:`_block_scaled`),
    so each block reaches 1 at its own training maximum and no block's heavy tail sets another
    block's limits; the one threshold is then fitted on the maximum as before. While the threshold
    rule keeps the training maximum (under about ``len(blocks) / target`` training prompts), that is
    one threshold per block at its own training maximum, a union whose FPR is up to ``len(blocks)``
    times the rule's floor. A position's limit is still its median plus the threshold times its
    (rescaled) width.
    """
    return _joint_scores(benign, benign_prompt, malign, lambda scaled: scaled.max(axis=1), 1, cross_fit, blocks)


def spot_check_draws(phases: list[list[int]], k: int) -> list[list[int]]:
    """Every choice a spot check can make: ``k`` of each phase's columns (all of a phase with ``k``
    or fewer), one list of column indices per choice; each choice is equally likely."""
    per_phase = [list(itertools.combinations(columns, min(k, len(columns)))) for columns in phases if columns]
    return [sorted(i for part in choice for i in part) for choice in itertools.product(*per_phase)]


def _draw_maxima(standardised: np.ndarray, phases: list[list[int]], k: int) -> np.ndarray:
    """Each row's maximum over the columns of every draw, one column per draw in the order of
    :func:`spot_check_draws`: per phase the maximum over each choice of ``k`` columns, then the
    larger of the phases' for every combination of choices."""
    rows = standardised.shape[0]
    maxima = np.empty((rows, 1))
    maxima.fill(-np.inf)
    for columns in phases:
        if not columns:
            continue
        choices = np.array(list(itertools.combinations(columns, min(k, len(columns)))), dtype=np.int64)
        phase = standardised[:, choices].max(axis=2)  # (rows, choices)
        maxima = np.maximum(maxima[:, :, None], phase[:, None, :]).reshape(rows, -1)
    return maxima


def spot_check_max(
    benign: np.ndarray,
    benign_prompt: np.ndarray,
    malign: dict[str, tuple[np.ndarray, np.ndarray]],
    phases: list[list[int]],
    k: int,
    cross_fit: bool = True,
) -> PoolScores:
    """The spot check's score: :func:`normalised_max` over the segments one draw re-runs.

    Columns are segments (as for :func:`normalised_max`); ``phases`` lists each expert phase's
    columns. Every pair enters once per possible draw (:func:`spot_check_draws`), so a rate over
    the expanded pairs is the rate expected over the validator's random draws, and a prompt keeps
    its weight (every pair has the same draws) in the bootstrap and the splits. The columns'
    standards are :func:`normalised_max`'s over the same segments.
    """
    draws = spot_check_draws(phases, k)
    if not draws:
        raise ValueError("spot check: no segment in any phase")

    def expand(standardised: np.ndarray) -> np.ndarray:
        return _draw_maxima(standardised, phases, k).reshape(-1)

    return _joint_scores(benign, benign_prompt, malign, expand, len(draws), cross_fit)


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassDetection(_M):
    """One malign class against one pool's threshold."""

    configuration: str
    n: int
    auc: float
    tpr: float
    """In sample: at the threshold fitted on all of the pool's benign pairs."""
    tpr_lower_95: float | None
    """Cluster bootstrap by prompt: the 5th percentile of the TPR at the in-sample threshold."""
    oos_tpr_mean: float | None
    oos_tpr_p05: float | None
    """Out of sample: mean and 5th percentile over the repeats (threshold from the training prompts)."""
    roc_tpr: list[float]
    """TPR at each FPR of ``ditproof.experiment.stats.ROC_FPR_GRID`` (in sample)."""


class PoolCalibration(_M):
    """One score against one benign pool: threshold, FPR and its bounds, each malign class."""

    pool: str
    pairs: int
    prompts: int
    threshold: float
    """In badness units (higher = more suspicious); the analysis states it in the score's units."""
    false_positives: int
    false_positive_prompts: int
    fpr: float
    fpr_upper_95: float
    """Clopper–Pearson over pairs: valid only if pairs were independent (they are not within a prompt)."""
    fpr_upper_95_prompts: float
    """Clopper–Pearson over prompts: the share of prompts with at least one false positive."""
    fpr_upper_95_bootstrap: float | None
    oos_fpr_mean: float | None
    oos_fpr_p95: float | None
    classes: list[ClassDetection]
    scales: list[float | None] | None = None
    """A joint score's in-sample width of each column (its benign 99th percentile minus its median
    over all prompts; None: a column without benign values), in the order of the key's
    ``columns``: a column's centre plus the threshold times its width is that position's limit.
    None for a score of one column."""
    centres: list[float | None] | None = None
    """A joint score's in-sample centre of each column (its benign median), beside ``scales``; None
    for a score of one column, or an analysis written before centres (whose limits were the
    threshold times the scale: a centre of 0)."""


@dataclass(frozen=True)
class Draws:
    """One pool's per-split FPR and TPR and per-resample TPR (the worst-pool summary takes minima per draw)."""

    oos_fpr: np.ndarray
    oos_tpr: dict[str, np.ndarray]
    boot_tpr: dict[str, np.ndarray]


def _quantile(values: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of the finite values; None when there is none (no split or resample held pairs)."""
    finite = values[np.isfinite(values)]
    return float(np.quantile(finite, q)) if finite.size else None


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def calibrate_pool(
    name: str,
    scores: PoolScores,
    target: float,
    splits: np.ndarray,
    counts: np.ndarray,
    confidence: float = 0.95,
    rule: ThresholdRule = "empirical",
) -> tuple[PoolCalibration, Draws]:
    """In-sample threshold and rates, out-of-sample rates over ``splits``, bootstrap bounds over ``counts``.

    Args:
        name: the pool's name.
        scores: the pool's benign pairs and the malign classes (prompt indices index the columns
            of ``splits`` and ``counts``).
        target: the FPR target.
        splits: training-prompt masks, one row per repeat (:func:`~ditproof.experiment.stats.prompt_splits`).
        counts: bootstrap draws per prompt, one row per resample (:func:`~ditproof.experiment.stats.bootstrap_counts`).
        confidence: of the one-sided bounds.
        rule: how many benign pairs the threshold may flag (:func:`~ditproof.experiment.stats.allowed_false_positives`).

    Raises:
        ValueError: the pool has no benign pair.
    """
    if scores.benign_prompt.size == 0:
        raise ValueError(f"pool {name}: no benign pair to calibrate on")
    everything = np.ones(splits.shape[1], dtype=bool)
    benign, malign = scores.badness(everything)
    centres = scales = None
    if scores.standards is not None:
        centre_values, width_values = scores.standards(everything)
        centres = [None if np.isnan(c) else float(c) for c in centre_values]
        scales = [None if np.isnan(w) else float(w) for w in width_values]
    fitted_on = benign if scores.fitting is None else scores.fitting(everything)
    threshold = threshold_value(fitted_on, target, rule)
    flagged = benign > threshold
    prompts = np.unique(scores.benign_prompt)
    flagged_prompts = np.unique(scores.benign_prompt[flagged])
    boot_fpr = bootstrap_rates(flagged, scores.benign_prompt, counts)

    oos_fpr = np.full(splits.shape[0], np.nan)
    oos_tpr = {c: np.full(splits.shape[0], np.nan) for c in malign}
    for repeat, train in enumerate(splits):
        b, m = scores.badness(train) if scores.trained else (benign, malign)
        in_train = train[scores.benign_prompt]
        if not in_train.any() or in_train.all():
            continue  # this split left the pool on one side only
        f = b if scores.fitting is None else scores.fitting(train)
        t = threshold_value(f[in_train], target, rule)
        oos_fpr[repeat] = float((b[~in_train] > t).mean())
        for c, values in m.items():
            test = ~train[scores.malign_prompt[c]]
            if test.any():
                oos_tpr[c][repeat] = float((values[test] > t).mean())

    classes, boot_tpr = [], {}
    for c, values in malign.items():
        if values.size == 0:
            continue
        caught = values > threshold
        boot_tpr[c] = bootstrap_rates(caught, scores.malign_prompt[c], counts)
        classes.append(
            ClassDetection(
                configuration=c,
                n=int(values.size),
                auc=auc(benign, values),
                tpr=float(caught.mean()),
                tpr_lower_95=_quantile(boot_tpr[c], 1.0 - confidence),
                oos_tpr_mean=_mean(oos_tpr[c]),
                oos_tpr_p05=_quantile(oos_tpr[c], 1.0 - confidence),
                roc_tpr=tpr_at_fprs(benign, values),
            )
        )
    result = PoolCalibration(
        pool=name,
        pairs=int(benign.size),
        prompts=int(prompts.size),
        threshold=threshold,
        false_positives=int(flagged.sum()),
        false_positive_prompts=int(flagged_prompts.size),
        fpr=float(flagged.mean()),
        fpr_upper_95=clopper_pearson_upper(int(flagged.sum()), int(benign.size), confidence),
        fpr_upper_95_prompts=clopper_pearson_upper(int(flagged_prompts.size), int(prompts.size), confidence),
        fpr_upper_95_bootstrap=_quantile(boot_fpr, confidence),
        oos_fpr_mean=_mean(oos_fpr),
        oos_fpr_p95=_quantile(oos_fpr, confidence),
        classes=classes,
        scales=scales,
        centres=centres,
    )
    return result, Draws(oos_fpr=oos_fpr, oos_tpr=oos_tpr, boot_tpr=boot_tpr)


class ClassSummary(_M):
    """One malign class against the worst pool (lowest TPR), in sample, bootstrapped and out of sample."""

    configuration: str
    auc: float
    tpr: float
    tpr_lower_95: float | None
    oos_tpr_mean: float | None
    oos_tpr_p05: float | None


class WorstPool(_M):
    """A score over every pool it decides, as the worst pool's figures.

    False positives fall on honest executors, each in its own pool: the FPR figures are the highest
    pool's (in sample, bootstrap bound, out-of-sample mean and 95th percentile, each taken per pool
    first). A dishonest executor picks the class whose threshold it passes most easily, and
    thresholds are public: each TPR is the lowest pool's per split (and per bootstrap resample),
    then averaged or taken as a quantile.
    """

    pools: list[str]
    fpr: float
    fpr_upper_95_bootstrap: float | None
    fpr_upper_95_prompts: float | None = None
    """The highest pool's Clopper–Pearson bound over prompts. With one pair per prompt and the
    conformal rule it bounds a new prompt's FPR at the in-sample threshold: that FPR is distributed
    as Beta(a + 1, n − a) for a threshold that ``a`` of ``n`` exchangeable pairs exceed, whose
    quantile is this bound (analyses written before it: None)."""
    oos_fpr_mean: float | None
    oos_fpr_p95: float | None
    classes: list[ClassSummary]


def _highest(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def worst_pool(results: list[tuple[PoolCalibration, Draws]], confidence: float = 0.95) -> WorstPool:
    """The worst-pool summary of one score's pools (see :class:`WorstPool`).

    Raises:
        ValueError: no pool.
    """
    if not results:
        raise ValueError("a summary needs at least one pool")

    def lowest(arrays: list[np.ndarray]) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a split where no pool has pairs stays NaN
            return np.nanmin(np.vstack(arrays), axis=0)

    names = [c.configuration for c in results[0][0].classes]
    classes = []
    for name in names:
        per_pool = [next(c for c in r.classes if c.configuration == name) for r, _ in results]
        classes.append(
            ClassSummary(
                configuration=name,
                auc=min(c.auc for c in per_pool),
                tpr=min(c.tpr for c in per_pool),
                tpr_lower_95=_quantile(lowest([d.boot_tpr[name] for _, d in results]), 1.0 - confidence),
                oos_tpr_mean=_mean(lowest([d.oos_tpr[name] for _, d in results])),
                oos_tpr_p05=_quantile(lowest([d.oos_tpr[name] for _, d in results]), 1.0 - confidence),
            )
        )
    return WorstPool(
        pools=[r.pool for r, _ in results],
        fpr=max(r.fpr for r, _ in results),
        fpr_upper_95_bootstrap=_highest([r.fpr_upper_95_bootstrap for r, _ in results]),
        fpr_upper_95_prompts=_highest([r.fpr_upper_95_prompts for r, _ in results]),
        oos_fpr_mean=_highest([r.oos_fpr_mean for r, _ in results]),
        oos_fpr_p95=_highest([r.oos_fpr_p95 for r, _ in results]),
        classes=classes,
    )
