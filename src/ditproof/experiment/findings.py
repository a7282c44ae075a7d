"""What an analysis of Stage 1 scores holds (the ``analysis.json`` models and their constants).

Apart from :mod:`ditproof.experiment.analyze`, which computes them, so that the modules that read
an analysis (thresholds, report, plots) do not import the computation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ditproof.experiment.calibration import PoolCalibration, WorstPool
from ditproof.experiment.stats import ThresholdRule
from ditproof.metrics.registry import score_key

ANALYSIS_FILE = "analysis.json"
THRESHOLDS_FILE = "thresholds.json"
ANALYSIS_SCHEMA: Literal["ditproof.experiment-analysis/3"] = "ditproof.experiment-analysis/3"
"""``/3`` adds ``reference_trajectory``; ``/2`` analyses (without it) are still read."""
CONFIDENCE = 0.95
LEGACY_PRE_SWITCH_KEY = "pre_switch_rel_l2"
"""The pre-switch distance as older scores name it (a trajectory checkpoint)."""
COMBINED_TRAJECTORY_KEY = "trajectory:max"
"""The trajectory's joint score: every committed checkpoint's distance and the final latent's, each
standardised by its benign median and 99th percentile, at their maximum
(:func:`~ditproof.experiment.calibration.normalised_max`)."""
FULL_MODE_KEY = "full:max"
"""Full mode as a cross-class validator decides it: :data:`COMBINED_TRAJECTORY_KEY`'s columns and
the frame metric :data:`FULL_MODE_FRAME_KEY` (as a distance), each standardised by its benign
median and 99th percentile, at their maximum. The validator flags a pair when any checkpoint, the final latent or the frame
metric is beyond its entry; the thresholds file writes those entries from this one threshold, so
the union it applies is this joint decision."""
CHECKPOINTS_MODE_KEY = "checkpoints:max"
"""Checkpoints mode: every segment re-run's distance, each standardised as above, at their maximum."""
SEGMENT_KEY_PREFIX = "segment_rel_l2:"
"""Score column of a segment re-run: ``segment_rel_l2:<name of the checkpoint it ends at>``
(:mod:`ditproof.experiment.segments`)."""
SPOT_CHECK_KEY_PREFIX = "spot-check:k"
"""Spot-check mode with ``k`` segments drawn per phase: ``spot-check:k1``, ``spot-check:k2``."""
FINAL_LATENT_KEY = score_key("latent_rel_l2", "value")
FULL_MODE_FRAME_KEY = score_key("psnr", "mean")
"""The frame metric a cross-class validator ties the submitted video to its regeneration with (the
shipped CPU policy's); it joins the full mode's joint score as the root-mean-square error it stands
for, ``10^(-psnr/20)`` (:func:`ditproof.experiment.keys.as_distance`)."""
NORMALISED_SEPARATOR = "/"
"""``<key>/<configuration>``: a distance divided by that benign configuration's on the same prompt."""


def segment_key(end_name: str) -> str:
    """The score column of the segment that ends at checkpoint ``end_name``."""
    return f"{SEGMENT_KEY_PREFIX}{end_name}"


def spot_check_key(k: int) -> str:
    """The key of the spot check drawing ``k`` segments in each expert phase."""
    return f"{SPOT_CHECK_KEY_PREFIX}{k}"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Method(_M):
    """How the out-of-sample and bootstrap figures were drawn (same inputs and seed → same figures)."""

    repeats: int = Field(default=200, ge=1, le=100_000)
    train_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)
    resamples: int = Field(default=1000, ge=1, le=100_000)
    seed: int = Field(default=0, ge=0)
    confidence: float = Field(default=CONFIDENCE, gt=0.5, lt=1.0)
    rule: ThresholdRule = "conformal"
    """How many benign pairs a threshold may flag: the conformal rank (default: holds out of sample on
    average) or ``floor(target·n)`` (``empirical``: holds in sample only)."""
    normaliser: str | None = None
    """A benign configuration ``B``: each latent distance key also enters divided by the same prompt's
    distance of ``B`` (key ``<key>/B``), the spread a validator measures with one more regeneration
    of its own in class ``B``."""
    cross_fit: bool = True
    """A joint score's threshold fitted on its training pairs' cross-fitted scores (each scored with
    the standards of the other prompt folds, :mod:`ditproof.experiment.calibration`); False: on the
    scores the fitted standards give those same pairs (in sample: tighter, and an out-of-sample FPR
    above the target at a few hundred prompts)."""
    full_blocks: bool = False
    """The full mode's joint scores (``trajectory:max``, ``full:max``) with one scale per block of
    steps (:func:`ditproof.experiment.keys.trajectory_blocks`): each block reaches the threshold at
    its own training maximum, so the heavy tails of the middle and late steps do not set the early
    steps' limits."""


