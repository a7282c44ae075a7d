"""The thresholds file of an analysis: per-position trajectory thresholds the validator's full mode
looks up (``latent_rel_l2_checkpoint`` at a step's phase and fraction), each the joint threshold
times the position's scale, from synthetic score tables analysed by the real code path
(``analyze_folder``)."""

from __future__ import annotations

import csv
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ditproof.experiment.analyze import ANALYSIS_FILE, THRESHOLDS_FILE, Method, analyze_folder
from ditproof.experiment.findings import Analysis, CheckpointPosition, KeyResult, ReferenceTrajectory
from ditproof.experiment.store import Store
from ditproof.experiment.summaries import SCORES_CSV
from ditproof.experiment.thresholds import CHECKPOINT_METRIC, position_ranges, thresholds_file
from ditproof.validation.policy import ThresholdPolicy, ThresholdsFile
from ditproof.validation.trajectory import step_position

FAST = Method(repeats=40, resamples=200, seed=3)
REVISION = "cd" * 32
CLASS = "cpu-test/reference"
STEPS, SWITCH = 40, 26
# name → (step, benign scale): the benign band grows along the trajectory. step_026 is an extra
# checkpoint at the switch, the same latent as pre_switch under another name.
CHECKPOINTS = {"step_010": (10, 1e-3), "pre_switch": (26, 2e-3), "step_026": (26, 3e-3), "step_031": (31, 5e-3)}


def key_of(name: str) -> str:
    return "latent_rel_l2:value" if name == "final" else f"checkpoint_rel_l2:{name}"


def layout(checkpoints: dict[str, tuple[int, float]] = CHECKPOINTS) -> ReferenceTrajectory:
    points = []
    for name, step in [*((n, s) for n, (s, _) in checkpoints.items()), ("final", STEPS)]:
        phase, fraction = step_position(step, STEPS, SWITCH)
        points.append(CheckpointPosition(name=name, key=key_of(name), step=step, phase=phase, fraction=fraction))
    return ReferenceTrajectory(steps=STEPS, switch=SWITCH, checkpoints=sorted(points, key=lambda c: c.step))


def write_folder(folder: Path, rows: list[dict[str, Any]], trajectory: ReferenceTrajectory | None) -> Path:
    """A report folder: scores-summary.csv and an analysis.json naming where the checkpoints lie."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(folder / SCORES_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    meta: dict[str, Any] = {
        "experiment": "stage1-tiny-cpu",
        "model": "wan-tiny-random",
        "model_revision": REVISION,
        "runtime_class": CLASS,
        "fpr_target": 0.05,
    }
    if trajectory is not None:
        meta["reference_trajectory"] = trajectory.model_dump(mode="json")
    Store(str(folder)).write_json(ANALYSIS_FILE, meta)
    return folder


def rows(
    prompts: int = 60, checkpoints: dict[str, tuple[int, float]] = CHECKPOINTS, frame: bool = False
) -> list[dict[str, Any]]:
    """One benign and one malign pair per prompt; with ``frame``, a ``psnr:mean`` too; ``near``: a
    malign class at the benign band's edge, so that some of its pairs pass and some do not."""
    rng = np.random.default_rng(11)
    out = []
    for p in range(prompts):
        for configuration, label, factor in (("b", "benign", 1.0), ("m", "malign", 20.0), ("near", "malign", 1.3)):
            row: dict[str, Any] = {
                "job_id": f"{configuration}-{p}",
                "prompt_id": f"p{p:03d}",
                "configuration": configuration,
                "label": label,
                "video_exact": False,
                "frames_exact": False,
                "final_latent_exact": False,
            }
            for name, (_, scale) in checkpoints.items():
                row[key_of(name)] = factor * scale * rng.uniform(0.5, 1.0)
            row[key_of("final")] = factor * 1e-2 * rng.uniform(0.5, 1.0)
            if frame:
                row["psnr:mean"] = 40.0 - 10.0 * np.log10(factor) - rng.uniform(0.0, 3.0)
            out.append(row)
    return out


def joint_limits(analysis: Analysis, key: str = "trajectory:max") -> tuple[KeyResult, dict[str, float]]:
    """The joint score's result and, per column, its one pool's centre plus its threshold times the
    column's width."""
    joint = next(k for k in analysis.keys if k.key == key)
    (pool,) = joint.pools
    assert joint.columns is not None and pool.scales is not None and pool.centres is not None
    return joint, {
        c: centre + pool.threshold * width
        for c, centre, width in zip(joint.columns, pool.centres, pool.scales, strict=True)
        if width is not None and centre is not None
    }


