"""Score keys: which columns of the score rows the analysis calibrates, and how each becomes one
pool's scores (:class:`ditproof.experiment.calibration.PoolScores`).

* **metric keys**: frame and final-latent metrics of the registry (``psnr:mean``,
  ``latent_rel_l2:value`` …), one column each;
* **trajectory keys**: committed checkpoints against the regeneration's (``checkpoint_rel_l2:<name>``,
  the older ``pre_switch_rel_l2``), combined as ``trajectory:max`` with the final latent, and as
  ``full:max`` with the final latent and the frame metric a validator ties the video with (full
  mode: what the validator decides on);
* **segment keys**: segment re-runs from the executor's checkpoints (``segment_rel_l2:<end>``),
  combined as ``checkpoints:max`` (checkpoints mode) and ``spot-check:kK`` (a spot check drawing
  ``k`` segments per expert phase).

A pair decided by exact match stays out of a benign pool: its video bytes for every key but the
segment keys, whose exact match is of every segment's end state (a checkpoints-mode validator
compares those, not the video).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ditproof.errors import InvalidInputError
from ditproof.experiment.calibration import PoolScores, fixed, normalised_max, spot_check_max
from ditproof.experiment.findings import (
    CHECKPOINTS_MODE_KEY,
    COMBINED_TRAJECTORY_KEY,
    FULL_MODE_KEY,
    LEGACY_PRE_SWITCH_KEY,
    NORMALISED_SEPARATOR,
    SEGMENT_KEY_PREFIX,
    SPOT_CHECK_KEY_PREFIX,
    ReferenceTrajectory,
)
from ditproof.experiment.score import CHECKPOINT_KEY_PREFIX
from ditproof.metrics.registry import metric_spec, parse_score_key

JOINT_KEYS = (COMBINED_TRAJECTORY_KEY, FULL_MODE_KEY, CHECKPOINTS_MODE_KEY)
"""Joint scores over every position of a mode (spot checks apart: their key names their draw)."""


def direction(key: str) -> Literal["higher-is-better", "lower-is-better"]:
    if key in JOINT_KEYS or is_trajectory_key(key) or is_segment_key(key):
        return "lower-is-better"
    if NORMALISED_SEPARATOR in key:
        return "lower-is-better"
    return metric_spec(parse_score_key(key)[0]).direction


def is_trajectory_key(key: str) -> bool:
    """A checkpoint distance column (``checkpoint_rel_l2:<name>`` or the older ``pre_switch_rel_l2``)."""
    return key == LEGACY_PRE_SWITCH_KEY or key.startswith(CHECKPOINT_KEY_PREFIX)


def is_segment_key(key: str) -> bool:
    """A segment re-run's column (``segment_rel_l2:<end>``) or a mode combining them
    (``checkpoints:max``, ``spot-check:kK``)."""
    return key.startswith((SEGMENT_KEY_PREFIX, SPOT_CHECK_KEY_PREFIX)) or key == CHECKPOINTS_MODE_KEY


def score_keys(columns: list[str]) -> tuple[list[str], list[str]]:
    """(frame and final-latent keys of the metric registry, trajectory checkpoint keys) among ``columns``."""
    metric_keys, trajectory = [], []
    for column in columns:
        if is_trajectory_key(column):
            trajectory.append(column)
            continue
        if ":" not in column:
            continue
        try:
            parse_score_key(column)
        except InvalidInputError:
            continue
        metric_keys.append(column)
    return metric_keys, trajectory


def column_values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def as_distance(key: str, values: np.ndarray) -> np.ndarray:
    """A key's values as a non-negative distance (higher = further from the reference), the form a
    joint score standardises by its benign median and 99th percentile: a lower-is-better distance as it is, PSNR as the
    root-mean-square error it stands for, ``10^(-psnr/20)`` (a norm of the difference, as the latent
    distances are, not its square; infinite PSNR, equal frames: 0).

    Raises:
        ValueError: a higher-is-better key other than PSNR (no distance form defined).
    """
    if direction(key) == "lower-is-better":
        return values
    if parse_score_key(key)[0] == "psnr":
        return np.power(10.0, -values / 20.0)
    raise ValueError(f"joint score column {key!r}: no distance form; allowed: lower-is-better keys or psnr")


def from_distance(key: str, distance: float) -> float:
    """The key's value at ``distance`` (:func:`as_distance` inverted); a PSNR at a distance of 0 is
    taken at the smallest positive one, so it stays finite."""
    if direction(key) == "lower-is-better":
        return distance
    if parse_score_key(key)[0] == "psnr":
        return -20.0 * float(np.log10(max(distance, np.finfo(np.float64).tiny)))
    raise ValueError(f"joint score column {key!r}: no distance form; allowed: lower-is-better keys or psnr")


def key_scores(
    rows: list[dict[str, Any]],
    keys: list[str],
    pool: str,
    row_pool: list[str | None],
    malign_classes: list[str],
    prompt_index: dict[str, int],
    combined: Combined | None,
    cross_fit: bool = True,
) -> PoolScores | None:
    """One key's (or, ``combined``, a joint score's columns': checkpoints, segments, the final
    latent, a frame metric as a distance) scores over one pool; None without benign values.
    ``cross_fit``: a joint score's threshold is fitted on cross-fitted scores (``Method.cross_fit``)."""
    segments = is_segment_key(keys[0])
    benign_rows = [r for r, p in zip(rows, row_pool, strict=True) if p == pool and not pair_exact(r, segments)]
    by_class = {c: [r for r in rows if r["configuration"] == c] for c in malign_classes}

    def prompts_of(members: list[dict[str, Any]]) -> np.ndarray:
        return np.array([prompt_index[r["prompt_id"]] for r in members], dtype=np.int64)

    if combined is not None:  # one column per checkpoint or segment; a pair counts where it has at least one
        benign = np.column_stack([as_distance(k, column_values(benign_rows, k)) for k in keys])
        keep = ~np.isnan(benign).all(axis=1)
        if not keep.any():
            return None
        malign = {}
        for c, members in by_class.items():
            matrix = np.column_stack([as_distance(k, column_values(members, k)) for k in keys])
            kept = ~np.isnan(matrix).all(axis=1)
            malign[c] = (matrix[kept], prompts_of(members)[kept])
        if combined.phases is None:
            return normalised_max(benign[keep], prompts_of(benign_rows)[keep], malign, cross_fit, combined.blocks)
        return spot_check_max(
            benign[keep], prompts_of(benign_rows)[keep], malign, combined.phases, combined.k, cross_fit
        )
    (key,) = keys
    sign = 1.0 if direction(key) == "lower-is-better" else -1.0
    values = sign * column_values(benign_rows, key)
    keep = ~np.isnan(values)
    if not keep.any():
        return None
    malign_scores = {}
    for c, members in by_class.items():
        m = sign * column_values(members, key)
        kept = ~np.isnan(m)
        malign_scores[c] = (m[kept], prompts_of(members)[kept])
    return fixed(values[keep], prompts_of(benign_rows)[keep], malign_scores)


