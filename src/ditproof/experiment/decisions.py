"""The Stage 1 v2 run's two decisions fixed before its last tenths came in (docs/experiment.md), read
off its analyses so that anyone can recompute them from the committed scores.

* **The block rule** (``analyze --full-blocks``) becomes the full mode's default only if, on the
  prompts no choice of the blocks has seen, its worst-pool out-of-sample FPR (mean over the splits)
  is at most the target and no malign class's out-of-sample TPR falls below one block's.
* **``--mode auto``** becomes ``ditproof validate``'s default only if, on every prompt, the
  checkpoints mode's worst-pool out-of-sample FPR is at most the target and its lowest TPR over the
  malign classes is at least the full mode's lowest (a validator is as strong as the class it
  catches least).

Each decision compares figures of :func:`ditproof.experiment.modes.mode_rows`: the worst pool's
out-of-sample FPR (mean) and per class the worst pool's out-of-sample TPR (mean).
"""

from __future__ import annotations

from dataclasses import dataclass

from ditproof.errors import InvalidInputError
from ditproof.experiment.findings import Analysis
from ditproof.experiment.modes import ModeRow, mode_rows


@dataclass(frozen=True)
class Decision:
    """One pre-registered decision: whether the change is adopted, and each condition's figures."""

    name: str
    adopted: bool
    conditions: list[tuple[str, bool]]


def _mode(analysis: Analysis, mode: str, source: str) -> ModeRow:
    for row in mode_rows(analysis):
        if row.mode == mode:
            return row
    raise InvalidInputError(
        f"{source}: the analysis has no {mode} mode; allowed: an analysis whose scores calibrate it "
        "(committed checkpoints for full, segment re-runs for checkpoints)"
    )


def _tpr(row: ModeRow, name: str) -> float:
    rate = row.classes.get(name)
    return 0.0 if rate is None or rate.tpr is None else rate.tpr


def _fpr(row: ModeRow) -> float:
    return 1.0 if row.fpr_oos_mean is None else row.fpr_oos_mean


def block_rule(one_block: Analysis, blocks: Analysis) -> Decision:
    """The block rule's decision from two analyses of the same unseen prompts (without and with
    ``full_blocks``)."""
    if one_block.method.full_blocks or not blocks.method.full_blocks:
        raise InvalidInputError("block rule: allowed: an analysis without --full-blocks, then one with it")
    if one_block.scores_sha256 != blocks.scores_sha256:
        raise InvalidInputError("block rule: the two analyses are of different scores; allowed: the same scores")
    one, many = _mode(one_block, "full", "one block"), _mode(blocks, "full", "blocks")
    target = blocks.fpr_target
    fpr = f"FPR out of sample {_fpr(many):.2%} (one block {_fpr(one):.2%}) at most the target {target:.0%}"
    conditions = [(fpr, _fpr(many) <= target)]
    for name in blocks.malign_classes:
        text = f"{name}: TPR {_tpr(many, name):.1%} with blocks, {_tpr(one, name):.1%} with one"
        conditions.append((text, _tpr(many, name) >= _tpr(one, name)))
    return Decision("the block rule as the full mode's default", all(ok for _, ok in conditions), conditions)


def auto_default(analysis: Analysis) -> Decision:
    """The ``--mode auto`` decision from the analysis of every prompt (one block)."""
    full, checkpoints = _mode(analysis, "full", "all prompts"), _mode(analysis, "checkpoints", "all prompts")
    names = analysis.malign_classes
    lowest_full = min(names, key=lambda n: _tpr(full, n))
    lowest_checkpoints = min(names, key=lambda n: _tpr(checkpoints, n))
    target = analysis.fpr_target
    low_full, low_checkpoints = _tpr(full, lowest_full), _tpr(checkpoints, lowest_checkpoints)
    conditions = [
        (
            f"checkpoints: FPR out of sample {_fpr(checkpoints):.2%} at most the target {target:.0%}",
            _fpr(checkpoints) <= target,
        ),
        (
            f"checkpoints' lowest TPR {low_checkpoints:.1%} ({lowest_checkpoints}) at least the full mode's "
            f"{low_full:.1%} ({lowest_full})",
            low_checkpoints >= low_full,
        ),
    ]
    return Decision("--mode auto as ditproof validate's default", all(ok for _, ok in conditions), conditions)


def markdown(decisions: list[Decision]) -> list[str]:
    """The decisions as Markdown lines: each with its verdict and conditions."""
    lines = []
    for decision in decisions:
        lines += [f"**{decision.name}: {'adopted' if decision.adopted else 'not adopted'}**", ""]
        lines += [f"- {'holds' if ok else 'fails'}: {text}" for text, ok in decision.conditions]
        lines.append("")
    return lines
