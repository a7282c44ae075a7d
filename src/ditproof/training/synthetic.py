"""Seeded synthetic shape videos: clip parameters drawn with numpy, frames rendered with torch.

Every clip ``i`` of a dataset with seed ``s`` draws its parameters from its own generator
``numpy.random.default_rng([s, i])`` (a SeedSequence of the two numbers), so a clip does not
depend on how many clips were drawn before it nor on any global RNG state. Rendering is a pure
function of the parameters and runs on any torch device (the GPU during training, the CPU in
tests); the same parameters give the same frames up to float rounding.

Motion: an object of radius ``r`` (9–15% of the short side) moves in a straight line at constant
speed, covering 30–55% of the short side over the clip, and stays inside the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ditproof.errors import InvalidInputError
from ditproof.training.grammar import (
    BACKGROUND_COLORS,
    DIRECTIONS,
    OBJECT_COLORS,
    PALETTE,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    allowed_pair,
    combinations,
    scene_allowed,
)

SIZE_RANGE = (0.09, 0.15)
TRAVEL_RANGE = (0.30, 0.55)
TWO_OBJECT_RATE = 0.25
_MARGIN = 1.0


@dataclass(frozen=True)
class ObjectMotion:
    """Where an object is: centre at frame 0 and velocity, in pixels (x right, y down)."""

    x0: float
    y0: float
    vx: float
    vy: float
    radius: float


@dataclass(frozen=True)
class Clip:
    """A scene and the motion of each of its objects."""

    scene: SceneSpec
    motions: tuple[ObjectMotion, ...]
    width: int
    height: int
    num_frames: int


def _sample_object(rng: np.random.Generator, background: str, exclude: set[str]) -> ObjectSpec:
    colors = [c for c in OBJECT_COLORS if allowed_pair(c, background) and c not in exclude]
    return ObjectSpec(
        shape=SHAPES[rng.integers(len(SHAPES))],
        color=colors[rng.integers(len(colors))],
        direction=list(DIRECTIONS)[rng.integers(len(DIRECTIONS))],
    )


def sample_scene(rng: np.random.Generator, split: str, two_object_rate: float = TWO_OBJECT_RATE) -> SceneSpec:
    """Draws a scene of ``split``: "train" (one or two objects) or "heldout" (one object)."""
    if split == "heldout":
        pool = combinations("heldout")
        obj, background = pool[rng.integers(len(pool))]
        return SceneSpec((obj,), background)
    if split != "train":
        raise InvalidInputError(f"split: got {split!r}; allowed: 'train' or 'heldout'")
    # Rejection keeps the training distribution free of held-out combinations; about 10% of
    # draws are rejected per object, so this ends quickly.
    while True:
        background = list(BACKGROUND_COLORS)[rng.integers(len(BACKGROUND_COLORS))]
        count = 2 if rng.random() < two_object_rate else 1
        objects: list[ObjectSpec] = []
        for _ in range(count):
            objects.append(_sample_object(rng, background, {o.color for o in objects}))
        scene = SceneSpec(tuple(objects), background)
        if scene_allowed(scene, "train"):
            return scene


def sample_motion(rng: np.random.Generator, direction: str, width: int, height: int, num_frames: int) -> ObjectMotion:
    """Draws size, start and speed so that the object moves along ``direction`` and stays in frame."""
    side = min(width, height)
    radius = side * rng.uniform(*SIZE_RANGE)
    travel = side * rng.uniform(*TRAVEL_RANGE)
    dx, dy = DIRECTIONS[direction]
    start = []
    for d, extent in ((dx, width), (dy, height)):
        low, high = radius + _MARGIN, extent - radius - _MARGIN
        span = travel * abs(d)
        if d > 0:
            start.append(rng.uniform(low, max(low, high - span)))
        elif d < 0:
            start.append(rng.uniform(min(high, low + span), high))
        else:
            start.append(rng.uniform(low, high))
    steps = max(num_frames - 1, 1)
    return ObjectMotion(start[0], start[1], dx * travel / steps, dy * travel / steps, radius)


def sample_clip(
    seed: int,
    index: int,
    split: str,
    width: int,
    height: int,
    num_frames: int,
    scene: SceneSpec | None = None,
) -> Clip:
    """The parameters of clip ``index`` of the dataset ``seed`` (see the module docstring).

    Args:
        seed: the dataset seed.
        index: the clip's index in the dataset.
        split: "train" or "heldout" (ignored when ``scene`` is given).
        width, height, num_frames: the video size.
        scene: a fixed scene (for prompts given as text); the motion is still drawn from the seed.
    """
    rng = np.random.default_rng([seed, index])
    chosen = scene if scene is not None else sample_scene(rng, split)
    motions = tuple(sample_motion(rng, o.direction, width, height, num_frames) for o in chosen.objects)
    return Clip(chosen, motions, width, height, num_frames)


def _shape_sdf(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (in radii, approximate away from the edge) of a shape of radius 1 at the origin."""
    if shape == "circle":
        return torch.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) - 0.85
    if shape == "diamond":
        return (u.abs() + v.abs() - 1.15) / math.sqrt(2.0)
    if shape == "ring":
        return (torch.sqrt(u * u + v * v) - 0.78).abs() - 0.24
    if shape == "cross":
        arm_a = torch.maximum(u.abs() - 1.0, v.abs() - 0.33)
        arm_b = torch.maximum(u.abs() - 0.33, v.abs() - 1.0)
        return torch.minimum(arm_a, arm_b)
    if shape == "triangle":
        # Upward equilateral triangle of circumradius 1.2 centred on its centroid; the three edge
        # normals point down, up-left and up-right (y grows downwards).
        edges = [(0.0, 1.0), (-math.sqrt(3) / 2, -0.5), (math.sqrt(3) / 2, -0.5)]
        dist = torch.stack([nx * u + ny * v for nx, ny in edges]).amax(dim=0)
        return dist - 0.6
    if shape == "star":
        # Five points, outer radius 1.2, inner 0.5; the radius profile is linear in angle.
        angle = torch.atan2(v, u) + math.pi / 2
        sector = 2 * math.pi / 5
        off = torch.remainder(angle + sector / 2, sector) - sector / 2  # 0 at a point
        frac = off.abs() / (sector / 2)
        profile = 1.2 - (1.2 - 0.5) * frac
        return (torch.sqrt(u * u + v * v) - profile) * 0.6
    raise InvalidInputError(f"shape: got {shape!r}; allowed: {', '.join(SHAPES)}")