def pair_exact(row: dict[str, Any], segments: bool) -> bool:
    """Whether a pair is decided by exact match (kept out of the pools): its video bytes, or for
    the segment keys every segment's end state (a pair without segment rows counts as exact there)."""
    if not segments:
        return bool(row["video_exact"])
    return row.get("segments") is None or row.get("segments_exact") == row.get("segments")


SPOT_CHECK_KS = (1, 2)
"""Segments a spot check draws per expert phase, as analysed (``--spot-segments`` of the validator)."""


@dataclass(frozen=True)
class Combined:
    """How a combined key joins its columns: the maximum over all (``phases`` None) or over a spot
    check's draw of ``k`` columns per phase (``phases``: each phase's column indices); ``blocks``:
    the maximum over all with each block of columns scaled to its own training maximum
    (:func:`ditproof.experiment.calibration.normalised_max`)."""

    phases: list[list[int]] | None = None
    k: int = 1
    blocks: list[list[int]] | None = None


EARLY_FRACTION = 0.2
"""The full mode's early block: checkpoints at or before this share of the steps (steps 3, 5 and 8
of 40 in the GPU run's schedule)."""


def trajectory_blocks(keys: list[str], trajectory: ReferenceTrajectory | None) -> list[list[int]] | None:
    """The full mode's blocks of ``keys`` (checkpoint columns, then the final latent and any frame
    metric), fixed by the schedule: the checkpoints at or before :data:`EARLY_FRACTION` of the steps,
    the rest of the high-noise phase (to the latent entering the low-noise expert, the switch), and
    the low-noise phase with every column that is not a checkpoint (the final latent, the video);
    empty blocks left out. None where the trajectory or a checkpoint column's position is unknown."""
    if trajectory is None:
        return None
    where = {c.key: c for c in trajectory.checkpoints}
    early, middle, late = [], [], []
    for index, key in enumerate(keys):
        if not is_trajectory_key(key):
            late.append(index)
            continue
        position = where.get(key)
        if position is None:
            return None
        if position.step <= EARLY_FRACTION * trajectory.steps:
            early.append(index)
        elif trajectory.switch is None or position.step <= trajectory.switch:
            middle.append(index)
        else:
            late.append(index)
    return [block for block in (early, middle, late) if block]


def ordered_segment_keys(columns: list[str], trajectory: ReferenceTrajectory | None) -> list[str]:
    """The segment columns, in trajectory order where the checkpoints' steps are known."""
    keys = [c for c in columns if c.startswith(SEGMENT_KEY_PREFIX)]
    steps = {c.name: c.step for c in trajectory.checkpoints} if trajectory else {}
    return sorted(keys, key=lambda k: (steps.get(k[len(SEGMENT_KEY_PREFIX) :], 10**9), k))


def segment_phases(keys: list[str], trajectory: ReferenceTrajectory | None) -> list[list[int]] | None:
    """Each expert phase's segment columns (a segment belongs to the phase of the checkpoint it
    ends at, as the spot check draws); None where the trajectory or a segment's end is unknown."""
    if trajectory is None:
        return None
    phase_of = {c.name: c.phase for c in trajectory.checkpoints}
    names = [k[len(SEGMENT_KEY_PREFIX) :] for k in keys]
    if any(n not in phase_of for n in names):
        return None
    return [[i for i, n in enumerate(names) if phase_of[n] == p] for p in ("high-noise", "low-noise")]


def key_kind(key: str) -> Literal["frame", "latent", "trajectory", "segment"]:
    key = key.split(NORMALISED_SEPARATOR)[0]
    if is_segment_key(key):
        return "segment"
    if key in (COMBINED_TRAJECTORY_KEY, FULL_MODE_KEY) or is_trajectory_key(key):
        return "trajectory"
    return "latent" if parse_score_key(key)[0].startswith("latent_") else "frame"
