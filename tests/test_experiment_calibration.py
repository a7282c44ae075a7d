"""Out-of-sample calibration and bootstrap by prompt, on small synthetic score tables written as real
files and analysed by the real code path (``analyze_folder``, ``write_report_from_folder``)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.experiment.analyze import ANALYSIS_FILE, THRESHOLDS_FILE, Analysis, Method, analyze_folder
from ditproof.experiment.calibration import (
    CROSS_FIT_FOLDS,
    NORMALISER_FLOOR,
    PoolScores,
    calibrate_pool,
    column_standards,
    fixed,
    normalised_max,
    spot_check_draws,
    spot_check_max,
    worst_pool,
)
from ditproof.experiment.config import load_experiment
from ditproof.experiment.plan import plan_jobs
from ditproof.experiment.report import write_report_from_folder
from ditproof.experiment.score import SCORES_FILE, _write_scores, checkpoint_distances
from ditproof.experiment.stats import (
    allowed_false_positives,
    bootstrap_counts,
    bootstrap_rates,
    clopper_pearson_upper,
    prompt_splits,
    threshold_value,
)
from ditproof.experiment.store import Store
from ditproof.experiment.summaries import MANIFEST_CSV, SCORES_CSV, read_scores_csv
from ditproof.validation.policy import ThresholdsFile

FAST = Method(repeats=60, resamples=400, seed=3, rule="empirical")
REVISION = "ab" * 32


def write_folder(folder: Path, rows: list[dict[str, Any]], fpr_target: float = 0.01) -> Path:
    """A report folder as `experiment report` leaves it: scores-summary.csv and an analysis.json."""
    folder.mkdir(parents=True, exist_ok=True)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with open(folder / SCORES_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    meta = {
        "experiment": "stage1-tiny-cpu",
        "model": "wan-tiny-random",
        "model_revision": REVISION,
        "runtime_class": "cpu-test/reference",
        "fpr_target": fpr_target,
    }
    Store(str(folder)).write_json(ANALYSIS_FILE, meta)
    return folder


def pair(prompt: int, configuration: str, label: str, **scores: Any) -> dict[str, Any]:
    exact = bool(scores.pop("exact", False))
    return {
        "job_id": f"{configuration}-{prompt}",
        "prompt_id": f"p{prompt:03d}",
        "configuration": configuration,
        "label": label,
        "video_exact": exact,
        "frames_exact": exact,
        "final_latent_exact": exact,
        **scores,
    }


def by_key(analysis: Analysis, key: str) -> Any:
    return next(k for k in analysis.keys if k.key == key)


def test_a_separable_case_gives_auc_1_and_tpr_1_in_and_out_of_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [pair(p, "b", "benign", **{"latent_rel_l2:value": rng.uniform(0.0, 1.0)}) for p in range(60)]
    rows += [pair(p, "m", "malign", **{"latent_rel_l2:value": rng.uniform(2.0, 3.0)}) for p in range(60)]
    analysis = analyze_folder(write_folder(tmp_path / "r", rows), method=FAST)
    key = by_key(analysis, "latent_rel_l2:value")
    (pool,) = key.pools
    (cls,) = pool.classes
    assert cls.auc == 1.0 and cls.tpr == 1.0 and cls.tpr_lower_95 == 1.0
    assert cls.oos_tpr_mean == 1.0 and cls.oos_tpr_p05 == 1.0
    assert cls.roc_tpr[0] == 1.0  # TPR 1 already at FPR 0
    assert key.summary is not None and key.summary.classes[0].oos_tpr_mean == 1.0
    assert analysis.best_key == "latent_rel_l2:value"
    # Both files were rewritten from the CSV: the thresholds file loads in the validator.
    thresholds = ThresholdsFile.load(tmp_path / "r" / THRESHOLDS_FILE)
    (entry,) = thresholds.entries
    assert entry.runtime_class == "cpu-test/reference" and entry.value == pytest.approx(pool.threshold)
    assert json.loads((tmp_path / "r" / ANALYSIS_FILE).read_text())["data"]["schema_version"].endswith("/3")


def test_the_out_of_sample_split_is_by_prompt() -> None:
    # 12 prompts, 5 benign pairs each, all of one prompt equal to the prompt's index. Target 0: the
    # threshold is the training maximum. Split by prompt, a test prompt above every training prompt
    # is flagged with all its pairs; a split by pair would put a twin of every prompt in training.
    prompts, per_prompt = 12, 5
    benign_prompt = np.repeat(np.arange(prompts), per_prompt)
    values = benign_prompt.astype(np.float64)
    malign = {"m": (np.full(prompts, 100.0), np.arange(prompts))}
    splits = prompt_splits(prompts, 80, seed=1)
    assert (splits.sum(axis=1) == 6).all() and len({row.tobytes() for row in splits}) > 40
    counts = bootstrap_counts(prompts, 10, seed=1)
    result, draws = calibrate_pool("b", fixed(values, benign_prompt, malign), 0.0, splits, counts)
    for train, fpr in zip(splits, draws.oos_fpr, strict=True):
        top = np.flatnonzero(train).max()
        test = np.flatnonzero(~train)
        assert fpr == pytest.approx((test > top).mean())  # a prompt is on one side only
    assert result.oos_fpr_mean is not None and result.oos_fpr_mean > 0.05
    assert result.fpr == 0.0  # in sample, the maximum flags nothing
    assert (prompt_splits(prompts, 80, seed=1) == splits).all()  # seeded


def test_the_bootstrap_resamples_prompts_not_pairs() -> None:
    prompts = 10
    counts = bootstrap_counts(prompts, 500, seed=2)
    assert counts.shape == (500, prompts) and (counts.sum(axis=1) == prompts).all()
    # Prompt 0's ten pairs are all flagged, the other prompts' none: every resample's rate is a
    # whole number of prompts' worth (k/10), never a single pair's.
    prompt = np.repeat(np.arange(prompts), 10)
    flags = prompt == 0
    rates = bootstrap_rates(flags, prompt, counts)
    assert np.allclose(rates * 10, np.round(rates * 10))
    assert rates.max() >= 0.3 and rates.min() == 0.0


CLASS_MATES = ("b1", "b2", "b3", "b4")


def _clustered_rows(clustered: bool) -> list[dict[str, Any]]:
    # Four configurations of one executor class: one pool with four pairs per prompt. Sixteen pairs
    # stand far out: on 4 prompts (all four pairs of each) or on 16 prompts (one pair each).
    rng = np.random.default_rng(5)
    outliers = {(p, c) for p in range(4) for c in CLASS_MATES} if clustered else {(p, "b1") for p in range(16)}
    rows = []
    for p in range(100):
        for c in CLASS_MATES:
            value = 10.0 + rng.uniform() if (p, c) in outliers else rng.uniform()
            rows.append(
                pair(
                    p,
                    c,
                    "benign",
                    runtime_class="cls-x",
                    reference_runtime_class="cls-ref",
                    **{"latent_rel_l2:value": value},
                )
            )
        rows.append(pair(p, "m", "malign", runtime_class="cls-ref", **{"latent_rel_l2:value": 20.0}))
    return rows


def test_a_clustered_pool_gets_a_wider_bound_than_an_independent_one(tmp_path: Path) -> None:
    method = Method(repeats=20, resamples=2000, seed=0, rule="empirical")
    bounds = {}
    for clustered in (True, False):
        folder = write_folder(tmp_path / str(clustered), _clustered_rows(clustered), fpr_target=0.04)
        (pool,) = by_key(analyze_folder(folder, method=method), "latent_rel_l2:value").pools
        assert pool.pool == "b1+b2+b3+b4" and pool.pairs == 400 and pool.false_positives == 16  # 4% may fail
        bounds[clustered] = pool
    # The same 16 of 400 pairs above the threshold, but 4 independent prompts behind them, not 16:
    # about 4 × q95(Binomial(100, 0.04)) = 28 of 400 against q95(Binomial(100, 0.16)) = 22.
    clustered, independent = bounds[True], bounds[False]
    assert clustered.fpr == independent.fpr == 0.04
    assert clustered.fpr_upper_95 == independent.fpr_upper_95  # pairs as the unit: blind to clustering
    assert clustered.fpr_upper_95_bootstrap is not None and independent.fpr_upper_95_bootstrap is not None
    assert clustered.fpr_upper_95_bootstrap >= 0.065 and independent.fpr_upper_95_bootstrap <= 0.06


def test_pools_are_per_class_pair_and_exact_pairs_stay_out(tmp_path: Path) -> None:
    rows = []
    for p in range(50):
        # b1 and b2: one executor class; b3 another with larger distances; same-class: every pair exact.
        rows.append(pair(p, "b1", "benign", runtime_class="x", reference_runtime_class="ref", d=0.0))
        rows.append(pair(p, "b2", "benign", runtime_class="x", reference_runtime_class="ref", d=0.0))
        rows.append(pair(p, "b3", "benign", runtime_class="y", reference_runtime_class="ref", d=0.0))
        rows.append(pair(p, "same", "benign", exact=True, runtime_class="ref", reference_runtime_class="ref", d=0.0))
        rows.append(pair(p, "m", "malign", runtime_class="ref", reference_runtime_class="ref", d=0.0))
    for row in rows:
        p = int(row["prompt_id"][1:])
        row["latent_rel_l2:value"] = {"b1": p, "b2": p + 0.5, "b3": 100.0 + p, "same": 0.0, "m": 1000.0}[
            row["configuration"]
        ]
        del row["d"]
    # Half of b3's pairs are byte-identical (distance 0): decided by exact match, not in its pool.
    for row in rows:
        if row["configuration"] == "b3" and int(row["prompt_id"][1:]) % 2 == 0:
            row.update(video_exact=True, **{"latent_rel_l2:value": 0.0})
    analysis = analyze_folder(write_folder(tmp_path / "r", rows, fpr_target=0.04), method=FAST)
    pools = {p.name: p for p in analysis.pools}
    assert set(pools) == {"b1+b2", "b3", "same"}
    assert (pools["b1+b2"].pairs, pools["b1+b2"].exact_pairs, pools["b1+b2"].executor_runtime_class) == (100, 0, "x")
    assert (pools["b3"].scored_pairs, pools["b3"].exact_pairs) == (25, 25)
    assert pools["same"].decided_by == "exact match" and pools["same"].scored_pairs == 0
    key = by_key(analysis, "latent_rel_l2:value")
    calibrated = {p.pool: p for p in key.pools}
    assert set(calibrated) == {"b1+b2", "b3"}  # no threshold for a pool decided by exact match
    # b3: 25 odd prompts, distances 101, 103, …, 149; at 4% one may fail: the 24th smallest, 147.
    # With the 25 exact pairs pooled in, two could fail and the threshold would be 145.
    assert calibrated["b3"].threshold == 147.0 and calibrated["b3"].pairs == 25
    # b1+b2: 100 pairs 0 … 49.5; four may fail: the 96th smallest, 47.5.
    assert calibrated["b1+b2"].threshold == 47.5
    thresholds = ThresholdsFile.load(tmp_path / "r" / THRESHOLDS_FILE)
    assert {(e.runtime_class, e.value) for e in thresholds.entries} == {("x", 47.5), ("y", 147.0)}
    assert analysis.exact_matches["b3"]["video_exact"] == 25


def test_trajectory_checkpoints_and_the_combined_score(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    rows = []
    for p in range(80):
        noise = {k: rng.uniform(0.5, 1.0) for k in ("step", "pre", "final")}
        rows.append(
            pair(
                p,
                "b",
                "benign",
                **{
                    "checkpoint_rel_l2:step_010": noise["step"],
                    "pre_switch_rel_l2": noise["pre"],  # older scores' name of the pre-switch checkpoint
                    "latent_rel_l2:value": noise["final"],
                },
            )
        )
        # early: off at step 10 only; late: off in the final latent only; no step_010 for late.
        rows.append(
            pair(
                p,
                "early",
                "malign",
                **{
                    "checkpoint_rel_l2:step_010": 5.0,
                    "pre_switch_rel_l2": rng.uniform(0.5, 1.0),
                    "latent_rel_l2:value": rng.uniform(0.5, 1.0),
                },
            )
        )
        rows.append(
            pair(p, "late", "malign", **{"pre_switch_rel_l2": rng.uniform(0.5, 1.0), "latent_rel_l2:value": 5.0})
        )
    analysis = analyze_folder(write_folder(tmp_path / "r", rows), method=FAST)
    keys = {k.key: k for k in analysis.keys}
    assert set(keys) == {
        "latent_rel_l2:value",
        "checkpoint_rel_l2:step_010",
        "checkpoint_rel_l2:pre_switch",
        "trajectory:max",
    }

    def oos(key: str, name: str) -> float | None:
        summary = keys[key].summary
        assert summary is not None
        return next(c.oos_tpr_mean for c in summary.classes if c.configuration == name)

    assert oos("checkpoint_rel_l2:step_010", "early") == 1.0
    assert oos("latent_rel_l2:value", "late") == 1.0
    assert oos("latent_rel_l2:value", "early") is not None and oos("latent_rel_l2:value", "early") < 0.2  # type: ignore[operator]
    assert oos("trajectory:max", "early") == 1.0 and oos("trajectory:max", "late") == 1.0
    assert keys["trajectory:max"].threshold is None and keys["trajectory:max"].kind == "trajectory"
    # Trajectory keys are the analysis's, not the validator's metrics: no thresholds-file entry.
    entries = ThresholdsFile.load(tmp_path / "r" / THRESHOLDS_FILE).entries
    assert [(e.metric, e.statistic) for e in entries] == [("latent_rel_l2", "value")]


def test_checkpoint_distances_pair_by_name_without_a_fixed_list() -> None:
    generator = torch.Generator().manual_seed(0)
    base = {n: torch.randn(4, 3, generator=generator) for n in ("initial", "step_005", "pre_switch", "final")}
    job = {n: t * 1.01 for n, t in base.items()} | {"step_010": torch.zeros(4, 3), "odd": torch.zeros(2)}
    reference = dict(base) | {"odd": torch.zeros(3)}
    distances = checkpoint_distances(job, reference)
    assert set(distances) == {"checkpoint_rel_l2:step_005", "checkpoint_rel_l2:pre_switch", "checkpoint_rel_l2:odd"}
    assert distances["checkpoint_rel_l2:step_005"] == pytest.approx(0.01, rel=1e-4)
    assert distances["checkpoint_rel_l2:odd"] is None  # shapes differ: no distance


def test_score_rows_with_other_columns_keep_every_column(tmp_path: Path) -> None:
    jobs = [j for j in plan_jobs(load_experiment("stage1-tiny-cpu")) if not j.is_reference][:2]
    rows = {
        jobs[0].job_id: {"job_id": jobs[0].job_id, "latent_rel_l2:value": 0.1},
        jobs[1].job_id: {"job_id": jobs[1].job_id, "latent_rel_l2:value": 0.2, "checkpoint_rel_l2:step_010": 0.3},
    }
    store = Store(str(tmp_path / "s"))
    _write_scores(store, jobs, rows)
    table = store.read_parquet(SCORES_FILE).to_pylist()
    assert table[0]["checkpoint_rel_l2:step_010"] is None and table[1]["checkpoint_rel_l2:step_010"] == 0.3


def test_bad_score_files_are_refused_with_the_place(tmp_path: Path) -> None:
    rows = [pair(p, "b", "benign", **{"latent_rel_l2:value": 0.1}) for p in range(3)]
    rows += [pair(p, "m", "malign", **{"latent_rel_l2:value": 0.9}) for p in range(3)]
    folder = write_folder(tmp_path / "r", rows)
    text = (folder / SCORES_CSV).read_text().replace("False", "maybe", 1)
    (folder / SCORES_CSV).write_text(text)
    with pytest.raises(InvalidInputError, match=r"scores-summary.csv:2: column video_exact: got 'maybe'"):
        read_scores_csv(folder / SCORES_CSV)
    only_benign = write_folder(tmp_path / "b", [r for r in rows if r["label"] == "benign"])
    with pytest.raises(InvalidInputError, match="at least one configuration of each"):
        analyze_folder(only_benign, method=FAST)
    with pytest.raises(InvalidInputError, match="no scores-summary.csv"):
        analyze_folder(tmp_path / "missing", method=FAST)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        prompt_splits(1, 10, 0)


def test_the_report_regenerates_from_the_folder_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for p in range(40):
        rows.append(
            pair(
                p,
                "cfg-batched",
                "benign",
                **{"psnr:mean": 45 + rng.normal(), "latent_rel_l2:value": rng.uniform(0.01, 0.02)},
            )
        )
        rows.append(
            pair(
                p,
                "steps-3",
                "malign",
                **{"psnr:mean": 44 + rng.normal(), "latent_rel_l2:value": rng.uniform(0.05, 0.1)},
            )
        )
    folder = write_folder(tmp_path / "r", rows)
    with open(folder / MANIFEST_CSV, "w") as handle:
        handle.write("prompt_id,configuration,status,reason,device_name,total_s,forward_passes\n")
        handle.writelines(f"p{p:03d},reference,done,,cpu,1.5,8\n" for p in range(40))
    with pytest.raises(InvalidInputError, match="analyze --folder"):
        write_report_from_folder(folder)  # the analysis.json is not an analysis yet
    analyze_folder(folder, method=FAST)
    md = write_report_from_folder(folder).read_text()
    assert "## Detection at 1% FPR: in sample and out of sample" in md
    assert "Only latent or trajectory metrics decide steps-3." in md
    assert "| `latent_rel_l2:value` |" in md and "### Per pool: `latent_rel_l2:value`" in md
    assert (folder / "roc-latent-rel-l2-value.png").is_file() and (folder / "report.html").is_file()


def test_the_conformal_rule_keeps_the_out_of_sample_fpr_at_the_target() -> None:
    assert [allowed_false_positives(n, 0.01) for n in (99, 100, 200, 1000)] == [0, 1, 2, 10]
    assert [allowed_false_positives(n, 0.01, "conformal") for n in (99, 100, 200, 1000)] == [0, 0, 1, 9]
    # One pair per prompt, 200 prompts, 400 half splits: the empirical rule's threshold (fitted on 100
    # prompts, 5 may fail) flags about 6/101 of new prompts; the conformal one about 5/101.
    rng = np.random.default_rng(0)
    prompts = np.arange(200)
    scores = fixed(rng.normal(size=200), prompts, {"m": (rng.normal(size=200) + 3.0, prompts)})
    splits, counts = prompt_splits(200, 400, seed=0), bootstrap_counts(200, 10, seed=0)
    empirical, _ = calibrate_pool("b", scores, 0.05, splits, counts, rule="empirical")
    conformal, _ = calibrate_pool("b", scores, 0.05, splits, counts, rule="conformal")
    assert empirical.oos_fpr_mean is not None and conformal.oos_fpr_mean is not None
    assert empirical.oos_fpr_mean > 0.055 and conformal.oos_fpr_mean < 0.0515
    assert empirical.fpr == 0.05 and conformal.fpr == 0.045  # in sample both look at or under the target


def test_the_bound_over_prompts_holds_a_new_prompts_fpr_at_the_in_sample_threshold() -> None:
    # One pair per prompt, 150 prompts, conformal rule at 1%: the threshold is the pool's maximum,
    # which no pair exceeds in sample, so a bootstrap of the in-sample FPR reads 0; the bound over
    # prompts (Clopper-Pearson, 0 of 150) is the 95% quantile of a new prompt's FPR there.
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    prompts = np.arange(150)
    splits, counts = prompt_splits(150, 2, seed=0), bootstrap_counts(150, 50, seed=0)
    above, bounds = 0, []
    for _ in range(400):
        result, draws = calibrate_pool(
            "b", fixed(rng.normal(size=150), prompts, {}), 0.01, splits, counts, rule="conformal"
        )
        assert result.false_positives == 0 and result.fpr_upper_95_bootstrap == 0.0
        bounds.append((result, draws))
        above += float(norm.sf(result.threshold)) > result.fpr_upper_95_prompts  # the true FPR beyond the bound
    assert bounds[0][0].fpr_upper_95_prompts == pytest.approx(1 - 0.05 ** (1 / 150))  # 2.0%
    assert 0.02 <= above / 400 <= 0.08  # a 95% bound: exceeded about 5% of the time
    summary = worst_pool(bounds[:2])
    assert summary.fpr_upper_95_prompts == max(r.fpr_upper_95_prompts for r, _ in bounds[:2])


def test_the_bounded_rule_keeps_the_95_bound_of_a_new_prompts_fpr_at_the_target() -> None:
    # The most pairs above the threshold whose Clopper-Pearson bound stays at or under the target.
    assert [allowed_false_positives(n, 0.01, "bounded") for n in (200, 298, 299, 1000, 10_000)] == [0, 0, 0, 4, 83]
    for n in (299, 1000, 10_000):
        a = allowed_false_positives(n, 0.01, "bounded")
        assert clopper_pearson_upper(a, n) <= 0.01 < clopper_pearson_upper(a + 1, n)
    assert clopper_pearson_upper(0, 298) > 0.01  # below 299 pairs even the maximum's bound is above 1%
    # Simulated: 1,000 pairs, threshold by the rule; a new pair's true FPR beyond 1% in about 5% of sets at most.
    from scipy.stats import norm

    rng = np.random.default_rng(7)
    beyond = sum(float(norm.sf(threshold_value(rng.normal(size=1000), 0.01, "bounded"))) > 0.01 for _ in range(300))
    assert beyond / 300 <= 0.08


def test_a_prompts_own_benign_distance_normalises_its_chaos_away(tmp_path: Path) -> None:
    # Three chaotic prompts scale every distance by 20. Raw, their benign pairs sit above every
    # ordinary malign pair; divided by the normaliser configuration's distance on the same prompt
    # (a validator's own second regeneration), benign ratios stay in (0.5, 2), malign ones in (2, 5).
    rng = np.random.default_rng(4)
    rows = []
    for p in range(60):
        scale = 20.0 if p < 3 else 1.0
        for name, label, low in (("b", "benign", 1.0), ("n", "benign", 1.0), ("m", "malign", 4.0)):
            value = scale * rng.uniform(low, low + 1.0)
            rows.append(pair(p, name, label, **{"latent_rel_l2:value": value, "checkpoint_rel_l2:pre_switch": value}))
    folder = write_folder(tmp_path / "r", rows)
    analysis = analyze_folder(folder, method=Method(repeats=60, resamples=400, normaliser="n"))
    keys = {k.key: k for k in analysis.keys}
    raw, normalised = keys["checkpoint_rel_l2:pre_switch"], keys["checkpoint_rel_l2:pre_switch/n"]
    assert normalised.normalised_by == "n" and [p.pool for p in normalised.pools] == ["b"]  # not n itself
    assert {p.pool for p in raw.pools} == {"b", "n"}
    assert raw.summary is not None and normalised.summary is not None
    assert raw.summary.classes[0].tpr < 0.2
    assert normalised.summary.classes[0].tpr == 1.0 and normalised.summary.classes[0].oos_tpr_mean == 1.0
    assert analysis.best_key == "latent_rel_l2:value"  # a normalised key is not a validator metric (yet)
    entries = ThresholdsFile.load(folder / THRESHOLDS_FILE).entries
    assert {(e.metric, e.statistic) for e in entries} == {("latent_rel_l2", "value")}
    with pytest.raises(InvalidInputError, match=r"normaliser 'm' is not a benign configuration; allowed: \['b', 'n'\]"):
        analyze_folder(folder, method=Method(repeats=5, resamples=5, normaliser="m"))
    for row in rows:
        if row["configuration"] == "n":
            row["video_exact"] = True
    with pytest.raises(InvalidInputError, match="normaliser 'n': every pair is byte-identical"):
        analyze_folder(write_folder(tmp_path / "exact", rows), method=Method(repeats=5, resamples=5, normaliser="n"))


def test_cli_analyze_and_report_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ditproof.cli.main import main

    rng = np.random.default_rng(2)
    rows = [pair(p, "b", "benign", **{"latent_rel_l2:value": rng.uniform(0, 1)}) for p in range(30)]
    rows += [pair(p, "m", "malign", **{"latent_rel_l2:value": rng.uniform(2, 3)}) for p in range(30)]
    folder = write_folder(tmp_path / "r", rows)
    (folder / MANIFEST_CSV).write_text("prompt_id,configuration,status,reason,device_name,total_s,forward_passes\n")

    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as exit_info:
            main(["experiment", *args])
        return int(exit_info.value.code or 0)

    assert run("analyze", "--folder", str(folder), "--repeats", "20", "--resamples", "50") == 0
    assert "latent_rel_l2:value" in capsys.readouterr().out
    assert run("report", "--folder", str(folder)) == 0 and (folder / "report.md").is_file()
    assert "(conformal rule:" in (folder / "report.md").read_text()
    # The report names the rule the analysis used.
    assert run("analyze", "--folder", str(folder), "--repeats", "5", "--resamples", "5", "--rule", "bounded") == 0
    assert run("report", "--folder", str(folder)) == 0
    report = (folder / "report.md").read_text()
    assert "(bounded rule:" in report and "conformal rule" not in report and "empirical rule" not in report
    assert run("analyze") == 2 and "exactly one of --store and --folder" in capsys.readouterr().err
    assert run("analyze", "--folder", str(folder), "--rule", "loose") == 2
    assert "--rule: got 'loose'; allowed: empirical, conformal, bounded" in capsys.readouterr().err
    assert run("report", "--store", str(tmp_path / "s")) == 2  # --out is required with --store


def test_a_joint_score_standardises_each_column_by_its_benign_median_and_99th_percentile() -> None:
    ones = np.ones(10)
    benign = np.column_stack([np.arange(1.0, 11.0), 0 * ones, np.r_[np.zeros(9), 1e-13], np.full(10, np.nan)])
    # Median 5.5 and 99th percentile 9.91 of 1..10; a column never moved: width 0 (exactness); a
    # tiny spread: the floor; no value: no standard.
    centres, widths = column_standards(benign)
    assert np.allclose(centres[:3], [5.5, 0.0, 0.0]) and np.isnan(centres[3])
    assert np.allclose(widths[:3], [4.41, 0.0, NORMALISER_FLOOR], rtol=1e-12, atol=0) and np.isnan(widths[3])
    prompts = np.arange(10)
    cheat = np.array([[9.1, np.nan, 0.0, 5.0], [1.0, np.inf, 0.0, np.nan], [1.0, 1e-9, 0.0, np.nan]])
    scores = normalised_max(benign, prompts, {"cheat": (cheat, np.array([0, 1, 2]))})
    train = np.arange(10) < 9  # the last prompt (the only moved one in column 2) outside
    assert scores.standards is not None
    fitted = scores.standards(train)
    assert np.allclose(fitted[0][:3], [5.0, 0.0, 0.0]) and np.allclose(fitted[1][:3], [3.92, 0.0, 0.0])
    b, m = scores.badness(train)
    assert b[9] == np.inf  # 1e-13 where every training pair was exact: caught
    assert np.allclose(b[:9], np.maximum((benign[:9, 0] - 5.0) / 3.92, 0.0))  # column 0 decides, the others sit at 0
    # The threshold is fitted on the training pairs scored with the other folds' standards (folds:
    # prompt index modulo 5), as a new prompt would be scored.
    assert scores.fitting is not None
    fitted_on = scores.fitting(train)
    assert fitted_on[9] == np.inf
    for pair in range(9):
        rest = train & (prompts % CROSS_FIT_FOLDS != pair % CROSS_FIT_FOLDS)
        centre, width = np.median(benign[rest, 0]), np.quantile(benign[rest, 0], 0.99) - np.median(benign[rest, 0])
        assert np.isclose(fitted_on[pair], max((benign[pair, 0] - centre) / width, 0.0))
    assert np.isclose(m["cheat"][0], (9.1 - 5.0) / 3.92) and m["cheat"][1] == np.inf  # a missing value never decides
    assert m["cheat"][2] == np.inf
    # The in-sample standards (all prompts) are kept in the pool's calibration, None where unknown.
    splits, counts = prompt_splits(10, 5, seed=0), bootstrap_counts(10, 5, seed=0)
    result, _ = calibrate_pool("b", scores, 0.25, splits, counts)
    assert result.scales is not None and np.allclose(result.scales[:3], [4.41, 0.0, NORMALISER_FLOOR])  # type: ignore[arg-type]
    assert result.centres is not None and np.allclose(result.centres[:3], [5.5, 0.0, 0.0])  # type: ignore[arg-type]
    assert result.scales[3] is None and result.centres[3] is None
    plain, _ = calibrate_pool("b", fixed(benign[:, 0], prompts, {}), 0.25, splits, counts)
    assert plain.scales is None and plain.centres is None


def test_a_column_exact_but_for_one_prompt_takes_that_prompts_distance_as_its_width() -> None:
    # 150 prompts: one position exact but for one prompt (its 99th percentile is its median, 0), one
    # that spreads on every prompt. The floor as the first column's width would put that prompt at
    # 10^8 widths and the joint threshold with it; its distance as the width keeps it at 1.
    rng = np.random.default_rng(0)
    sparse = np.r_[np.zeros(149), 3e-4]
    spread = rng.uniform(1e-3, 2e-3, 150)
    benign = np.column_stack([sparse, spread])
    centres, widths = column_standards(benign)
    assert centres[0] == 0.0 and np.isclose(widths[0], 3e-4, rtol=1e-12) and widths[0] > NORMALISER_FLOOR
    prompts = np.arange(150)
    scores = normalised_max(benign, prompts, {"cheat": (np.array([[0.0, 0.5]]), np.array([0]))})
    b, m = scores.badness(np.ones(150, dtype=bool))
    assert b.max() < 2 and m["cheat"][0] > 100  # the cheat, 0.5 at the spread position, far beyond


def _scaled_max(benign: np.ndarray, prompts: np.ndarray, malign: np.ndarray) -> PoolScores:
    """The joint score before standardisation: each column over its benign 90th percentile."""

    def badness(train: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        scales = np.quantile(benign[train[prompts]], 0.9, axis=0)
        return (benign / scales).max(axis=1), {"cheat": (malign / scales).max(axis=1)}

    return PoolScores(benign_prompt=prompts, malign_prompt={"cheat": prompts}, badness=badness, trained=True)


def test_a_tight_position_keeps_its_power_beside_heavy_tailed_ones() -> None:
    # A trajectory's early positions are tight (benign maximum about 1.2x the median) and its
    # middle ones heavy-tailed (a few prompts spread far). A cheat that moves only a tight position
    # 1.5x (10 standard deviations) is lost under 90th-percentile scales, whose one threshold the heavy tails set; the
    # median and 99th-percentile standardisation keeps it, at the same out-of-sample FPR.
    rng = np.random.default_rng(7)
    n = 400
    prompts = np.arange(n)
    tight = 1e-4 * (1 + 0.05 * rng.normal(size=(n, 4)))
    heavy = 1e-3 * np.exp(0.3 * rng.normal(size=(n, 4)))
    heavy[rng.choice(n, 12, replace=False)] *= rng.uniform(4, 15, size=(12, 1))  # 3% spread far
    benign = np.hstack([tight, heavy])
    cheat = np.hstack([tight[:, :1] * 1.5, benign[:, 1:]])[rng.permutation(n)]
    splits, counts = prompt_splits(n, 50, seed=2), bootstrap_counts(n, 10, seed=2)
    new, _ = calibrate_pool(
        "b", normalised_max(benign, prompts, {"cheat": (cheat, prompts)}), 0.01, splits, counts, rule="conformal"
    )
    old, _ = calibrate_pool("b", _scaled_max(benign, prompts, cheat), 0.01, splits, counts, rule="conformal")
    assert new.oos_fpr_mean is not None and old.oos_fpr_mean is not None and new.oos_fpr_mean < 0.015
    new_tpr, old_tpr = new.classes[0].oos_tpr_mean, old.classes[0].oos_tpr_mean
    assert new_tpr is not None and old_tpr is not None
    assert new_tpr > 0.75 and old_tpr < 0.1, (new_tpr, old_tpr)  # 0.83 and 0.007 here


def _spread_trajectory(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three tight early positions and six heavy-tailed later ones (3% of the prompts spread 5-40x),
    and a cheat that moves only the first early position by 1.3x."""
    rng = np.random.default_rng(seed)
    tight = 1e-4 * (1 + 0.05 * rng.normal(size=(n, 3)))
    heavy = 1e-3 * np.exp(0.3 * rng.normal(size=(n, 6)))
    heavy[rng.choice(n, 18 * n // 600, replace=False)] *= rng.uniform(5, 40, size=(18 * n // 600, 1))
    benign = np.hstack([tight, heavy])
    cheat = np.hstack([tight[:, :1] * 1.3, benign[:, 1:]])[rng.permutation(n)]
    return benign, cheat


def test_blocks_keep_an_early_cheat_that_the_later_tails_hide_at_the_same_fpr() -> None:
    # With one threshold on the maximum, the spread prompts' scores at the later positions set it,
    # and the early limits rise with it; each block scaled to its own training maximum keeps them.
    n = 600
    benign, cheat = _spread_trajectory(11, n)
    prompts = np.arange(n)
    splits, counts = prompt_splits(n, 50, seed=2), bootstrap_counts(n, 10, seed=2)
    results = {}
    for blocks in (None, [[0, 1, 2], [3, 4, 5, 6, 7, 8]]):
        scores = normalised_max(benign, prompts, {"cheat": (cheat, prompts)}, blocks=blocks)
        results[blocks is not None], _ = calibrate_pool("b", scores, 0.01, splits, counts, rule="conformal")
    one, blocked = results[False], results[True]
    assert one.oos_fpr_mean is not None and blocked.oos_fpr_mean is not None
    assert blocked.oos_fpr_mean < 0.015 and one.oos_fpr_mean < 0.015  # 0.66% and 0.50% here
    one_tpr, blocked_tpr = one.classes[0].oos_tpr_mean, blocked.classes[0].oos_tpr_mean
    assert one_tpr is not None and blocked_tpr is not None
    assert blocked_tpr > 0.9 and one_tpr < 0.75, (blocked_tpr, one_tpr)  # 0.98 and 0.59 here


def test_a_blocked_scores_limits_are_its_centres_plus_the_threshold_times_its_widths() -> None:
    # What a thresholds file keeps of a joint score (each position's centre and width, one
    # threshold) must flag the pairs the score flags: the block's factor is in the widths.
    n = 300
    benign, cheat = _spread_trajectory(4, n)
    prompts = np.arange(n)
    splits, counts = prompt_splits(n, 5, seed=1), bootstrap_counts(n, 10, seed=1)
    scores = normalised_max(benign, prompts, {"cheat": (cheat, prompts)}, blocks=[[0, 1, 2], [3, 4, 5, 6, 7, 8]])
    result, _ = calibrate_pool("b", scores, 0.01, splits, counts, rule="conformal")
    assert result.scales is not None and result.centres is not None
    limits = np.array(result.centres, dtype=float) + result.threshold * np.array(result.scales, dtype=float)
    plain_centres, plain_widths = column_standards(benign)
    factors = np.array(result.scales, dtype=float) / plain_widths
    assert np.allclose(factors[:3], factors[0]) and np.allclose(factors[3:], factors[3])
    assert not np.isclose(factors[0], factors[3])
    assert np.allclose(result.centres, plain_centres)
    for matrix, rate in ((benign, result.fpr), (cheat, result.classes[0].tpr)):
        assert np.mean((matrix > limits).any(axis=1)) == pytest.approx(rate)


def _tail_scaled_max(benign: np.ndarray, prompts: np.ndarray, target: float) -> PoolScores:
    """The former joint score: each column over its own threshold at ``target`` on the training prompts."""

    def badness(train: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        fitted = benign[train[prompts]]
        norms = np.array([threshold_value(fitted[:, k], target, "conformal") for k in range(benign.shape[1])])
        return (benign / norms).max(axis=1), {}

    return PoolScores(benign_prompt=prompts, malign_prompt={}, badness=badness, trained=True)


def test_standardising_keeps_the_joint_fpr_at_the_target_where_tail_scaling_overshoots() -> None:
    # 200 prompts, one pair each, 16 positions that move together per prompt (as a run's
    # checkpoints do) with their own noise and scale. Scaling each position by its own training
    # threshold puts every training maximum near 1, so a new prompt beyond any one position's
    # tail is flagged: many times the target. Standardised columns whose training pairs are scored
    # cross-fitted give the threshold a new prompt's scores: one threshold, one target.
    rng = np.random.default_rng(5)
    prompts = np.arange(200)
    shared = rng.normal(size=(200, 1))
    benign = np.exp(0.6 * shared + 0.5 * rng.normal(size=(200, 16))) * np.geomspace(1e-4, 1e-1, 16)
    splits, counts = prompt_splits(200, 200, seed=1), bootstrap_counts(200, 10, seed=1)
    target = 0.01
    scaled, _ = calibrate_pool("b", normalised_max(benign, prompts, {}), target, splits, counts, rule="conformal")
    tail, _ = calibrate_pool("b", _tail_scaled_max(benign, prompts, target), target, splits, counts, rule="conformal")
    assert scaled.oos_fpr_mean is not None and tail.oos_fpr_mean is not None
    assert scaled.oos_fpr_mean < 1.5 * target
    assert tail.oos_fpr_mean > 5 * target  # 7.6% here


def test_a_large_summary_is_written_compressed_and_read_back_the_same(tmp_path: Path) -> None:
    from ditproof.experiment.summaries import COMPRESS_FROM_ROWS, summary_path, write_csv, write_summary

    rng = np.random.default_rng(3)
    rows = []
    for p in range(COMPRESS_FROM_ROWS // 2):
        rows.append(pair(p, "cfg-batched", "benign", **{"latent_rel_l2:value": float(rng.uniform(0.01, 0.02))}))
        rows.append(pair(p, "steps-3", "malign", **{"latent_rel_l2:value": float(rng.uniform(0.05, 0.1))}))
    rows[0] |= {"scored_from": "hashes"}  # a pair decided from its records: the column is text
    plain = write_folder(tmp_path / "plain", rows)
    write_csv(plain / SCORES_CSV, read_scores_csv(plain / SCORES_CSV))  # as the report writes it: 9 digits
    packed = tmp_path / "packed"
    packed.mkdir()
    shutil.copy(plain / "analysis.json", packed / "analysis.json")
    (packed / SCORES_CSV).write_text("stale")  # a plain file from an earlier, smaller write goes
    written = write_summary(packed, SCORES_CSV, read_scores_csv(plain / SCORES_CSV))
    assert written.name == f"{SCORES_CSV}.gz" and not (packed / SCORES_CSV).exists()
    assert summary_path(packed, SCORES_CSV) == written
    assert read_scores_csv(written) == read_scores_csv(plain / SCORES_CSV)
    assert read_scores_csv(written)[0]["scored_from"] == "hashes"
    first = written.read_bytes()
    write_summary(packed, SCORES_CSV, read_scores_csv(written))
    assert written.read_bytes() == first  # the same rows give the same bytes
    one, other = analyze_folder(plain, method=FAST), analyze_folder(packed, method=FAST)
    assert one.pools == other.pools and one.keys == other.keys


def test_a_spot_check_scores_each_draw_at_the_largest_of_its_segments() -> None:
    # Every draw of k segments per phase (an empty phase draws none, a phase with k or fewer draws
    # all): the spot check's score for a pair and a draw is its largest standardised segment in
    # that draw, in the order of spot_check_draws; a missing segment never decides, an
    # unmeasurable one (inf) is caught.
    rng = np.random.default_rng(4)
    benign = rng.lognormal(size=(40, 7))
    cheat = benign[:5] * 1.0
    cheat[0, 2] = np.nan
    cheat[1, 5] = np.inf
    prompts = np.arange(40)
    for phases in ([[0, 1, 2, 3], [4, 5, 6]], [[0, 1], [], [2, 3, 4, 5, 6]], [[0], [1, 2]]):
        for k in (1, 2, 3):
            draws = spot_check_draws(phases, k)
            scores = spot_check_max(benign, prompts, {"cheat": (cheat, prompts[:5])}, phases, k)
            train = prompts < 30
            b, m = scores.badness(train)
            centres, widths = column_standards(benign[train])
            for values, got in ((benign, b), (cheat, m["cheat"])):
                with np.errstate(invalid="ignore"):
                    standardised = np.where(np.isnan(values), -np.inf, (values - centres) / widths)
                expected = np.stack([standardised[:, draw].max(axis=1) for draw in draws], axis=1)
                assert np.array_equal(got.reshape(len(values), len(draws)), expected), (phases, k)
            if any(5 in phase for phase in phases):  # segment 5 unmeasurable for the second cheat
                assert m["cheat"].reshape(5, -1)[1].max() == np.inf


def test_a_summary_holds_every_rows_columns_where_the_first_row_lacks_some(tmp_path: Path) -> None:
    # A run whose segment re-runs cover some prompts only: the first pair has no segment columns,
    # later ones do. The summary holds every column, empty where a pair lacks it (read back: None).
    from ditproof.experiment.summaries import write_csv

    segment = {"segments": 2, "segments_exact": 1, "segment_rel_l2:step_003": 1.5e-4}
    rows = [pair(0, "b", "benign", **{"latent_rel_l2:value": 0.01})]
    rows += [pair(p, "b", "benign", **{"latent_rel_l2:value": 0.02}, **segment) for p in (1, 2)]
    write_csv(tmp_path / SCORES_CSV, rows)
    back = read_scores_csv(tmp_path / SCORES_CSV)
    assert list(back[0]) == list(rows[1])
    assert back[0]["segments"] is None and back[0]["segment_rel_l2:step_003"] is None
    assert back[1]["segments"] == 2 and back[1]["segments_exact"] == 1 and back[1]["segment_rel_l2:step_003"] == 1.5e-4


def test_the_full_modes_blocks_follow_the_schedule() -> None:
    from ditproof.experiment.findings import CheckpointPosition, ReferenceTrajectory
    from ditproof.experiment.keys import trajectory_blocks

    def position(name: str, step: int) -> CheckpointPosition:
        phase = "high-noise" if step <= 26 else "low-noise"
        key = "latent_rel_l2:value" if name == "final" else f"checkpoint_rel_l2:{name}"
        return CheckpointPosition(name=name, key=key, step=step, phase=phase, fraction=0.5)

    names = {"step_003": 3, "step_008": 8, "step_013": 13, "pre_switch": 26, "step_031": 31, "final": 40}
    trajectory = ReferenceTrajectory(steps=40, switch=26, checkpoints=[position(n, s) for n, s in names.items()])
    keys = [f"checkpoint_rel_l2:{n}" for n in list(names)[:-1]] + ["latent_rel_l2:value", "psnr:worst"]
    # Steps 3 and 8 (at most 20% of 40); 13 and the switch; step 31, the final latent and the video.
    assert trajectory_blocks(keys, trajectory) == [[0, 1], [2, 3], [4, 5, 6]]
    assert trajectory_blocks(["checkpoint_rel_l2:step_099", *keys], trajectory) is None
    assert trajectory_blocks(keys, None) is None
    one_expert = trajectory.model_copy(update={"switch": None})
    assert trajectory_blocks(keys, one_expert) == [[0, 1], [2, 3, 4], [5, 6]]