def shape_coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """Antialiased coverage in [0, 1] of ``shape`` of ``radius`` pixels at offsets ``dx, dy`` (pixels)."""
    sdf = _shape_sdf(shape, dx / radius, dy / radius) * radius
    return (0.5 - sdf).clamp(0.0, 1.0)


def render_clips(clips: list[Clip], device: torch.device | str = "cpu") -> torch.Tensor:
    """Renders clips of one size as float frames in [-1, 1], shape ``(B, 3, F, H, W)``."""
    return render_clips_with_coverage(clips, device)[0]


def render_clips_with_coverage(
    clips: list[Clip], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames as :func:`render_clips`, and the objects' coverage in [0, 1], shape ``(B, 1, F, H, W)``."""
    if not clips:
        raise InvalidInputError("clips: got an empty list; allowed: at least one clip")
    width, height, frames = clips[0].width, clips[0].height, clips[0].num_frames
    if any((c.width, c.height, c.num_frames) != (width, height, frames) for c in clips):
        raise InvalidInputError("clips: got clips of several sizes; allowed: one width, height and frame count")
    device = torch.device(device)
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width) + 0.5
    t = torch.arange(frames, device=device, dtype=torch.float32).view(frames, 1, 1)
    out = torch.empty(len(clips), 3, frames, height, width, device=device)
    coverage = torch.zeros(len(clips), 1, frames, height, width, device=device)
    for b, clip in enumerate(clips):
        image = _color(PALETTE[clip.scene.background], device).view(3, 1, 1, 1).expand(3, frames, height, width)
        for obj, motion in zip(clip.scene.objects, clip.motions, strict=True):
            dx = xs - (motion.x0 + motion.vx * t)
            dy = ys - (motion.y0 + motion.vy * t)
            alpha = shape_coverage(obj.shape, dx, dy, motion.radius).unsqueeze(0)
            image = image * (1 - alpha) + _color(PALETTE[obj.color], device).view(3, 1, 1, 1) * alpha
            coverage[b] = torch.maximum(coverage[b], alpha)
        out[b] = image
    return out * 2.0 - 1.0, coverage


def _color(rgb: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32, device=device) / 255.0


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """One rendered clip ``(3, F, H, W)`` in [-1, 1] → uint8 frames ``(F, H, W, 3)``."""
    scaled = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.permute(1, 2, 3, 0).to(torch.uint8).numpy()
