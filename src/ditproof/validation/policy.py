"""Thresholds policy: which score a valid video must reach, per model, runtime class and metric.

Measurements (``ditproof.metrics``) and decisions are kept apart: a thresholds file, versioned
and with its provenance, says for each (model, runtime class, metric, statistic) the threshold
and its direction. The validator refuses to decide on a metric it has no threshold for, unless
the caller gives one explicitly (``--threshold METRIC[:STATISTIC]=VALUE``).

File format (JSON, schema ``ditproof.thresholds/3``; ``/2`` files, without ``validator_class``,
and ``/1`` files, without ``position`` either, are read as before)::

    {"schema_version": "ditproof.thresholds/3", "version": 3, "provisional": false,
     "description": "...",
     "entries": [{"model": "wan2.2-t2v-a14b",            # a preset name or a 64-hex revision
                  "runtime_class": "cuda-sm90/*",        # the executor's class: exact, or an fnmatch pattern
                  "validator_class": "cuda-sm90/*",      # the validator's class it was calibrated with
                  "metric": "lpips_alex", "statistic": "worst",
                  "direction": "lower-is-better", "value": 0.05,
                  "metric_weights": {"alexnet": "<sha256>", "lpips_alex": "<sha256>"},
                  "provenance": {"calibration": "stage1-2027-01", "fpr_target": 0.01,
                                 "date": "2027-01-15", "samples": 4000, "notes": ""}},
                 {"model": "wan2.2-t2v-a14b", "runtime_class": "cuda-sm90/*",
                  "metric": "fingerprint_rel_l2", "statistic": "value",
                  "direction": "lower-is-better", "value": 0.02,
                  "position": {"phase": "low-noise", "start": 0.5, "end": 1.0},
                  "provenance": {...}}]}

Trajectory thresholds (``/2``): an entry of a trajectory metric (``latent_rel_l2_segment``,
``latent_rel_l2_checkpoint``, ``fingerprint_rel_l2``) may name a ``position``: an expert phase
(``high-noise``: steps 1 to the switch step, whose last latent is ``pre_switch``; ``low-noise``:
the steps after it; ``any``) and a range ``[start, end]`` of the fraction of that phase done
(steps done in the phase over the phase's steps). One file so serves any step count. A
checkpoint at step s, a segment ending at s, or a fingerprint after step s takes the threshold of
the entries whose position holds s: the most specific model and class as above, then the
narrowest range, then a named phase before ``any``, then file order. An entry without a
position holds every step.

Default: without a file, the validator uses ``DEFAULT_THRESHOLDS``, the thresholds the Stage 1
GPU run produced for the shipped model ``wan-shapes-small`` (``results/stage1/shapes-gpu``); its
entries name that model's revision and the runtime classes that were calibrated, so they apply
to nothing else.

Matching: an entry applies when its ``model`` is the record's revision or preset, its
``runtime_class`` equals (or, as a pattern, matches) the executor's runtime class, and its
``validator_class`` (``/3``; default ``*``, any validator) the class the validator regenerated in:
a threshold holds for the pair of classes it was calibrated on, and a pair no entry names has no
threshold (the validator then says so rather than decide). A policy learns the validator's class
through :meth:`ThresholdPolicy.bound_to`; unbound, only entries for any validator (``*``) apply.
When several entries apply to one metric and statistic, the most specific wins: a revision before
a preset, an exact executor class before a pattern, an exact validator class before a pattern
before ``*``, then the first in file order. ``metric_weights`` pins the
learned metric's weight files (role → sha256) the calibration used: scores computed with other
files are not compared with that threshold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_bytes, canonical_json
from ditproof.metrics.registry import (
    METRICS,
    TRAJECTORY_KINDS,
    Direction,
    metric_spec,
    parse_score_key,
    score_key,
)
from ditproof.protocol.files import load_model_file

THRESHOLDS_SCHEMA: Literal["ditproof.thresholds/3"] = "ditproof.thresholds/3"
THRESHOLDS_SCHEMAS = ("ditproof.thresholds/1", "ditproof.thresholds/2", "ditproof.thresholds/3")
"""Schemas read: ``/1`` (no positions), ``/2`` (no validator class) and ``/3`` (this one, written by default)."""
ANY_VALIDATOR = "*"
Phase = Literal["high-noise", "low-noise"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provenance(_Model):
    """Where a threshold comes from: the calibration run, its false-positive target and date."""

    calibration: str = Field(min_length=1, max_length=200)
    fpr_target: float | None = Field(default=None, gt=0.0, lt=1.0)
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    samples: int | None = Field(default=None, ge=1)
    notes: str = ""


class TrajectoryPosition(_Model):
    """Where on the trajectory a threshold holds: a phase and a range of the fraction of it done."""

    phase: Literal["high-noise", "low-noise", "any"] = "any"
    start: float = Field(default=0.0, ge=0.0, le=1.0)
    end: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _order(self) -> TrajectoryPosition:
        if self.start > self.end:
            raise ValueError(f"position: start {self.start} after end {self.end}; allowed: start <= end")
        return self

    def holds(self, phase: Phase, fraction: float) -> bool:
        """Whether a step in ``phase`` with ``fraction`` of it done lies in this position."""
        return self.phase in ("any", phase) and self.start <= fraction <= self.end

    def describe(self) -> str:
        """``low-noise 0.5-1``."""
        return f"{self.phase} {self.start:g}-{self.end:g}"


class ThresholdEntry(_Model):
    """One threshold for (model, executor's runtime class, validator's runtime class, metric, statistic)."""

    model: str = Field(min_length=1)
    runtime_class: str = Field(min_length=1)
    validator_class: str = Field(default=ANY_VALIDATOR, min_length=1)
    metric: str
    statistic: str
    direction: Direction
    value: float
    metric_weights: dict[str, str] = {}
    position: TrajectoryPosition | None = None
    provenance: Provenance

    @property
    def identity(self) -> tuple[str, str, str, str, str, TrajectoryPosition | None]:
        """What a thresholds file holds once: model, both classes, metric, statistic and position."""
        return (self.model, self.runtime_class, self.validator_class, self.metric, self.statistic, self.position)

    @model_validator(mode="after")
    def _check(self) -> ThresholdEntry:
        spec = metric_spec(self.metric) if self.metric in METRICS else None
        if spec is None:
            raise ValueError(f"metric: got {self.metric!r}; allowed: {', '.join(METRICS)}")
        if self.position is not None and spec.kind not in TRAJECTORY_KINDS:
            trajectory = [name for name, s in METRICS.items() if s.kind in TRAJECTORY_KINDS]
            raise ValueError(
                f"position of {self.metric}: a frame or final-latent metric holds for the whole video; allowed: a "
                f"position on trajectory metrics only ({', '.join(trajectory)})"
            )
        if self.statistic not in spec.statistics:
            raise ValueError(
                f"statistic of {self.metric}: got {self.statistic!r}; allowed: {', '.join(spec.statistics)}"
            )
        if self.direction != spec.direction:
            raise ValueError(f"direction of {self.metric}: got {self.direction!r}; allowed: {spec.direction!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"value: got {self.value}; allowed: a finite number")
        for role, digest in self.metric_weights.items():
            if not _SHA256.match(digest):
                raise ValueError(f"metric_weights.{role}: got {digest!r}; allowed: a 64-digit lower-case sha256")
        return self


class ThresholdsFile(_Model):
    """A versioned set of thresholds (see the module docstring for the format)."""

    schema_version: Literal["ditproof.thresholds/1", "ditproof.thresholds/2", "ditproof.thresholds/3"] = (
        THRESHOLDS_SCHEMA
    )
    version: int = Field(ge=1)
    provisional: bool
    description: str
    entries: list[ThresholdEntry]

    @field_validator("entries")
    @classmethod
    def _unique(cls, entries: list[ThresholdEntry]) -> list[ThresholdEntry]:
        seen = set()
        for entry in entries:
            key = entry.identity
            if key in seen:
                position = f", position {entry.position.describe()}" if entry.position else ""
                raise ValueError(
                    f"duplicate entry for model, runtime_class, validator_class, metric, statistic {key[:5]}{position}"
                )
            seen.add(key)
        return entries

    @model_validator(mode="after")
    def _positions_need_v2(self) -> ThresholdsFile:
        if self.schema_version == "ditproof.thresholds/1" and any(e.position for e in self.entries):
            raise ValueError(
                "position: not in a ditproof.thresholds/1 file; allowed: schema ditproof.thresholds/2 or /3"
            )
        if self.schema_version != THRESHOLDS_SCHEMA and any(e.validator_class != ANY_VALIDATOR for e in self.entries):
            raise ValueError(
                f"validator_class: not in a {self.schema_version} file; allowed: schema {THRESHOLDS_SCHEMA}"
            )
        return self

    def save(self, path: str | Path) -> None:
        """Writes the file atomically (canonical JSON)."""
        atomic_write_bytes(path, canonical_json(self.model_dump(mode="json")) + b"\n")

    @classmethod
    def load(cls, path: str | Path) -> ThresholdsFile:
        """Reads and checks a thresholds file.

        Raises:
            InvalidInputError: missing file, not JSON, or not a valid thresholds file.
        """
        return load_model_file(cls, path, "thresholds", "ditproof.thresholds/3 (or /2, /1)")


@dataclass(frozen=True)
class Threshold:
    """A threshold in force for one score key, with where it came from."""

    metric: str
    statistic: str
    value: float
    direction: Direction
    source: str
    metric_weights: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``"metric:statistic"``."""
        return score_key(self.metric, self.statistic)

    def passes(self, score: float) -> bool:
        """True when ``score`` is at least as good as the threshold (ties pass)."""
        return score >= self.value if self.direction == "higher-is-better" else score <= self.value

    def describe(self, score: float) -> str:
        """``lpips_alex:worst 0.12 > 0.05 (lower-is-better; source)``."""
        ok = self.passes(score)
        relation = (">=" if ok else "<") if self.direction == "higher-is-better" else ("<=" if ok else ">")
        return f"{self.key} {score:.6g} {relation} {self.value:.6g} ({self.direction}; {self.source})"


