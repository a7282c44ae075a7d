"""ROC statistics against scikit-learn, the threshold rule, Clopper–Pearson, and the proposal's estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from ditproof.experiment.config import load_experiment
from ditproof.experiment.estimate import estimate, load_timings
from ditproof.experiment.plan import plan_jobs
from ditproof.experiment.stats import auc, clopper_pearson_upper, roc_curve, threshold_at_fpr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_auc_agree_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    benign = np.round(rng.normal(0.0, 1.0, 60), 1)  # rounding makes ties
    malign = np.round(rng.normal(1.0, 1.0, 40), 1)
    labels = np.r_[np.zeros(benign.size), np.ones(malign.size)]
    scores = np.r_[benign, malign]
    assert auc(benign, malign) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ours = roc_curve(benign, malign)
    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(ours.fpr, fpr) and np.allclose(ours.tpr, tpr)
    assert ours.fpr[0] == 0.0 and ours.tpr[-1] == 1.0


def test_roc_and_auc_of_large_pools_need_no_pairwise_table() -> None:
    # 300,000 scores a side (a spot check's draws over a 1,000-prompt run): a table of all pairs
    # would take 90 GB; sorted counts take a few MB.
    n = 300_000
    benign = np.arange(n, dtype=np.float64)
    malign = benign + 0.5
    assert auc(benign, malign) == pytest.approx((n + 1) / (2 * n), abs=1e-12)
    ours = roc_curve(benign[:1000], np.r_[malign[:999], np.inf])  # an unmeasurable segment scores inf
    assert ours.tpr[1] == pytest.approx(1 / 1000) and ours.fpr[-1] == 1.0


def test_threshold_at_fpr_allows_floor_target_times_n_false_positives() -> None:
    benign = np.arange(1, 201, dtype=np.float64)  # 200 benign scores
    point = threshold_at_fpr(benign, 0.01)
    assert point.threshold == 198.0 and point.false_positives == 2 and point.fpr == 0.01
    small = threshold_at_fpr(np.array([0.1, 0.3, 0.2]), 0.01)
    assert small.threshold == 0.3 and small.false_positives == 0
    assert small.fpr_upper == pytest.approx(1 - 0.05 ** (1 / 3))  # 0 of n: 1 - alpha^(1/n)


def test_clopper_pearson_upper_bound() -> None:
    assert clopper_pearson_upper(0, 299) < 0.01 < clopper_pearson_upper(0, 298)
    assert clopper_pearson_upper(5, 100) == pytest.approx(0.1023, abs=1e-3)
    assert clopper_pearson_upper(3, 3) == 1.0


def test_estimate_reproduces_the_proposal_arithmetic(tmp_path: Path) -> None:
    jobs = plan_jobs(load_experiment("proposal"))
    assert len(jobs) == 10_000
    result = estimate(jobs, load_timings("proposal-timings"))
    # (7,000 × 326.9 + 1,000 × 91.7 × 4) / 3,600 and (1,000 × 785.7 + 1,000 × 215.2 × 4) / 3,600
    h100, a100 = (7_000 * 326.9 + 1_000 * 91.7 * 4) / 3_600, (1_000 * 785.7 + 1_000 * 215.2 * 4) / 3_600
    assert result.gpu_hours_by_model["H100"] == pytest.approx(h100) and round(h100) == 738  # the proposal's "~738"
    assert result.gpu_hours_by_model["A100"] == pytest.approx(a100) and round(a100) == 457  # "~457"
    assert round(result.gpu_hours, -2) == 1_200  # "about 1,200 GPU-hours"
    # 35 GB of video plus 3 float32 latents of 16×21×60×104 per video (about 252 GB).
    assert result.storage_bytes == 10_000 * (3_500_000 + 3 * 16 * 21 * 60 * 104 * 4)
    assert result.video_hours == pytest.approx(10_000 * 81 / 16 / 3600)
