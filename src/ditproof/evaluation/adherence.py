"""Prompt adherence of shape videos: measure colour, motion direction and shape, compare with the prompt.

Measurement (:func:`measure_video`, a pure function of the frames):

1. Background: the per-channel median of all pixels (objects cover well under half a frame),
   named by the nearest background colour of the grammar.
2. Foreground: pixels farther than :data:`FOREGROUND_DISTANCE` (RGB) from the background.
3. Colour: each interior foreground pixel (its 3×3 neighbourhood is foreground, so that edges
   blended with the background do not vote) takes the nearest object colour; the most frequent
   colour names the object (the two most frequent for a two-object prompt).
4. Direction: the object's centroid in each frame, a least-squares line through them, the angle
   of its velocity binned into the eight directions of the grammar; a travel under
   :data:`MIN_TRAVEL` of the short side measures as ``"none"``.
5. Shape: in three frames, each grammar shape is drawn with the object's area at its centroid;
   the shape with the highest summed intersection-over-union wins.

Scoring (:func:`score`) compares measurements with the parsed prompt; :func:`summarize` turns
many scores into accuracies. Decisions (pass marks) live with the caller.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from ditproof.errors import InvalidInputError
from ditproof.training.grammar import BACKGROUND_COLORS, DIRECTIONS, OBJECT_COLORS, SHAPES, SceneSpec, parse_caption
from ditproof.training.synthetic import shape_coverage

FOREGROUND_DISTANCE = 60.0
MIN_TRAVEL = 0.10
MIN_OBJECT_PIXELS = 4
NO_DIRECTION = "none"
_BINS = ("right", "up and right", "up", "up and left", "left", "down and left", "down", "down and right")
assert set(_BINS) == set(DIRECTIONS)


@dataclass(frozen=True)
class ObjectMeasurement:
    """What one object in a video looks like and does."""

    color: str
    direction: str
    shape: str | None
    travel_px: float
    pixels_per_frame: float


@dataclass(frozen=True)
class VideoMeasurement:
    """Background and objects measured in a video."""

    background: str
    background_rgb: tuple[float, float, float]
    foreground_fraction: float
    objects: tuple[ObjectMeasurement, ...]


@dataclass(frozen=True)
class ObjectScore:
    """Whether one object of the prompt was found with its colour, direction and shape."""

    expected_color: str
    expected_direction: str
    expected_shape: str
    measured: ObjectMeasurement | None
    color: bool
    direction: bool
    shape: bool


@dataclass(frozen=True)
class AdherenceScore:
    """A prompt against a video's measurement."""

    prompt: str
    background: bool
    objects: tuple[ObjectScore, ...]


