"""Thresholds policy: which score a valid video must reach, per model, runtime class and metric.

Measurements (``ditproof.metrics``) and decisions are kept apart: a thresholds file, versioned
and with its provenance, says for each (model, runtime class, metric, statistic) the threshold
and its direction. The validator refuses to decide on a metric it has no threshold for, unless
the caller gives one explicitly (``--threshold METRIC[:STATISTIC]=VALUE``).

File format (JSON, schema ``ditproof.thresholds/1``)::

    {"schema_version": "ditproof.thresholds/1", "version": 3, "provisional": false,
     "description": "...",
     "entries": [{"model": "wan2.2-t2v-a14b",            # a preset name or a 64-hex revision
                  "runtime_class": "cuda-sm90/*",        # exact, or an fnmatch pattern
                  "metric": "lpips_alex", "statistic": "worst",
                  "direction": "lower-is-better", "value": 0.05,
                  "metric_weights": {"alexnet": "<sha256>", "lpips_alex": "<sha256>"},
                  "provenance": {"calibration": "stage1-2027-01", "fpr_target": 0.01,
                                 "date": "2027-01-15", "samples": 4000, "notes": ""}}]}

Default: without a file, the validator uses ``DEFAULT_THRESHOLDS``, the thresholds the Stage 1
GPU run produced for the shipped model ``wan-shapes-small`` (``results/stage1/shapes-gpu``); its
entries name that model's revision and the runtime classes that were calibrated, so they apply
to nothing else.

Matching: an entry applies when its ``model`` is the record's revision or preset and its
``runtime_class`` equals (or, as a pattern, matches) the executor's runtime class. When several
entries apply to one metric and statistic, the most specific wins: a revision before a preset,
an exact class before a pattern, then the first in file order. ``metric_weights`` pins the
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
from ditproof.metrics.registry import METRICS, Direction, metric_spec, parse_score_key, score_key
from ditproof.protocol.files import load_model_file

THRESHOLDS_SCHEMA: Literal["ditproof.thresholds/1"] = "ditproof.thresholds/1"
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


class ThresholdEntry(_Model):
    """One threshold for (model, runtime class, metric, statistic)."""

    model: str = Field(min_length=1)
    runtime_class: str = Field(min_length=1)
    metric: str
    statistic: str
    direction: Direction
    value: float
    metric_weights: dict[str, str] = {}
    provenance: Provenance

    @model_validator(mode="after")
    def _check(self) -> ThresholdEntry:
        spec = metric_spec(self.metric) if self.metric in METRICS else None
        if spec is None:
            raise ValueError(f"metric: got {self.metric!r}; allowed: {', '.join(METRICS)}")
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

    schema_version: Literal["ditproof.thresholds/1"] = THRESHOLDS_SCHEMA
    version: int = Field(ge=1)
    provisional: bool
    description: str
    entries: list[ThresholdEntry]

    @field_validator("entries")
    @classmethod
    def _unique(cls, entries: list[ThresholdEntry]) -> list[ThresholdEntry]:
        seen = set()
        for entry in entries:
            key = (entry.model, entry.runtime_class, entry.metric, entry.statistic)
            if key in seen:
                raise ValueError(f"duplicate entry for model, runtime_class, metric, statistic {key}")
            seen.add(key)
        return entries

    def save(self, path: str | Path) -> None:
        """Writes the file atomically (canonical JSON)."""
        atomic_write_bytes(path, canonical_json(self.model_dump(mode="json")) + b"\n")

    @classmethod
    def load(cls, path: str | Path) -> ThresholdsFile:
        """Reads and checks a thresholds file.

        Raises:
            InvalidInputError: missing file, not JSON, or not a valid thresholds file.
        """
        return load_model_file(cls, path, "thresholds", THRESHOLDS_SCHEMA)


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
        self, file: ThresholdsFile | None = None, explicit: dict[str, float] | None = None, file_label: str = ""
    ):
        self.file = file
        self.file_label = file_label
        # Keys as METRIC or METRIC:STATISTIC (see parse_threshold).
        self.explicit = {normalize_key(key): value for key, value in (explicit or {}).items()}

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

    def thresholds_for(self, model_preset: str, model_revision: str, runtime_class: str) -> dict[str, Threshold]:
        """Every threshold in force for this model and runtime class, by score key."""
        chosen: dict[str, tuple[tuple[int, int], ThresholdEntry]] = {}
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
            key = score_key(entry.metric, entry.statistic)
            rank = (model_rank * 2 + class_rank, order)
            if key not in chosen or rank < chosen[key][0]:
                chosen[key] = (rank, entry)
        result = {
            key: Threshold(
                entry.metric, entry.statistic, entry.value, entry.direction, self._source(entry), entry.metric_weights
            )
            for key, (_, entry) in chosen.items()
        }
        for key, value in self.explicit.items():
            metric, statistic = parse_score_key(key)
            result[key] = Threshold(metric, statistic, value, metric_spec(metric).direction, "explicit --threshold")
        return dict(sorted(result.items()))