def test_position_ranges_reach_halfway_to_the_neighbours() -> None:
    assert position_ranges([1.0]) == [(0.0, 1.0)]
    assert position_ranges([0.25, 1.0]) == [(0.0, 0.625), (0.625, 1.0)]
    ranges = position_ranges([0.2, 0.4, 0.8, 1.0])
    assert [x for r in ranges for x in r] == pytest.approx([0.0, 0.3, 0.3, 0.6, 0.6, 0.9, 0.9, 1.0], abs=1e-15)
    assert all(a[1] == b[0] for a, b in pairwise(ranges))  # no gap, no overlap
    assert position_ranges([]) == []
    for bad in ([0.5, 0.5], [0.6, 0.4], [1.2]):
        with pytest.raises(ValueError, match="ascending, distinct"):
            position_ranges(bad)


def test_checkpoint_thresholds_by_position_load_in_the_validator(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "r", rows(), layout())
    analysis = analyze_folder(folder, method=FAST)
    assert analysis.reference_trajectory == layout()  # kept through the folder's analysis.json
    _, limits = joint_limits(analysis)
    thresholds = ThresholdsFile.load(folder / THRESHOLDS_FILE)
    assert thresholds.schema_version == "ditproof.thresholds/3"
    checkpoints = [e for e in thresholds.entries if e.metric == CHECKPOINT_METRIC]
    # step_010 and the switch (pre_switch = step_026: one entry) high-noise; step_031 and final low-noise.
    assert len(checkpoints) == 4
    for phase in ("high-noise", "low-noise"):
        ranges = sorted(
            (e.position.start, e.position.end) for e in checkpoints if e.position and e.position.phase == phase
        )
        assert ranges[0][0] == 0.0 and ranges[-1][1] == 1.0  # the phase covered, nothing beyond it
        assert all(a[1] == b[0] for a, b in pairwise(ranges))
    assert all(e.position is not None and e.position.phase != "any" for e in checkpoints)  # one phase each
    assert all(e.validator_class == CLASS and e.runtime_class == CLASS for e in checkpoints)
    switch_entry = next(
        e for e in checkpoints if e.position and e.position.phase == "high-noise" and e.position.end == 1
    )
    notes = switch_entry.provenance.notes
    assert (
        "pre_switch" in notes and "out-of-sample" in notes and "joint threshold" in notes and "trajectory:max" in notes
    )

    policy = ThresholdPolicy(thresholds).bound_to(CLASS)

    def at(step: int, steps: int = STEPS, switch: int = SWITCH) -> float:
        found = policy.trajectory_threshold(
            "wan-tiny-random", REVISION, CLASS, CHECKPOINT_METRIC, *step_position(step, steps, switch)
        )
        assert found is not None
        return found.value

    expected = {name: limits[key_of(name)] for name in (*CHECKPOINTS, "final")}
    # One latent, two names: the joint maximum over both flags it beyond the tighter limit.
    switch_value = min(expected["pre_switch"], expected["step_026"])
    assert len(set(expected.values())) == 5  # every checkpoint its own threshold: the lookups tell them apart
    # At each checkpoint's own step: its own threshold.
    assert at(10) == pytest.approx(expected["step_010"])
    assert at(26) == pytest.approx(switch_value)
    assert at(31) == pytest.approx(expected["step_031"])
    assert at(40) == pytest.approx(expected["final"])
    # Between checkpoints: the nearer one's, never across the switch.
    assert at(1) == at(15) == pytest.approx(expected["step_010"])  # high 0.04, 0.58: nearer 0.38 than 1
    assert at(20) == pytest.approx(switch_value)  # high 0.77
    assert at(27) == at(33) == pytest.approx(expected["step_031"])  # low 0.07, 0.5: nearer 0.36 than 1
    assert at(37) == pytest.approx(expected["final"])  # low 0.79
    # Fractions, not step numbers: 20 steps switching at 13 reach the same thresholds.
    assert at(12, 20, 13) == pytest.approx(switch_value) and at(14, 20, 13) == pytest.approx(expected["step_031"])
    # Unbound, or bound to another validator class, nothing applies.
    assert (
        ThresholdPolicy(thresholds).trajectory_threshold(
            "wan-tiny-random", REVISION, CLASS, CHECKPOINT_METRIC, "high-noise", 0.5
        )
        is None
    )
    assert (
        ThresholdPolicy(thresholds)
        .bound_to("cpu-other")
        .trajectory_threshold("wan-tiny-random", REVISION, CLASS, CHECKPOINT_METRIC, "high-noise", 0.5)
        is None
    )