def _nearest(pixels: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    colors = np.asarray(list(palette.values()), dtype=np.float32)
    dist = ((pixels[:, None, :] - colors[None, :, :]) ** 2).sum(axis=-1)
    return dist.argmin(axis=1)


def _erode(mask: np.ndarray) -> np.ndarray:
    """3×3 erosion of boolean masks ``(F, H, W)`` (outside the frame counts as background)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    out = np.ones_like(mask)
    h, w = mask.shape[1:]
    for dy in range(3):
        for dx in range(3):
            out &= padded[:, dy : dy + h, dx : dx + w]
    return out


def _direction(mask: np.ndarray) -> tuple[str, float]:
    """Direction and travel (pixels) of the centroid of ``mask`` ``(F, H, W)`` over the frames."""
    frames, h, w = mask.shape
    ys, xs = np.mgrid[0:h, 0:w]
    t, cx, cy = [], [], []
    for f in range(frames):
        count = mask[f].sum()
        if count >= MIN_OBJECT_PIXELS:
            t.append(f)
            cx.append((xs * mask[f]).sum() / count)
            cy.append((ys * mask[f]).sum() / count)
    if len(t) < 3:
        return NO_DIRECTION, 0.0
    tt = np.asarray(t, dtype=np.float64)
    vx = np.polyfit(tt, np.asarray(cx), 1)[0]
    vy = np.polyfit(tt, np.asarray(cy), 1)[0]
    travel = math.hypot(vx, vy) * (frames - 1)
    if travel < MIN_TRAVEL * min(h, w):
        return NO_DIRECTION, float(travel)
    angle = math.degrees(math.atan2(-vy, vx))
    return _BINS[round(angle / 45.0) % 8], float(travel)


@cache
def _unit_areas() -> dict[str, float]:
    """Area of each shape at radius 1 (measured on a fine grid)."""
    radius, side = 50.0, 160
    grid = torch.arange(side, dtype=torch.float32) + 0.5 - side / 2
    dy, dx = grid.view(-1, 1), grid.view(1, -1)
    return {s: float(shape_coverage(s, dx, dy, radius).sum()) / radius**2 for s in SHAPES}


def _shape(mask: np.ndarray) -> str | None:
    """The grammar shape that best overlaps the object in a few frames of ``mask`` ``(F, H, W)``."""
    frames, h, w = mask.shape
    grid_y = torch.arange(h, dtype=torch.float32).view(-1, 1) + 0.5
    grid_x = torch.arange(w, dtype=torch.float32).view(1, -1) + 0.5
    totals = dict.fromkeys(SHAPES, 0.0)
    used = False
    for f in sorted({frames // 4, frames // 2, (3 * frames) // 4}):
        area = float(mask[f].sum())
        if area < MIN_OBJECT_PIXELS:
            continue
        used = True
        ys, xs = np.nonzero(mask[f])
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        observed = torch.from_numpy(mask[f])
        for s, unit in _unit_areas().items():
            template = shape_coverage(s, grid_x - cx, grid_y - cy, math.sqrt(area / unit)) > 0.5
            union = (template | observed).sum().item()
            totals[s] += (template & observed).sum().item() / max(union, 1)
    return max(totals, key=lambda s: totals[s]) if used else None


def measure_video(frames: np.ndarray, num_objects: int = 1) -> VideoMeasurement:
    """Measures background and ``num_objects`` objects in uint8 frames ``(F, H, W, 3)`` (module docstring)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
        raise InvalidInputError(f"frames: got {got}; allowed: a uint8 numpy array (frames, height, width, 3)")
    if num_objects not in (1, 2):
        raise InvalidInputError(f"num_objects: got {num_objects}; allowed: 1 or 2")
    video = frames.astype(np.float32)
    background = np.median(video.reshape(-1, 3), axis=0)
    bg_name = list(BACKGROUND_COLORS)[int(_nearest(background[None], BACKGROUND_COLORS)[0])]
    foreground = np.sqrt(((video - background) ** 2).sum(axis=-1)) > FOREGROUND_DISTANCE
    interior = _erode(foreground)
    voters = interior if interior.sum() >= 20 else foreground
    names = list(OBJECT_COLORS)
    labels = np.full(foreground.shape, -1, dtype=np.int64)
    if foreground.any():
        labels[foreground] = _nearest(video[foreground], OBJECT_COLORS)
    votes = Counter(labels[voters].tolist())
    objects = []
    for rank, (label, count) in enumerate(votes.most_common(num_objects)):
        if rank > 0 and count < 0.1 * voters.sum():
            break
        mask = foreground if num_objects == 1 else labels == label
        direction, travel = _direction(mask)
        objects.append(
            ObjectMeasurement(
                color=names[label],
                direction=direction,
                shape=_shape(mask),
                travel_px=round(travel, 2),
                pixels_per_frame=round(float(mask.sum()) / len(frames), 1),
            )
        )
    return VideoMeasurement(
        background=bg_name,
        background_rgb=(float(background[0]), float(background[1]), float(background[2])),
        foreground_fraction=round(float(foreground.mean()), 4),
        objects=tuple(objects),
    )


def score(prompt: str | SceneSpec, measurement: VideoMeasurement) -> AdherenceScore:
    """Compares a measurement with the prompt (objects are matched by colour when there are two)."""
    scene = parse_caption(prompt) if isinstance(prompt, str) else prompt
    results = []
    for expected in scene.objects:
        if len(scene.objects) == 1:
            found = measurement.objects[0] if measurement.objects else None
        else:
            found = next((m for m in measurement.objects if m.color == expected.color), None)
        results.append(
            ObjectScore(
                expected_color=expected.color,
                expected_direction=expected.direction,
                expected_shape=expected.shape,
                measured=found,
                color=found is not None and found.color == expected.color,
                direction=found is not None and found.direction == expected.direction,
                shape=found is not None and found.shape == expected.shape,
            )
        )
    return AdherenceScore(scene.caption(), measurement.background == scene.background, tuple(results))


def evaluate(prompt: str, frames: np.ndarray) -> AdherenceScore:
    """Parses ``prompt``, measures ``frames`` for as many objects as it names, and scores them."""
    scene = parse_caption(prompt)
    return score(scene, measure_video(frames, len(scene.objects)))


def summarize(scores: list[AdherenceScore]) -> dict[str, float]:
    """Accuracies over every object of every score (and the background per video), in [0, 1]."""
    objects = [o for s in scores for o in s.objects]
    if not objects:
        raise InvalidInputError("scores: got none; allowed: at least one score")
    return {
        "color_accuracy": sum(o.color for o in objects) / len(objects),
        "direction_accuracy": sum(o.direction for o in objects) / len(objects),
        "shape_accuracy": sum(o.shape for o in objects) / len(objects),
        "background_accuracy": sum(s.background for s in scores) / len(scores),
        "objects": float(len(objects)),
        "videos": float(len(scores)),
    }
