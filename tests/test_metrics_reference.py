"""Agreement with reference implementations.

* LPIPS (alex, vgg) and DISTS: golden values computed by the reference packages (``lpips`` 0.1.4,
  ``DISTS_pytorch`` 0.1 on torch 2.14.1 + torchvision 0.29.1, CPU, float32) with the same random
  weight files and videos (``tests/data/make_metric_goldens.py``); tolerance in the JSON.
* PSNR: torchmetrics' ``peak_signal_noise_ratio`` per frame (rel. 1e-6: torchmetrics converts to
  decibels with a float32 log(10)).
* SSIM and MS-SSIM are torchmetrics' own functions (not re-implemented, so not re-compared).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from ditproof.metrics import frame_values
from ditproof.metrics.testing import sample_video_pair, tensors_digest, write_random_weights
from ditproof.metrics.weights import WEIGHTS_ENV

GOLDENS = json.loads((Path(__file__).parent / "data" / "metric_goldens.json").read_text())


@pytest.fixture(scope="module")
def golden_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden-weights")
    paths = write_random_weights(root / "torch" / "hub" / "checkpoints", root / "heads", GOLDENS["weights_seed"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv(WEIGHTS_ENV, str(root / "heads"))
        yield paths


def test_inputs_are_the_ones_the_goldens_were_computed_on(golden_weights):
    assert {role: tensors_digest(path) for role, path in golden_weights.items()} == GOLDENS["weights_digest"]
    clean, noisy = sample_video_pair(GOLDENS["video_seed"])
    assert hashlib.sha256(clean.tobytes()).hexdigest() == GOLDENS["video_sha256"]["clean"]
    assert hashlib.sha256(noisy.tobytes()).hexdigest() == GOLDENS["video_sha256"]["noisy"]


@pytest.mark.parametrize("metric", ["lpips_alex", "lpips_vgg", "dists"])
def test_learned_metrics_agree_with_reference_packages(golden_weights, metric):
    clean, noisy = sample_video_pair(GOLDENS["video_seed"])
    ours = frame_values(metric, noisy, clean).tolist()
    tol = GOLDENS["tolerance"]
    assert ours == pytest.approx(GOLDENS["values"][metric], abs=tol["abs"], rel=tol["rel"])


def test_psnr_agrees_with_torchmetrics():
    clean, noisy = sample_video_pair(5)
    ours = frame_values("psnr", noisy, clean)
    x = torch.from_numpy(noisy).permute(0, 3, 1, 2).double() / 255
    y = torch.from_numpy(clean).permute(0, 3, 1, 2).double() / 255
    reference = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert torch.allclose(ours, reference, rtol=1e-6, atol=0)