def normalize_key(name: str) -> str:
    """``METRIC[:STATISTIC]`` → ``metric:statistic``, the statistic defaulting as in :func:`parse_threshold`."""
    name = name.strip()
    if ":" not in name:
        spec = metric_spec(name)
        name = score_key(spec.name, "worst" if spec.kind == "frames" else "value")
    return score_key(*parse_score_key(name))


def parse_threshold(text: str) -> tuple[str, float]:
    """Parses ``METRIC[:STATISTIC]=VALUE`` into (score key, value).

    The statistic defaults to ``worst`` for frame metrics (one bad frame must fail) and to
    ``value`` for latent metrics.

    Raises:
        InvalidInputError: naming the text and the allowed form.
    """
    name, sep, number = text.partition("=")
    if not sep:
        raise InvalidInputError(f"threshold: got {text!r}; allowed: METRIC[:STATISTIC]=VALUE, e.g. lpips_alex=0.05")
    key = normalize_key(name)
    try:
        value = float(number)
    except ValueError:
        raise InvalidInputError(f"threshold {name}: got value {number!r}; allowed: a number") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"threshold {name}: got value {number!r}; allowed: a finite number")
    return key, value


DEFAULT_THRESHOLDS = Path(__file__).resolve().parents[1] / "models" / "shipped" / "thresholds.json"
"""The shipped model's thresholds from the Stage 1 GPU run (see the module docstring)."""