class Pool(_M):
    """The benign pairs of one pair of runtime classes (or, without classes, of one configuration)."""

    name: str
    configurations: list[str]
    reference_runtime_class: str | None
    executor_runtime_class: str | None
    pairs: int
    exact_pairs: int
    """Byte-identical videos: decided by exact match, kept out of the thresholds."""
    scored_pairs: int
    decided_by: Literal["exact match", "thresholds"]
    segments_exact: bool | None = None
    """Segment re-runs: True when every pair with segment rows had every segment end bit-exact
    (the checkpoints modes decide this pair of classes by exact match), None without segment rows."""


class KeyResult(_M):
    """One score key over every pool it decides."""

    key: str
    kind: Literal["frame", "latent", "trajectory", "segment"]
    """``trajectory``: committed checkpoints against the regeneration's (full mode); ``segment``:
    segment re-runs from the executor's checkpoints (checkpoints and spot-check modes)."""
    direction: Literal["higher-is-better", "lower-is-better"]
    normalised_by: str | None = None
    """The benign configuration whose same-prompt distance divides this key's (see ``Method.normaliser``)."""
    threshold: float | None
    """The loosest pool's in-sample threshold, in the score's units (what one file entry for every pool
    holds); None for a joint score, whose units (each pool's own standardised distances) differ
    between pools."""
    columns: list[str] | None = None
    """A joint score's columns, in the order of each pool's ``scales`` and ``centres``; None for a score of one column."""
    pools: list[PoolCalibration]
    summary: WorstPool | None
    mean_tpr: float
    """Out-of-sample worst-pool TPR, averaged over malign classes."""
    mean_auc: float


class CheckpointPosition(_M):
    """A committed checkpoint of the reference requests' trajectory, where the validator places it
    (:func:`ditproof.validation.trajectory.step_position`), and the score key of its distance."""

    name: str = Field(min_length=1)
    """``step_NNN``, ``pre_switch`` or ``final``."""
    key: str = Field(min_length=1)
    """``checkpoint_rel_l2:<name>``; the final latent's is ``latent_rel_l2:value``."""
    step: int = Field(ge=1)
    phase: Literal["high-noise", "low-noise"]
    fraction: float = Field(ge=0.0, le=1.0)
    """Of the phase done after ``step``."""


class ReferenceTrajectory(_M):
    """The reference requests' step count, expert switch and committed checkpoints (from their records)."""

    steps: int = Field(ge=1)
    switch: int | None = Field(ge=0)
    """The ``pre_switch`` checkpoint's step (None: one expert runs every step)."""
    checkpoints: list[CheckpointPosition]
    """In step order; the noise (step 0) is left out: the validator compares no latent there."""


class AnchorRow(_M):
    """The noise anchor over one configuration's jobs with segment re-runs (their
    ``noise_anchor_ratio`` and ``noise_anchor_excess`` columns, :mod:`ditproof.experiment.segments`)."""

    configuration: str
    label: str
    jobs: int
    """Jobs with an anchor measurement."""
    largest_ratio: float | None
    """The largest implied clean-latent norm over the noise's (NaN: a latent that is not finite)."""
    with_excess: int
    """Jobs whose row has the excess (rows measured before it was recorded have only the ratio)."""
    smallest_excess: float | None
    largest_excess: float | None
    refused: int
    """Jobs whose excess is above 1 or not finite: the validator refuses them in every segment mode."""


class Analysis(_M):
    """The analysis of one experiment's scores."""

    schema_version: Literal["ditproof.experiment-analysis/2", "ditproof.experiment-analysis/3"] = ANALYSIS_SCHEMA
    experiment: str
    model: str
    model_revision: str
    runtime_class: str
    fpr_target: float
    method: Method
    roc_fpr_grid: list[float]
    benign_classes: list[str]
    malign_classes: list[str]
    prompts: int
    exact_matches: dict[str, dict[str, int]]
    pools: list[Pool]
    keys: list[KeyResult]
    best_key: str | None
    skipped_metrics: dict[str, str]
    metric_weights: dict[str, dict[str, str]]
    scores_sha256: str
    notes: list[str]
    noise_anchor: list[AnchorRow] = []
    """Per configuration with anchor measurements (empty for scores without them)."""
    reference_trajectory: ReferenceTrajectory | None = None
    """Where each checkpoint lies (``/3``); None when unknown (a ``/2`` analysis, or reference records
    that disagree): then no trajectory key gets a thresholds-file entry."""
