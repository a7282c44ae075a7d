"""Computes reference LPIPS and DISTS values with the reference packages, for tests/test_metrics_reference.py.

Run it in a separate environment that has the reference packages (they need torchvision, which
this project's torch 2.13 CPU build cannot use), from the repository root:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lpips==0.1.4 DISTS_pytorch==0.1
    /tmp/refvenv/bin/pip install --no-deps torchmetrics==1.9.0 lightning-utilities packaging
    PYTHONPATH=src /tmp/refvenv/bin/python tests/data/make_metric_goldens.py

It writes random weight files with ``ditproof.metrics.testing.write_random_weights`` (the same
files the tests write), loads them through the reference packages (torchvision finds the
backbones in ``$TORCH_HOME/hub/checkpoints``; LPIPS's heads through ``model_path``; DISTS's
alpha/beta set directly), scores a fixed pair of videos and writes tests/data/metric_goldens.json.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path

SEED_WEIGHTS = 20261126
SEED_VIDEO = 7
OUT = Path(__file__).with_name("metric_goldens.json")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ditproof-goldens-"))
    os.environ["TORCH_HOME"] = str(tmp / "torch")
    import lpips
    import torch
    from DISTS_pytorch import DISTS

    from ditproof.metrics.testing import sample_video_pair, tensors_digest, write_random_weights

    paths = write_random_weights(
        tmp / "torch" / "hub" / "checkpoints", tmp / "heads", SEED_WEIGHTS, full_classifier=True
    )
    clean, noisy = sample_video_pair(SEED_VIDEO)
    a = torch.from_numpy(noisy).permute(0, 3, 1, 2).float()
    b = torch.from_numpy(clean).permute(0, 3, 1, 2).float()
    values: dict[str, list[float]] = {}
    with torch.no_grad():
        for variant in ("alex", "vgg"):
            net = lpips.LPIPS(net=variant, model_path=str(paths[f"lpips_{variant}"]), verbose=False).eval()
            values[f"lpips_{variant}"] = net(a / 127.5 - 1, b / 127.5 - 1).reshape(-1).tolist()
        dists = DISTS(load_weights=False).eval()
        head = torch.load(paths["dists"], weights_only=True)
        dists.alpha.data = head["alpha"]
        dists.beta.data = head["beta"]
        values["dists"] = dists(a / 255, b / 255).reshape(-1).tolist()
    result = {
        "what": "reference LPIPS v0.1 (alex, vgg) and DISTS per frame, for random weight files (not real scores)",
        "device": "cpu",
        "dtype": "float32",
        "reference": {
            name: importlib.metadata.version(name) for name in ("torch", "torchvision", "lpips", "DISTS_pytorch")
        },
        "weights_seed": SEED_WEIGHTS,
        "weights_digest": {role: tensors_digest(path) for role, path in sorted(paths.items())},
        "video_seed": SEED_VIDEO,
        "video_sha256": {
            "clean": hashlib.sha256(clean.tobytes()).hexdigest(),
            "noisy": hashlib.sha256(noisy.tobytes()).hexdigest(),
        },
        "tolerance": {"abs": 1e-5, "rel": 1e-4},
        "values": values,
    }
    OUT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
    main()
