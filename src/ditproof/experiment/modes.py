"""The validation modes side by side: which score decides each, what it costs, what it catches.

A validator across runtime classes decides in one of these modes (docs/validation.md); the
analysis calibrates the score each one decides on, so one table holds them all:

| mode | decides on | denoising steps re-run |
| --- | --- | --- |
| final-only | the final latent of a full regeneration (``latent_rel_l2:value``) | all |
| full | every committed checkpoint, the final latent and the frame metric of a full regeneration (``full:max``; without frame scores ``trajectory:max``) | all |
| checkpoints | every segment re-run from the executor's checkpoints (``checkpoints:max``) | all |
| spot-check k | ``k`` segments drawn per expert phase (``spot-check:kK``) | the drawn segments' |

The many-position modes decide on one joint score (each position's distance standardised by its
benign median and 99th percentile, one threshold on the maximum), and the thresholds file writes
each position's entry as its median plus that threshold times its width: a validator that flags a pair when any position is
beyond its entry decides exactly the joint score, so the FPR here is the validator's. The full
mode's joint score holds every entry its validator applies (checkpoints, the final latent, the
frame metric). A spot check tests the drawn segments against the checkpoints mode's entries:
fewer positions under the same limits, so its FPR is at most the checkpoints mode's (the
``spot-check:kK`` rows calibrate a threshold of their own, the figures a spot check with its own
entries would reach; the shipped entries are the checkpoints mode's, which flag no more often).

Per mode: the out-of-sample FPR of the worst pool (mean and 95th percentile over the prompt
splits) with the bootstrap 95% bound of the in-sample FPR and the exact bound over prompts (a
new prompt's FPR at the in-sample threshold: Clopper–Pearson over prompts, which for a conformal
threshold that ``a`` of ``n`` exchangeable prompts exceed is the 95% quantile of that FPR's
Beta(a + 1, n − a) law; a bootstrap of a threshold at the pool's maximum reads 0), and per malign class the worst pool's
out-of-sample TPR and AUC. A spot check's rates are expectations over the validator's draws
(:func:`ditproof.experiment.calibration.spot_check_max`); its cost is the expected share of the
reference trajectory's denoising steps its drawn segments hold.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ditproof.experiment.findings import (
    CHECKPOINTS_MODE_KEY,
    COMBINED_TRAJECTORY_KEY,
    FINAL_LATENT_KEY,
    FULL_MODE_KEY,
    Analysis,
    ReferenceTrajectory,
    spot_check_key,
)

MODES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("final-only", (FINAL_LATENT_KEY,)),
    ("full", (FULL_MODE_KEY, COMBINED_TRAJECTORY_KEY)),
    ("checkpoints", (CHECKPOINTS_MODE_KEY,)),
    ("spot-check k=1", (spot_check_key(1),)),
    ("spot-check k=2", (spot_check_key(2),)),
)
"""(mode, the analysis keys it decides on, the first the analysis has), in the table's order."""


@dataclass(frozen=True)
class ClassRate:
    """One malign class in one mode: worst-pool out-of-sample TPR (mean) and AUC."""

    tpr: float | None
    auc: float


@dataclass(frozen=True)
class ModeRow:
    """One mode's line of the table."""

    mode: str
    key: str
    cost: float | None
    """Share of the reference trajectory's denoising steps the validator runs (None: unknown)."""
    fpr_oos_mean: float | None
    fpr_oos_p95: float | None
    fpr_bootstrap_95: float | None
    fpr_prompts_95: float | None
    """The worst pool's exact bound over prompts: a new prompt's FPR at the in-sample threshold."""
    classes: dict[str, ClassRate]


def segment_steps(trajectory: ReferenceTrajectory) -> list[tuple[int, str]]:
    """(denoising steps, expert phase) of each segment between the trajectory's distinct checkpoint
    steps (from the noise at step 0), in order; a segment's phase is its end checkpoint's."""
    ends: dict[int, str] = {}
    for checkpoint in trajectory.checkpoints:
        ends.setdefault(checkpoint.step, checkpoint.phase)
    steps = sorted(ends)
    return [(end - start, ends[end]) for start, end in itertools.pairwise([0, *steps])]


def spot_check_cost(trajectory: ReferenceTrajectory, k: int) -> float:
    """The expected share of the steps a spot check drawing ``k`` segments per phase re-runs."""
    total = 0.0
    for phase in ("high-noise", "low-noise"):
        lengths = [steps for steps, p in segment_steps(trajectory) if p == phase]
        if lengths:
            total += sum(lengths) * min(k, len(lengths)) / len(lengths)
    return total / trajectory.steps


def mode_cost(trajectory: ReferenceTrajectory | None, key: str) -> float | None:
    """The share of denoising steps the mode deciding on ``key`` runs."""
    for k in (1, 2):
        if key == spot_check_key(k):
            return None if trajectory is None else spot_check_cost(trajectory, k)
    return 1.0


def mode_rows(analysis: Analysis) -> list[ModeRow]:
    """The modes the analysis has scores for, in :data:`MODES` order."""
    results = {k.key: k for k in analysis.keys}
    rows = []
    for mode, candidates in MODES:
        key = next((k for k in candidates if k in results), candidates[0])
        result = results.get(key)
        if result is None or result.summary is None:
            continue
        summary = result.summary
        rows.append(
            ModeRow(
                mode=mode,
                key=key,
                cost=mode_cost(analysis.reference_trajectory, key),
                fpr_oos_mean=summary.oos_fpr_mean,
                fpr_oos_p95=summary.oos_fpr_p95,
                fpr_bootstrap_95=summary.fpr_upper_95_bootstrap,
                fpr_prompts_95=summary.fpr_upper_95_prompts,
                classes={c.configuration: ClassRate(c.oos_tpr_mean, c.auc) for c in summary.classes},
            )
        )
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def modes_markdown(analysis: Analysis) -> list[str]:
    """The table as Markdown lines: one line per mode, then one line per malign class and mode."""
    rows = mode_rows(analysis)
    if not rows:
        return []
    lines = [
        "| mode | decides on | steps re-run | FPR out of sample (mean, p95) | FPR bootstrap 95% bound "
        "| new prompt's FPR, 95% bound (exact, over prompts) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cost = "n/a" if row.cost is None else f"{row.cost:.3f}"
        lines.append(
            f"| {row.mode} | `{row.key}` | {cost} | {_pct(row.fpr_oos_mean)}, {_pct(row.fpr_oos_p95)} "
            f"| {_pct(row.fpr_bootstrap_95)} | {_pct(row.fpr_prompts_95)} |"
        )
    lines += ["", "| malign class | " + " | ".join(r.mode for r in rows) + " |", "| --- |" + " --- |" * len(rows)]
    for name in analysis.malign_classes:
        cells = []
        for row in rows:
            rate = row.classes.get(name)
            cells.append("n/a" if rate is None else f"TPR {_pct(rate.tpr)}, AUC {rate.auc:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
