"""Random stand-ins for the metric weight files, for tests and smoke runs (never for decisions).

:func:`write_random_weights` writes files of the exact names, keys and shapes that
``ditproof.metrics.weights`` looks for (torchvision's backbone checkpoints and the LPIPS/DISTS
heads), filled with seeded random values, so that the real loading path runs where the real
weights cannot be downloaded. Scores computed with them are not LPIPS or DISTS values of any
meaning; the sha256 of the files (reported with every learned score) tells them apart from the
real ones.

The draws use numpy's PCG64 generator (``numpy.random.default_rng(seed)``), whose
``standard_normal`` and ``random`` streams numpy keeps stable across versions, so the same seed
gives the same files under this project's torch and under the reference packages' torch (the
golden values in ``tests/data/metric_goldens.json`` rely on it and record the files' sha256).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ditproof.metrics.backbones import feature_shapes
from ditproof.metrics.dists import head_shapes
from ditproof.metrics.lpips import lin_shapes
from ditproof.metrics.weights import BACKBONE_FILES, HEAD_FILES

_CLASSIFIERS = {
    # torchvision's classifier layers (index: (out, in)); ditproof never uses them.
    "alexnet": {1: (4096, 9216), 4: (4096, 4096), 6: (1000, 4096)},
    "vgg16": {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)},
}


def _backbone(rng: np.random.Generator, name: str, full_classifier: bool) -> dict[str, torch.Tensor]:
    state = {}
    for key, shape in feature_shapes(name).items():
        if key.endswith("weight"):
            # He initialization keeps activations of the right order through 13 layers.
            fan_in = int(np.prod(shape[1:]))
            values = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        else:
            values = rng.standard_normal(shape) * 0.01
        state[f"features.{key}"] = torch.from_numpy(values.astype(np.float32))
    if full_classifier:
        # torchvision itself loads the whole network strictly: zeros of the right shapes.
        for index, shape in _CLASSIFIERS[name].items():
            state[f"classifier.{index}.weight"] = torch.zeros(shape)
            state[f"classifier.{index}.bias"] = torch.zeros(shape[0])
    else:
        # A small stand-in: ditproof must ignore keys outside ``features``.
        state["classifier.9.weight"] = torch.zeros(4, 4)
    return state


def write_random_weights(
    backbones_dir: Path, heads_dir: Path, seed: int = 0, full_classifier: bool = False
) -> dict[str, Path]:
    """Writes random VGG16/AlexNet checkpoints and LPIPS/DISTS heads; returns role → path.

    Args:
        backbones_dir: the ``$TORCH_HOME/hub/checkpoints`` folder to write the backbones into.
        heads_dir: the ``$DITPROOF_METRIC_WEIGHTS`` folder to write the heads into.
        seed: the seed of the draws (one generator, files drawn in a fixed order).
        full_classifier: add torchvision's classifier layers (zeros, 230 MB for AlexNet and
            500 MB for VGG16) so that torchvision itself can load the files; ditproof does not
            need them.
    """
    rng = np.random.default_rng(seed)
    backbones_dir.mkdir(parents=True, exist_ok=True)
    heads_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("alexnet", "vgg16"):
        paths[name] = backbones_dir / BACKBONE_FILES[name]
        torch.save(_backbone(rng, name, full_classifier), paths[name])
    for variant in ("alex", "vgg"):
        # LPIPS's learned weights are non-negative.
        lins = {k: torch.from_numpy(rng.random(s).astype(np.float32) * 0.2) for k, s in lin_shapes(variant).items()}
        paths[f"lpips_{variant}"] = heads_dir / HEAD_FILES[f"lpips_{variant}"]
        torch.save(lins, paths[f"lpips_{variant}"])
    dists = {k: torch.from_numpy((0.05 + 0.1 * rng.random(s)).astype(np.float32)) for k, s in head_shapes().items()}
    paths["dists"] = heads_dir / HEAD_FILES["dists"]
    torch.save(dists, paths["dists"])
    return paths


def tensors_digest(path: Path) -> str:
    """sha256 over a weight file's tensors except ``classifier.*`` (sorted names, raw bytes).

    Independent of torch.save's file format and of the classifier stand-ins.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key in sorted(k for k in state if not k.startswith("classifier.")):
        digest.update(key.encode() + b"\0" + state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def sample_video_pair(
    seed: int, height: int = 48, width: int = 64, sigmas: tuple[float, ...] = (3.0, 12.0, 30.0)
) -> tuple[np.ndarray, np.ndarray]:
    """A blocky random uint8 video ``(F, H, W, 3)`` and a copy with Gaussian noise of ``sigmas[f]`` on frame f.

    Blocks of 4×4 pixels give the backbones some structure to see; the noise grows frame by
    frame, so per-frame scores must grow (or fall) monotonically.
    """
    rng = np.random.default_rng(seed)
    count = len(sigmas)
    low = rng.integers(0, 256, (count, height // 4, width // 4, 3))
    clean = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2).astype(np.float64)
    clean = np.clip(clean + rng.normal(0.0, 2.0, clean.shape), 0, 255)
    noisy = np.stack([clean[f] + rng.normal(0.0, sigma, clean[f].shape) for f, sigma in enumerate(sigmas)])
    return np.rint(clean).astype(np.uint8), np.rint(np.clip(noisy, 0, 255)).astype(np.uint8)
