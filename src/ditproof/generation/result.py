"""What a generation returns, whichever loop ran it (ditproof's own or another engine's).

Kept apart from :mod:`ditproof.generation.generate` so that other engines
(:mod:`ditproof.generation.engines`) return the same type without importing the loop that calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ditproof.generation.trajectory import TrajectoryCapture

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total steps)."""

FrameSink = Callable[[np.ndarray], None]
"""Takes the decoded frames, uint8 ``(F, H, W, 3)``, a few at a time and in order, as the VAE makes
them (:class:`ditproof.video.BackgroundEncode` encodes them meanwhile)."""


@dataclass
class GenerationResult:
    """What one generation produced, before encoding (``frames`` is None for a partial run)."""

    frames: np.ndarray | None
    noise_sha256: str
    noise_shape: tuple[int, ...]
    capture: TrajectoryCapture
    timings: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
