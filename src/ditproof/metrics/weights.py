"""Offline weight files of the learned metrics (LPIPS, DISTS): where they live, how they load.

Nothing is ever downloaded. Two kinds of files are needed:

* **Backbones** (ImageNet classifiers, torchvision's own checkpoint files, unchanged): looked up
  where ``torchvision`` would put them, in torch hub's cache,
  ``torch.hub.get_dir()/checkpoints/`` = ``$TORCH_HOME/hub/checkpoints/`` (``TORCH_HOME``
  defaults to ``$XDG_CACHE_HOME/torch``, then ``~/.cache/torch``):

  - ``vgg16-397923af.pth``   (VGG16, for LPIPS-VGG and DISTS)
  - ``alexnet-owt-7be5be79.pth`` (AlexNet, for LPIPS-Alex)

* **Metric heads** (LPIPS's learned 1×1 "lin" weights, DISTS's alpha/beta): looked up first in
  ``$DITPROOF_METRIC_WEIGHTS`` (default ``$XDG_CACHE_HOME/ditproof/metric-weights``, then
  ``~/.cache/ditproof/metric-weights``) under the names below, then in the installed ``lpips``
  and ``DISTS_pytorch`` packages (their wheels ship these files; the packages are located
  without being imported, so they need no torchvision here):

  - ``lpips-v0.1-alex.pth``  ← ``lpips/weights/v0.1/alex.pth``
  - ``lpips-v0.1-vgg.pth``   ← ``lpips/weights/v0.1/vgg.pth``
  - ``dists-alpha-beta.pt``  ← ``DISTS_pytorch/weights.pt``

When a file is missing, :class:`MetricWeightsMissingError` names the file and the folder it goes
into. Files are read with ``torch.load(weights_only=True)`` (tensors only, no code) and every
expected key is checked for its shape; the sha256 of each file is reported so that a threshold
can be pinned to the exact weights it was calibrated with.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ditproof.errors import ModelNotFoundError
from ditproof.hashing import sha256_file

WEIGHTS_ENV = "DITPROOF_METRIC_WEIGHTS"

BACKBONE_FILES = {"vgg16": "vgg16-397923af.pth", "alexnet": "alexnet-owt-7be5be79.pth"}
"""torchvision's checkpoint file names (the suffix is the start of the file's sha256)."""

HEAD_FILES = {"lpips_alex": "lpips-v0.1-alex.pth", "lpips_vgg": "lpips-v0.1-vgg.pth", "dists": "dists-alpha-beta.pt"}
"""ditproof's names for the metric heads in ``$DITPROOF_METRIC_WEIGHTS``."""

_PACKAGE_FILES = {
    "lpips_alex": ("lpips", ("weights", "v0.1", "alex.pth")),
    "lpips_vgg": ("lpips", ("weights", "v0.1", "vgg.pth")),
    "dists": ("DISTS_pytorch", ("weights.pt",)),
}


class MetricWeightsMissingError(ModelNotFoundError):
    """A weight file a learned metric needs is not on this machine (nothing is downloaded)."""


class MetricWeightsInvalidError(ModelNotFoundError):
    """A weight file exists but does not hold the tensors (names, shapes) the metric needs."""


@dataclass(frozen=True)
class WeightFile:
    """A located weight file and its sha256."""

    role: str
    path: Path
    sha256: str


def backbone_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision keeps (and ditproof reads) backbones."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def heads_dir() -> Path:
    """The folder of LPIPS/DISTS head weights: ``$DITPROOF_METRIC_WEIGHTS`` or its default."""
    explicit = os.environ.get(WEIGHTS_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "ditproof" / "metric-weights"


def _package_file(head: str) -> Path | None:
    package, parts = _PACKAGE_FILES[head]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return path if path.is_file() else None


_HASHES: dict[tuple[str, int, int], str] = {}


def _hash(path: Path) -> str:
    # Backbone files are hundreds of MB: hash each (path, size, mtime) once per process.
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def locate_backbone(name: str) -> WeightFile:
    """Finds torchvision's checkpoint of backbone ``name`` (``vgg16`` or ``alexnet``).

    Raises:
        MetricWeightsMissingError: naming the file and the folder it goes into.
    """
    filename = BACKBONE_FILES[name]
    folder = backbone_dir()
    path = folder / filename
    if not path.is_file():
        raise MetricWeightsMissingError(
            f"metric weights: the {name} backbone file {filename} is missing; put torchvision's {filename} "
            f"into {folder}/ (that is $TORCH_HOME/hub/checkpoints; ditproof never downloads it)"
        )
    return WeightFile(role=name, path=path, sha256=_hash(path))


def locate_head(head: str) -> WeightFile:
    """Finds the head weights of ``head`` (``lpips_alex``, ``lpips_vgg`` or ``dists``).

    Raises:
        MetricWeightsMissingError: naming the file and the folder it goes into.
    """
    folder = heads_dir()
    path = folder / HEAD_FILES[head]
    if not path.is_file():
        found = _package_file(head)
        if found is None:
            package, parts = _PACKAGE_FILES[head]
            raise MetricWeightsMissingError(
                f"metric weights: the {head} head file {HEAD_FILES[head]} is missing; put it into {folder}/ "
                f"(set {WEIGHTS_ENV} to use another folder); it is the file {package}/{'/'.join(parts)} "
                f"of the {package} package, which is also found there when that package is installed"
            )
        path = found
    return WeightFile(role=head, path=path, sha256=_hash(path))


def load_tensors(file: WeightFile, expected: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, torch.Tensor]:
    """Loads the tensors ``expected`` (name → shape) from ``file``; other keys are ignored.

    Args:
        file: the located file.
        expected: the names (without ``prefix``) and shapes the caller needs.
        prefix: a prefix the names carry in the file (e.g. ``features.``).

    Raises:
        MetricWeightsInvalidError: if the file cannot be read as tensors, or a name is missing or
            has another shape.
    """
    try:
        state = torch.load(file.path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise MetricWeightsInvalidError(
            f"metric weights: {file.path} cannot be read as a tensor file ({exc}); "
            f"allowed: the original {file.role} weight file"
        ) from None
    if not isinstance(state, dict):
        raise MetricWeightsInvalidError(
            f"metric weights: {file.path} holds a {type(state).__name__}; allowed: a dict of tensors (state dict)"
        )
    tensors = {}
    for name, shape in expected.items():
        value = state.get(prefix + name)
        if not isinstance(value, torch.Tensor):
            raise MetricWeightsInvalidError(
                f"metric weights: {file.path} has no tensor {prefix + name!r}; allowed: the original {file.role} file"
            )
        if tuple(value.shape) != shape:
            raise MetricWeightsInvalidError(
                f"metric weights: {file.path}: {prefix + name} has shape {tuple(value.shape)}; allowed: {shape}"
            )
        tensors[name] = value.to(torch.float32)
    return tensors