class ThresholdPolicy:
    """Thresholds from a file and/or explicit values; explicit values override the file's."""

    def __init__(
        self,
        file: ThresholdsFile | None = None,
        explicit: dict[str, float] | None = None,
        file_label: str = "",
        validator_class: str | None = None,
    ):
        self.file = file
        self.file_label = file_label
        # Keys as METRIC or METRIC:STATISTIC (see parse_threshold).
        self.explicit = {normalize_key(key): value for key, value in (explicit or {}).items()}
        self.validator_class = validator_class

    def bound_to(self, validator_class: str) -> ThresholdPolicy:
        """This policy for a validator that regenerates in ``validator_class``: entries calibrated
        for another validator class no longer apply (module docstring, Matching)."""
        return ThresholdPolicy(self.file, self.explicit, self.file_label, validator_class)

    @classmethod
    def from_cli(cls, path: str | Path | None, thresholds: list[str]) -> ThresholdPolicy:
        """Builds a policy from a file (default: ``DEFAULT_THRESHOLDS``) and ``METRIC[:STATISTIC]=VALUE`` texts."""
        explicit = dict(parse_threshold(t) for t in thresholds)
        if path:
            return cls(ThresholdsFile.load(path), explicit, file_label=str(path))
        return cls(ThresholdsFile.load(DEFAULT_THRESHOLDS), explicit, file_label="default (shipped model)")

    def _source(self, entry: ThresholdEntry) -> str:
        assert self.file is not None
        p = entry.provenance
        fpr = f", FPR target {p.fpr_target}" if p.fpr_target is not None else ""
        label = "provisional " if self.file.provisional else ""
        return f"{label}thresholds {self.file_label or 'file'} v{self.file.version}: {p.calibration}{fpr}, {p.date}"

    def _matching(
        self, model_preset: str, model_revision: str, runtime_class: str
    ) -> list[tuple[int, int, ThresholdEntry]]:
        """(model and class rank, file order, entry) of the file's entries for this model and class."""
        found = []
        for order, entry in enumerate(self.file.entries if self.file else []):
            if entry.model == model_revision:
                model_rank = 0
            elif entry.model == model_preset:
                model_rank = 1
            else:
                continue
            if entry.runtime_class == runtime_class:
                class_rank = 0
            elif fnmatchcase(runtime_class, entry.runtime_class):
                class_rank = 1
            else:
                continue
            if entry.validator_class == ANY_VALIDATOR:
                validator_rank = 2
            elif self.validator_class is None:
                continue  # calibrated for a validator class, and this policy does not know its own
            elif entry.validator_class == self.validator_class:
                validator_rank = 0
            elif fnmatchcase(self.validator_class, entry.validator_class):
                validator_rank = 1
            else:
                continue
            found.append((model_rank * 6 + class_rank * 3 + validator_rank, order, entry))
        return found

    def _threshold(self, entry: ThresholdEntry) -> Threshold:
        source = self._source(entry)
        if entry.position is not None:
            source += f", position {entry.position.describe()}"
        return Threshold(entry.metric, entry.statistic, entry.value, entry.direction, source, entry.metric_weights)

    def thresholds_for(self, model_preset: str, model_revision: str, runtime_class: str) -> dict[str, Threshold]:
        """Every threshold in force for this model and runtime class, by score key, that holds for
        the whole trajectory (entries with a position are looked up by :meth:`trajectory_threshold`)."""
        chosen: dict[str, tuple[tuple[int, int], ThresholdEntry]] = {}
        for rank, order, entry in self._matching(model_preset, model_revision, runtime_class):
            if entry.position is not None:
                continue
            key = score_key(entry.metric, entry.statistic)
            if key not in chosen or (rank, order) < chosen[key][0]:
                chosen[key] = ((rank, order), entry)
        result = {key: self._threshold(entry) for key, (_, entry) in chosen.items()}
        for key, value in self.explicit.items():
            metric, statistic = parse_score_key(key)
            result[key] = Threshold(metric, statistic, value, metric_spec(metric).direction, "explicit --threshold")
        return dict(sorted(result.items()))

    def trajectory_threshold(
        self, model_preset: str, model_revision: str, runtime_class: str, metric: str, phase: Phase, fraction: float
    ) -> Threshold | None:
        """The threshold of trajectory metric ``metric`` at a step in ``phase`` with ``fraction`` of
        the phase done (module docstring: most specific model and class, narrowest range, named
        phase, file order); an explicit value overrides the file at every position. None: none."""
        key = score_key(metric, "value")
        if key in self.explicit:
            return Threshold(metric, "value", self.explicit[key], metric_spec(metric).direction, "explicit --threshold")
        best: tuple[tuple[int, float, int, int], ThresholdEntry] | None = None
        for rank, order, entry in self._matching(model_preset, model_revision, runtime_class):
            if entry.metric != metric or entry.statistic != "value":
                continue
            position = entry.position
            if position is not None and not position.holds(phase, fraction):
                continue
            width = 1.0 if position is None else position.end - position.start
            named = 0 if position is not None and position.phase != "any" else 1
            candidate = ((rank, width, named, order), entry)
            if best is None or candidate[0] < best[0]:
                best = candidate
        return None if best is None else self._threshold(best[1])

    def has_trajectory_thresholds(
        self, model_preset: str, model_revision: str, runtime_class: str, metric: str
    ) -> bool:
        """Whether any threshold of ``metric`` (at some position, or everywhere) is in force."""
        if score_key(metric, "value") in self.explicit:
            return True
        return any(e.metric == metric for _, _, e in self._matching(model_preset, model_revision, runtime_class))
