"""Segment scores (the checkpoints and spot-check modes' evidence) through the Stage 1 harness, on
the CPU with the tiny model: plan → run → segments → score → analyze, merge and shards."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ditproof.cli.main import app
from ditproof.experiment.analyze import analyze_store
from ditproof.experiment.calibration import spot_check_draws, spot_check_max
from ditproof.experiment.config import load_experiment
from ditproof.experiment.findings import CHECKPOINTS_MODE_KEY, spot_check_key
from ditproof.experiment.jobs import load_plan, save_plan
from ditproof.experiment.merge import merge_stores
from ditproof.experiment.plan import plan_jobs
from ditproof.experiment.runners.local import run_local
from ditproof.experiment.score import score_store
from ditproof.experiment.segments import (
    NOISE_ANCHOR_COLUMN,
    NOISE_ANCHOR_EXCESS_COLUMN,
    SEGMENTS_FILE,
    read_segment_rows,
    score_segments,
)
from ditproof.experiment.store import Store
from ditproof.validation.policy import ThresholdsFile
from ditproof.validation.segments import NOISE_ANCHOR_MIN_SIGMA, noise_anchor_bound

CONFIG = """
schema_version = "ditproof.experiment/1"
name = "segments"
model = "wan-tiny-random"
prompts = "grammar"
max_prompts = 3
entropy = "{entropy}"
metrics = ["psnr"]

[reference]
request = {{ width = 64, height = 48, num_frames = 5, num_inference_steps = 8 }}

[[benign]]
name = "attn-math"
options = {{ attention_backend = "sdpa-math" }}

[[benign]]
name = "threads-1"
options = {{ cpu_threads = 1 }}

[[malign]]
name = "steps-7"
request = {{ num_inference_steps = 7 }}

[[malign]]
name = "other-seed"
seed_salt = "other"

[[malign]]
name = "low-noise-reuse"
options = {{ shortcut = {{ kind = "low-noise-reuse", every = 2 }} }}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp_path = tmp_path_factory.mktemp("segments")
    config = tmp_path / "segments.toml"
    config.write_text(CONFIG.format(entropy="5e" * 32))
    experiment = load_experiment(config)
    url = str(tmp_path / "store")
    save_plan(Store(url), experiment, plan_jobs(experiment))
    summary = run_local(url, workers=0)
    assert summary.failed == [] and summary.executed == 18
    score_segments(url)
    score_store(url)
    return url


def _rows(store: str) -> dict[str, list[dict]]:
    by_config: dict[str, list[dict]] = {}
    for row in read_segment_rows(Store(store)):
        by_config.setdefault(row["configuration"], []).append(row)
    return by_config


def _segments(row: dict) -> dict[str, float]:
    return {k.split(":", 1)[1]: v for k, v in row.items() if k.startswith("segment_rel_l2:") and v is not None}


def test_every_segment_of_every_job_is_rerun_and_cheats_show_where_they_cheated(store: str) -> None:
    rows = _rows(store)
    assert sorted(rows) == ["attn-math", "low-noise-reuse", "other-seed", "steps-7", "threads-1"]
    for config_rows in rows.values():
        assert len(config_rows) == 3
        for row in config_rows:
            assert row["segments"] == len(_segments(row)) >= 4
    for row in rows["attn-math"]:  # another kernel: every segment end within float32 noise
        assert max(_segments(row).values()) < 1e-4
    # The noise anchor, measured as the validator's: honest high-noise checkpoints imply a clean
    # latent within the smallest bound the anchor holds (half what another noise implies at noise
    # level 0.98); another seed's trajectory about sigma * sqrt(2) / (1 - sigma) times it (116 at
    # step 1 of 8).
    for name in ("attn-math", "threads-1", "low-noise-reuse"):
        assert all(row[NOISE_ANCHOR_COLUMN] <= noise_anchor_bound(NOISE_ANCHOR_MIN_SIGMA) for row in rows[name]), name
    assert all(row[NOISE_ANCHOR_COLUMN] > 100 for row in rows["other-seed"])
    # Its excess (the largest ratio over the bound at its noise level) decides: at most 1 passes.
    for name in ("attn-math", "threads-1", "low-noise-reuse"):
        assert all(0 < row[NOISE_ANCHOR_EXCESS_COLUMN] <= 1 for row in rows[name]), name
    assert all(row[NOISE_ANCHOR_EXCESS_COLUMN] > 1.5 for row in rows["other-seed"])
    for row in rows[
        "other-seed"
    ]:  # another noise: the first segment (from the claimed seed) fails, the rest are its own
        segments = _segments(row)
        first = min(segments, key=lambda name: (name != "step_001", name))
        assert segments[first] > 0.1
        assert row["segments_exact"] == row["segments"] - 1
    for row in rows["low-noise-reuse"]:  # honest until the switch, then cheaper: only low-noise segments fail
        segments = _segments(row)
        assert segments["pre_switch"] == 0.0 and segments["step_001"] == 0.0
        assert segments["final"] > 1e-3
    for row in rows["steps-7"]:  # 7 steps committed as 8: its solver history cannot be resumed on 8 steps' schedule
        assert any(math.isinf(v) or v > 1e-2 for v in _segments(row).values())


