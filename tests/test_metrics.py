"""Frame and latent metrics: known properties, input checks, offline weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.metrics import (
    FRAME_METRICS,
    METRICS,
    PSNR_IDENTICAL,
    MetricWeightsInvalidError,
    MetricWeightsMissingError,
    aggregate,
    frame_values,
    latent_cosine,
    latent_relative_l2,
    parse_score_key,
    score_latents,
    score_videos,
)
from ditproof.metrics.lpips import lpips_distance
from ditproof.metrics.testing import sample_video_pair, write_random_weights
from ditproof.metrics.weights import BACKBONE_FILES, HEAD_FILES, WEIGHTS_ENV

SMALL = [m for m in FRAME_METRICS if m != "ms_ssim"]  # ms_ssim needs frames of 176 px or more


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weight files where the metrics look for them (TORCH_HOME and DITPROOF_METRIC_WEIGHTS)."""
    root = tmp_path_factory.mktemp("metric-weights")
    paths = write_random_weights(root / "torch" / "hub" / "checkpoints", root / "heads", seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv(WEIGHTS_ENV, str(root / "heads"))
        yield paths


@pytest.fixture(scope="module")
def pair():
    # Noise sigma 3, 12, 30 on frames 0, 1, 2.
    return sample_video_pair(seed=11, height=32, width=48)


@pytest.mark.parametrize("metric", SMALL)
def test_identical_frames_score_perfectly(weights, pair, metric):
    clean, _ = pair
    values = frame_values(metric, clean, clean.copy())
    perfect = {"psnr": PSNR_IDENTICAL, "ssim": 1.0, "ms_ssim3": 1.0}.get(metric, 0.0)
    assert values.shape == (3,)
    assert torch.allclose(values, torch.full_like(values, perfect), atol=1e-6)


@pytest.mark.parametrize("metric", SMALL)
def test_scores_worsen_monotonically_with_distortion(weights, pair, metric):
    clean, noisy = pair
    values = frame_values(metric, noisy, clean).tolist()
    worse = values if not METRICS[metric].higher_is_better else [-v for v in values]
    assert worse[0] < worse[1] < worse[2], values


def test_standard_ms_ssim_needs_large_frames_and_says_what_to_use():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match=r"ms_ssim: frames of 64x48.*at least 176.*ms_ssim3"):
        frame_values("ms_ssim", small, small)
    big = rng.integers(0, 256, (1, 176, 184, 3), dtype=np.uint8)
    noisy = np.clip(big.astype(int) + 20, 0, 255).astype(np.uint8)
    assert frame_values("ms_ssim", big, big).item() == pytest.approx(1.0)
    assert frame_values("ms_ssim", noisy, big).item() < 1.0


def test_score_videos_names_every_statistic(weights, pair):
    clean, noisy = pair
    scores = score_videos(["psnr", "lpips_alex"], noisy, clean)
    assert set(scores) == {
        "psnr:mean",
        "psnr:worst",
        "psnr:p05",
        "lpips_alex:mean",
        "lpips_alex:worst",
        "lpips_alex:p95",
    }
    # The worst frame is the noisiest one (sigma 30): lowest PSNR, highest LPIPS.
    psnr = frame_values("psnr", noisy, clean)
    assert scores["psnr:worst"] == pytest.approx(float(psnr.min()))
    assert scores["lpips_alex:worst"] >= scores["lpips_alex:p95"] >= scores["lpips_alex:mean"]


def test_aggregate_statistics_and_direction():
    values = torch.arange(1, 21, dtype=torch.float64)  # 1..20
    high = aggregate(values, higher_is_better=True)
    assert high == {"mean": 10.5, "worst": 1.0, "p05": pytest.approx(float(np.percentile(values.numpy(), 5)))}
    low = aggregate(values, higher_is_better=False)
    assert low["worst"] == 20.0 and low["p95"] == pytest.approx(float(np.percentile(values.numpy(), 95)))
    with pytest.raises(InvalidInputError, match="non-finite"):
        aggregate(torch.tensor([1.0, float("nan")]), True)