def test_an_analysis_without_positions_gives_no_checkpoint_entries(tmp_path: Path) -> None:
    # A /2 analysis.json (committed folders) does not say where the checkpoints lie.
    folder = write_folder(tmp_path / "r", rows(20), None)
    analysis = analyze_folder(folder, method=FAST)
    assert analysis.reference_trajectory is None
    metrics = {e.metric for e in ThresholdsFile.load(folder / THRESHOLDS_FILE).entries}
    assert metrics == {"latent_rel_l2"}


def test_an_empirical_analysis_says_its_thresholds_hold_in_sample(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "r", rows(20), layout())
    analyze_folder(folder, method=Method(repeats=10, resamples=10, rule="empirical"))
    entries = [e for e in ThresholdsFile.load(folder / THRESHOLDS_FILE).entries if e.metric == CHECKPOINT_METRIC]
    assert entries and all("in-sample threshold (empirical rule" in e.provenance.notes for e in entries)


def test_a_runtime_class_pattern_holds_the_checkpoint_entries_too(tmp_path: Path) -> None:
    # `experiment analyze --runtime-class PATTERN`: one entry per checkpoint for that pattern.
    analysis = analyze_folder(write_folder(tmp_path / "r", rows(20), layout()), method=FAST)
    thresholds = thresholds_file(analysis, "cpu-*")
    entries = [e for e in thresholds.entries if e.metric == CHECKPOINT_METRIC]
    assert len(entries) == 4 and {e.runtime_class for e in entries} == {"cpu-*"}
    policy = ThresholdPolicy(thresholds).bound_to(CLASS)
    found = policy.trajectory_threshold("wan-tiny-random", REVISION, "cpu-other", CHECKPOINT_METRIC, "low-noise", 0.9)
    assert found is not None and found.value == pytest.approx(joint_limits(analysis)[1]["latent_rel_l2:value"])


def test_the_entries_decide_what_the_joint_score_decides(tmp_path: Path) -> None:
    # Full mode: a pair is flagged when any checkpoint, the final latent (at its position and its
    # flat entry) or psnr:mean is beyond its entry; that must be full:max beyond its threshold.
    checkpoints = {k: v for k, v in CHECKPOINTS.items() if k != "step_026"}  # one name per latent
    table = rows(80, checkpoints, frame=True)
    folder = write_folder(tmp_path / "r", table, layout(checkpoints))
    analysis = analyze_folder(folder, method=FAST)
    joint, _ = joint_limits(analysis, "full:max")
    assert joint.columns == [*(key_of(n) for n in checkpoints), "latent_rel_l2:value", "psnr:mean"]
    (pool,) = joint.pools
    assert pool.scales is not None and pool.centres is not None
    thresholds = ThresholdsFile.load(folder / THRESHOLDS_FILE)
    assert all("joint threshold" in e.provenance.notes and "full:max" in e.provenance.notes for e in thresholds.entries)
    policy = ThresholdPolicy(thresholds).bound_to(CLASS)
    flat = policy.thresholds_for("wan-tiny-random", REVISION, CLASS)
    assert set(flat) == {"latent_rel_l2:value", "psnr:mean"}

    def joint_flags(row: dict[str, Any]) -> bool:
        distances = [row[key_of(n)] for n in checkpoints] + [row["latent_rel_l2:value"], 10 ** (-row["psnr:mean"] / 20)]
        standardised = [(d - c) / w for d, c, w in zip(distances, pool.centres, pool.scales, strict=True)]  # type: ignore[operator]
        return max(standardised) > pool.threshold

    def entries_flag(row: dict[str, Any]) -> bool:
        for name, (step, _) in [*checkpoints.items(), ("final", (STEPS, 0.0))]:
            limit = policy.trajectory_threshold(
                "wan-tiny-random", REVISION, CLASS, CHECKPOINT_METRIC, *step_position(step, STEPS, SWITCH)
            )
            assert limit is not None
            if not limit.passes(row[key_of(name)]):
                return True
        return not all(t.passes(row[key]) for key, t in flat.items())

    decided = [(joint_flags(r), entries_flag(r), r["configuration"]) for r in table]
    assert all(a == b for a, b, _ in decided)
    flagged = {c: sum(a for a, _, n in decided if n == c) for c in ("b", "near", "m")}
    assert flagged["b"] == pool.false_positives  # the in-sample FPR the analysis reports is the entries'
    assert 0 < flagged["near"] < 80 and flagged["m"] == 80  # both outcomes exercised