def test_segment_rows_are_kept_when_nothing_changed(store: str) -> None:
    calls: list[tuple[int, int]] = []
    before = read_segment_rows(Store(store))
    score_segments(store, progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # every row was valid: nothing re-run
    assert read_segment_rows(Store(store)) == before


def test_analysis_has_the_modes_and_segment_thresholds(store: str) -> None:
    analysis = analyze_store(store)
    keys = {k.key: k for k in analysis.keys}
    for key in (CHECKPOINTS_MODE_KEY, spot_check_key(1), spot_check_key(2)):
        assert keys[key].kind == "segment" and keys[key].summary is not None
    checkpoints = {c.configuration: c for c in keys[CHECKPOINTS_MODE_KEY].summary.classes}
    spot = {c.configuration: c for c in keys[spot_check_key(1)].summary.classes}
    # A spot check re-runs a subset of the segments with the same per-segment thresholds: it
    # cannot catch more than the checkpoints mode.
    for name, detection in spot.items():
        assert detection.tpr <= checkpoints[name].tpr + 1e-12
    file = ThresholdsFile.model_validate_json((Path(store) / "thresholds.json").read_text())
    segment_entries = [e for e in file.entries if e.metric == "latent_rel_l2_segment"]
    assert segment_entries and all(e.position is not None for e in segment_entries)
    assert {e.position.phase for e in segment_entries} == {"high-noise", "low-noise"}
    # One CPU thread changes no latent of the tiny model: its segments all end bit-exact, so for
    # that pair of classes the file requires exactness (value 0) rather than leaving no threshold.
    pools = {p.name: p for p in analysis.pools}
    assert pools["threads-1"].segments_exact and not pools["attn-math"].segments_exact
    one_thread = pools["threads-1"].executor_runtime_class
    exact = [e for e in segment_entries if e.runtime_class == one_thread]
    assert exact and {e.value for e in exact} == {0.0}
    assert {e.position.phase for e in exact} == {"high-noise", "low-noise"}
    assert all(e.value > 0 for e in segment_entries if e.runtime_class == pools["attn-math"].executor_runtime_class)
    # The noise anchor per configuration: every job with segment re-runs measured once, only
    # another seed's refused.
    anchor = {a.configuration: a for a in analysis.noise_anchor}
    assert sorted(anchor) == ["attn-math", "low-noise-reuse", "other-seed", "steps-7", "threads-1"]
    assert all(a.jobs == a.with_excess == 3 for a in anchor.values())
    assert anchor["other-seed"].refused == 3 and anchor["other-seed"].smallest_excess > 1
    assert all(anchor[name].refused == 0 for name in ("attn-math", "low-noise-reuse", "threads-1"))


def test_segments_of_prompts_spread_over_the_plan(store: str, tmp_path: Path) -> None:
    # --max-prompts 1 --spread: the middle prompt of the plan's 3, as a configuration with
    # prompt_selection = "spread" takes it; without --spread the first.
    copy = tmp_path / "spread"
    shutil.copytree(store, copy)
    (copy / SEGMENTS_FILE).unlink()
    prompts = list(dict.fromkeys(j.prompt_id for j in load_plan(Store(str(copy)))))
    by_job = {j.job_id: j.prompt_id for j in load_plan(Store(str(copy)))}
    score_segments(str(copy), configurations=["other-seed"], max_prompts=1, spread=True)
    assert [by_job[r["job_id"]] for r in read_segment_rows(Store(str(copy)))] == [prompts[1]]
    (copy / SEGMENTS_FILE).unlink()
    score_segments(str(copy), configurations=["other-seed"], max_prompts=1)
    assert [by_job[r["job_id"]] for r in read_segment_rows(Store(str(copy)))] == [prompts[0]]


def test_shards_and_merge_keep_segment_rows(store: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    (copy / SEGMENTS_FILE).unlink()
    for index in range(2):
        score_segments(str(copy), configurations=["other-seed"], shard=(index, 2))
    assert sorted(p.name for p in copy.glob("segments-*.parquet")) == [
        "segments-0-of-2.parquet",
        "segments-1-of-2.parquet",
    ]
    rows = read_segment_rows(Store(str(copy)))
    assert sorted(r["job_id"] for r in rows) == sorted(
        j.job_id for j in load_plan(Store(str(copy))) if j.configuration == "other-seed"
    )
    merged = tmp_path / "merged"
    merge_stores(str(merged), [str(copy)])
    assert len(read_segment_rows(Store(str(merged)))) == 3


def test_bad_shard_and_configuration_are_clear_errors(store: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", "segments", "--store", store, "--shard", "2/2"])
    assert result.exit_code == 2 and "allowed: I/N with 0 <= I < N" in result.output
    result = runner.invoke(app, ["experiment", "segments", "--store", store, "--device", "gpu"])
    assert result.exit_code == 2 and "allowed: cpu, cuda or cuda:N" in result.output
    result = runner.invoke(app, ["experiment", "segments", "--store", store, "--max-prompts", "0"])
    assert result.exit_code == 2 and "allowed: 1 or more" in result.output
    result = runner.invoke(app, ["experiment", "segments", "--store", store, "--configurations", "nope"])
    assert result.exit_code == 2 and "allowed: attn-math, low-noise-reuse, other-seed, steps-7" in result.output


def test_spot_check_rates_are_expectations_over_the_draws() -> None:
    assert spot_check_draws([[0, 1, 2], [3]], 1) == [[0, 3], [1, 3], [2, 3]]
    assert len(spot_check_draws([[0, 1, 2], [3, 4]], 2)) == 3
    benign = np.full((40, 4), 1.0)
    prompts = np.arange(40)
    cheat = np.array([[1.0, 9.0, 1.0, 1.0]])  # one bad segment of three in the high-noise phase
    scores = spot_check_max(benign, prompts, {"cheat": (cheat, np.array([0]))}, [[0, 1, 2], [3]], 1)
    everything = np.ones(40, dtype=bool)
    benign_badness, malign = scores.badness(everything)
    assert benign_badness.shape == (120,) and scores.benign_prompt.shape == (120,)
    assert np.isclose((malign["cheat"] > benign_badness.max()).mean(), 1 / 3)
    unmeasurable = np.array([[1.0, math.inf, 1.0, 1.0]])
    scores = spot_check_max(benign, prompts, {"cheat": (unmeasurable, np.array([0]))}, [[0, 1, 2], [3]], 3)
    _, malign = scores.badness(everything)
    assert np.isinf(malign["cheat"]).all()  # a segment that cannot be re-run is caught, not skipped


def test_spot_check_cost_follows_the_schedule() -> None:
    from ditproof.experiment.findings import CheckpointPosition, ReferenceTrajectory
    from ditproof.experiment.modes import mode_cost, segment_steps, spot_check_cost
    from ditproof.protocol.options import CheckpointSchedule
    from ditproof.validation.trajectory import step_position

    def trajectory(segments: int) -> ReferenceTrajectory:
        steps = CheckpointSchedule(segments=segments).steps(40, 26)
        checkpoints = [
            CheckpointPosition(name=f"step_{s:03d}", key=f"k{s}", step=s, phase=p, fraction=f)
            for s in steps
            if s
            for p, f in [step_position(s, 40, 26)]
        ]
        return ReferenceTrajectory(steps=40, switch=26, checkpoints=checkpoints)

    eight, sixteen = trajectory(8), trajectory(16)
    assert [n for n, _ in segment_steps(eight)] == [5, 5, 6, 5, 5, 5, 4, 5]
    assert math.isclose(spot_check_cost(eight, 1), (26 / 5 + 14 / 3) / 40)  # about 0.25
    assert math.isclose(spot_check_cost(sixteen, 1), (26 / 10 + 14 / 6) / 40)  # about 0.12
    assert spot_check_cost(sixteen, 1) <= 0.15 < spot_check_cost(eight, 1)
    assert mode_cost(sixteen, CHECKPOINTS_MODE_KEY) == 1.0 and math.isclose(
        mode_cost(sixteen, spot_check_key(2)), 2 * spot_check_cost(sixteen, 1)
    )


def test_the_modes_regenerate_from_a_committed_report_folder(store: str, tmp_path: Path) -> None:
    from ditproof.experiment.analyze import analyze_folder
    from ditproof.experiment.report import write_report

    first = analyze_store(store)
    write_report(store, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Validation modes" in report and "| spot-check k=1 | `spot-check:k1` |" in report
    assert (tmp_path / "report" / "roc-spot-check-k1.png").is_file()  # a ROC curve per mode
    assert not list((tmp_path / "report").glob("roc-segment-*.png"))  # not per segment
    again = analyze_folder(tmp_path / "report")
    for key in (CHECKPOINTS_MODE_KEY, spot_check_key(1)):
        ours = next(k for k in first.keys if k.key == key)
        theirs = next(k for k in again.keys if k.key == key)
        assert theirs.summary == ours.summary  # from scores-summary.csv alone: the same figures
    assert "## Noise anchor" in report and "| other-seed | malign | 3 |" in report
    for ours_anchor, theirs_anchor in zip(first.noise_anchor, again.noise_anchor, strict=True):  # CSV: 9 digits
        assert theirs_anchor.model_dump(exclude={"configuration", "label"}) == pytest.approx(
            ours_anchor.model_dump(exclude={"configuration", "label"}), rel=1e-8
        )
        assert (theirs_anchor.configuration, theirs_anchor.label) == (ours_anchor.configuration, ours_anchor.label)