def test_frames_must_be_uint8_of_equal_shape(pair):
    clean, noisy = pair
    with pytest.raises(InvalidInputError, match=r"frames a: got torch.float32.*allowed: uint8 RGB frames"):
        frame_values("psnr", clean.astype(np.float32), noisy)
    with pytest.raises(InvalidInputError, match="allowed: equal"):
        frame_values("psnr", clean[:2], noisy)
    with pytest.raises(InvalidInputError, match="metric: got 'lpips'; allowed: psnr"):
        frame_values("lpips", clean, noisy)


def test_lpips_refuses_inputs_outside_its_range(weights):
    x = torch.rand(1, 3, 32, 32) * 255
    with pytest.raises(InvalidInputError, match=r"allowed: \[-1, 1\]"):
        lpips_distance(x, x)


def test_score_keys_are_checked():
    assert parse_score_key("dists:p95") == ("dists", "p95")
    with pytest.raises(InvalidInputError, match="statistic of dists: got 'p05'; allowed: mean, worst, p95"):
        parse_score_key("dists:p05")
    with pytest.raises(InvalidInputError, match="metric: got 'vmaf'"):
        parse_score_key("vmaf:mean")


def test_latent_metrics():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(16, 2, 6, 8, generator=g, dtype=torch.float64).float()
    assert latent_relative_l2(ref, ref) == 0.0 and latent_cosine(ref, ref) == pytest.approx(1.0)
    assert latent_relative_l2(ref * 1.01, ref) == pytest.approx(0.01, rel=1e-5)
    assert latent_cosine(-ref, ref) == pytest.approx(-1.0)
    other = torch.randn(16, 2, 6, 8, generator=g, dtype=torch.float64).float()
    assert latent_relative_l2(other, ref) > 1.0 and abs(latent_cosine(other, ref)) < 0.2
    assert set(score_latents(other, ref)) == {"latent_rel_l2:value", "latent_cosine:value"}
    with pytest.raises(InvalidInputError, match="allowed: equal shapes"):
        latent_relative_l2(ref[:1], ref)
    with pytest.raises(InvalidInputError, match="all zeros"):
        latent_relative_l2(ref, torch.zeros_like(ref))


def test_missing_backbone_names_file_and_folder(tmp_path, monkeypatch, pair):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "heads"))
    write_random_weights(tmp_path / "elsewhere", tmp_path / "heads", seed=1)
    clean, noisy = pair
    folder = tmp_path / "empty-torch" / "hub" / "checkpoints"
    with pytest.raises(MetricWeightsMissingError) as info:
        frame_values("dists", noisy, clean)
    assert BACKBONE_FILES["vgg16"] in str(info.value) and f"{folder}/" in str(info.value)


def test_missing_head_names_file_and_folder(tmp_path, monkeypatch, pair):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "no-heads"))
    write_random_weights(tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "heads", seed=1)
    monkeypatch.setattr("ditproof.metrics.weights._package_file", lambda head: None)  # even if lpips is installed
    clean, noisy = pair
    with pytest.raises(MetricWeightsMissingError) as info:
        frame_values("lpips_alex", noisy, clean)
    message = str(info.value)
    assert HEAD_FILES["lpips_alex"] in message and str(tmp_path / "no-heads") in message
    assert "lpips/weights/v0.1/alex.pth" in message


def test_head_found_in_an_installed_package(tmp_path, monkeypatch, pair):
    # A package named lpips with the wheel's layout: its file is used without importing it.
    paths = write_random_weights(tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "heads", seed=1)
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    paths["lpips_alex"].rename(package / "weights" / "v0.1" / "alex.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "heads"))
    clean, noisy = pair
    assert frame_values("lpips_alex", noisy, clean).shape == (3,)


def test_wrong_shapes_are_named(tmp_path, monkeypatch, pair):
    paths = write_random_weights(tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "heads", seed=1)
    torch.save({"alpha": torch.ones(1, 10, 1, 1), "beta": torch.ones(1, 1475, 1, 1)}, paths["dists"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "heads"))
    clean, noisy = pair
    with pytest.raises(MetricWeightsInvalidError, match=r"alpha has shape \(1, 10, 1, 1\); allowed: \(1, 1475, 1, 1\)"):
        frame_values("dists", noisy, clean)
    paths["alexnet"].write_bytes(b"not a checkpoint")
    with pytest.raises(MetricWeightsInvalidError, match="cannot be read as a tensor file"):
        frame_values("lpips_alex", noisy, clean)
