"""The caption grammar of the synthetic shape videos, its parser and the held-out split.

A caption describes one or two coloured shapes, each moving in one of eight directions, on a
plain background::

    a red circle moves left on a blue background
    a green star moves up and right and a white ring moves down on a black background

The model's tokenizer holds exactly :data:`WORDS` (see :func:`grammar_words`), so every
caption the grammar produces is tokenized without unknown words.

Held-out split: a single-object combination (shape, colour, direction, background) is held out
when the first byte of ``sha256("ditproof-shapes-heldout-v1|shape|colour|direction|background")``
is below 26 (about 10%). Training never shows a held-out combination, neither alone nor as one
of two objects; the evaluation prompts come from the held-out combinations only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass
from itertools import product

from ditproof.errors import InvalidInputError

# sRGB values, far apart so that a colour survives the VAE and the encoder; names are the words
# of the captions.
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "cyan": (40, 210, 230),
    "blue": (40, 70, 220),
    "purple": (140, 50, 200),
    "pink": (250, 130, 200),
    "white": (240, 240, 240),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
    "brown": (120, 75, 35),
    "blue": (40, 70, 220),
    "green": (40, 180, 60),
    "red": (220, 40, 40),
    "yellow": (240, 220, 40),
}
PALETTE: dict[str, tuple[int, int, int]] = {**OBJECT_COLORS, **BACKGROUND_COLORS}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "cross", "star")
# Unit motion per direction in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up and left": (-(0.5**0.5), -(0.5**0.5)),
    "up and right": (0.5**0.5, -(0.5**0.5)),
    "down and left": (-(0.5**0.5), 0.5**0.5),
    "down and right": (0.5**0.5, 0.5**0.5),
}
MIN_CONTRAST = 100.0
"""Least RGB distance between an object's colour and its background."""

HELD_OUT_TAG = "ditproof-shapes-heldout-v1"
_HELD_OUT_BELOW = 26  # of 256: about 10% of the combinations


@dataclass(frozen=True)
class ObjectSpec:
    """One moving object of a caption."""

    shape: str
    color: str
    direction: str


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says: one or two objects on a background."""

    objects: tuple[ObjectSpec, ...]
    background: str

    def caption(self) -> str:
        """The caption text (see the module docstring for the form)."""
        parts = [f"a {o.color} {o.shape} moves {o.direction}" for o in self.objects]
        return " and ".join(parts) + f" on a {self.background} background"


def contrast(color: str, background: str) -> float:
    """RGB distance between two palette colours."""
    a, b = PALETTE[color], PALETTE[background]
    return float(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5)


def allowed_pair(color: str, background: str) -> bool:
    """Whether an object of ``color`` may appear on ``background`` (distinct and contrasted)."""
    return color != background and contrast(color, background) >= MIN_CONTRAST


def is_held_out(obj: ObjectSpec, background: str) -> bool:
    """Whether the single-object combination belongs to the held-out split (module docstring)."""
    key = f"{HELD_OUT_TAG}|{obj.shape}|{obj.color}|{obj.direction}|{background}"
    return hashlib.sha256(key.encode()).digest()[0] < _HELD_OUT_BELOW


def combinations(split: str) -> list[tuple[ObjectSpec, str]]:
    """All allowed single-object combinations of ``split`` ("train" or "heldout"), in a fixed order."""
    if split not in ("train", "heldout"):
        raise InvalidInputError(f"split: got {split!r}; allowed: 'train' or 'heldout'")
    found = []
    for shape, color, direction, background in product(SHAPES, OBJECT_COLORS, DIRECTIONS, BACKGROUND_COLORS):
        if not allowed_pair(color, background):
            continue
        obj = ObjectSpec(shape, color, direction)
        if is_held_out(obj, background) == (split == "heldout"):
            found.append((obj, background))
    return found


def scene_allowed(scene: SceneSpec, split: str) -> bool:
    """Whether ``scene`` belongs to ``split``: training scenes contain no held-out combination."""
    pairs_ok = all(allowed_pair(o.color, scene.background) for o in scene.objects)
    colors = [o.color for o in scene.objects]
    if not pairs_ok or len(set(colors)) != len(colors):
        return False
    held = [is_held_out(o, scene.background) for o in scene.objects]
    return not any(held) if split == "train" else len(scene.objects) == 1 and held[0]


def grammar_words() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer's vocabulary)."""
    words: list[str] = ["a", "moves", "and", "on", "background"]
    for group in (SHAPES, OBJECT_COLORS, BACKGROUND_COLORS, DIRECTIONS):
        for phrase in group:
            for word in phrase.split():
                if word not in words:
                    words.append(word)
    return words


_DIRECTION_RE = "|".join(sorted((re.escape(d) for d in DIRECTIONS), key=len, reverse=True))
_OBJECT_RE = rf"an? (?P<color>\w+) (?P<shape>\w+) moves (?P<direction>{_DIRECTION_RE})"


def parse_caption(text: str) -> SceneSpec:
    """Parses a caption of the grammar back into a :class:`SceneSpec`.

    Raises:
        InvalidInputError: naming the text and the expected form, or the unknown word.
    """
    clean = " ".join(text.lower().split())
    match = re.fullmatch(r"(?P<objs>.+) on an? (?P<bg>\w+) background", clean)
    if match is None:
        raise InvalidInputError(
            f"prompt: got {text!r}; allowed: captions like 'a red circle moves left on a blue background' "
            "(one or two objects joined by 'and')"
        )
    objects = []
    rest = match.group("objs")
    while rest:
        obj = re.match(_OBJECT_RE + r"(?: and (?=an? )|$)", rest)
        if obj is None:
            raise InvalidInputError(
                f"prompt: cannot parse {rest!r} in {text!r}; allowed: 'a <colour> <shape> moves <direction>'"
            )
        objects.append(ObjectSpec(obj.group("shape"), obj.group("color"), obj.group("direction")))
        rest = rest[obj.end() :]
    for o in objects:
        _check_word("colour", o.color, OBJECT_COLORS)
        _check_word("shape", o.shape, SHAPES)
    _check_word("background", match.group("bg"), BACKGROUND_COLORS)
    if len(objects) > 2:
        raise InvalidInputError(f"prompt: got {len(objects)} objects in {text!r}; allowed: one or two")
    return SceneSpec(tuple(objects), match.group("bg"))


def _check_word(field: str, word: str, allowed: Collection[str]) -> None:
    if word not in allowed:
        raise InvalidInputError(f"prompt {field}: got {word!r}; allowed: {', '.join(allowed)}")
