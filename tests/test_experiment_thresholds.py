"""The thresholds file of an analysis: per-position trajectory thresholds the validator's full mode
looks up (``latent_rel_l2_checkpoint`` at a step's phase and fraction), from synthetic score tables
analysed by the real code path (``analyze_folder``)."""

from __future__ import annotations

import csv
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ditproof.experiment.analyze import ANALYSIS_FILE, THRESHOLDS_FILE, Method, analyze_folder
from ditproof.experiment.findings import CheckpointPosition, ReferenceTrajectory
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


def layout() -> ReferenceTrajectory:
    points = []
    for name, step in [*((n, s) for n, (s, _) in CHECKPOINTS.items()), ("final", STEPS)]:
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


def rows(prompts: int = 60) -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    out = []
    for p in range(prompts):
        for configuration, label, factor in (("b", "benign", 1.0), ("m", "malign", 20.0)):
            row: dict[str, Any] = {
                "job_id": f"{configuration}-{p}",
                "prompt_id": f"p{p:03d}",
                "configuration": configuration,
                "label": label,
                "video_exact": False,
                "frames_exact": False,
                "final_latent_exact": False,
            }
            for name, (_, scale) in CHECKPOINTS.items():
                row[key_of(name)] = factor * scale * rng.uniform(0.5, 1.0)
            row[key_of("final")] = factor * 1e-2 * rng.uniform(0.5, 1.0)
            out.append(row)
    return out


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
    calibrated = {k.key: k.pools[0].threshold for k in analysis.keys if k.normalised_by is None and k.pools}
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
    assert "pre_switch" in switch_entry.provenance.notes and "out-of-sample" in switch_entry.provenance.notes

    policy = ThresholdPolicy(thresholds).bound_to(CLASS)

    def at(step: int, steps: int = STEPS, switch: int = SWITCH) -> float:
        found = policy.trajectory_threshold(
            "wan-tiny-random", REVISION, CLASS, CHECKPOINT_METRIC, *step_position(step, steps, switch)
        )
        assert found is not None
        return found.value

    expected = {name: calibrated[key_of(name)] for name in (*CHECKPOINTS, "final")}
    switch_value = max(expected["pre_switch"], expected["step_026"])  # one latent, two names: the looser
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
    final = next(k for k in analysis.keys if k.key == "latent_rel_l2:value")
    assert found is not None and found.value == pytest.approx(final.pools[0].threshold)
