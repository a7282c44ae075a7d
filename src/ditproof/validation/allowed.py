"""Which runtime classes the network allows, per model: a record outside them is invalid.

A runtime class is a promise of bytes (:func:`ditproof.generation.runtime.runtime_class`): inside
one, a validator's regeneration equals the executor's byte for byte. The executor declares its
class in its record, so the network must say which classes exist; otherwise an executor could
declare a cheaper precision (float16, FP8 weights) and be regenerated in it.

File format (JSON, schema ``ditproof.classes/1``)::

    {"schema_version": "ditproof.classes/1", "version": 1, "description": "...",
     "models": [{"model": "wan2.2-t2v-a14b",     # preset name, 64-hex revision or fnmatch pattern
                 "rules": [{"device_type": ["cuda"], "architecture": ["cuda-sm90"],
                            "dtype": ["bfloat16"], "vae_dtype": ["float32", "bfloat16"],
                            "attention_backend": ["sdpa*", "flash-attn-3"],
                            "tp_degree": [1, 2, 4, 8]}]}]}

A record is allowed when the first entry for its model (its revision before its preset, then
file order; a pattern matches either) has a rule that every one of the record's fingerprint
values satisfies. A rule names fields of the runtime fingerprint
(:class:`ditproof.protocol.record.RuntimeFingerprint`), plus ``architecture`` and ``hardware``
(the runtime class's first two parts), each with the allowed values: a string value is an fnmatch
pattern, others must be equal, ``null`` allows None. A field a rule does not name is free.

A model's entry may also name ``checkpoints`` (``{"rule": "per-phase-v1", "min_segments": 8}``):
its records must then state a checkpoint schedule of that rule with at least that many segments
(records made before schedules existed state none, and are refused under such an entry).

The default file (:data:`DEFAULT_ALLOWED`, ``allowed_classes.json`` beside this module) allows,
for every preset, only the published algorithm (both experts, native weights, no cache, no
shortcut, no engine other than ditproof's or vLLM-Omni's) and the precisions each model was made
for, and requires the default checkpoint schedule (8 segments).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ditproof.generation.runtime import class_parts
from ditproof.protocol.files import load_model_file
from ditproof.protocol.record import InferenceRecord, RuntimeFingerprint

CLASSES_SCHEMA: Literal["ditproof.classes/1"] = "ditproof.classes/1"
DEFAULT_ALLOWED = Path(__file__).with_name("allowed_classes.json")
DERIVED_FIELDS = ("architecture", "hardware")
"""Rule fields taken from the runtime class rather than the fingerprint."""

Value = str | int | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointRequirement(_Model):
    """What a record of a model must commit to: a checkpoint schedule of ``rule`` with at least
    ``min_segments`` segments (:class:`ditproof.protocol.options.CheckpointSchedule`)."""

    rule: Literal["per-phase-v1"] = "per-phase-v1"
    min_segments: int = Field(default=8, ge=1, le=256)


class ModelClasses(_Model):
    """The classes allowed for one model: any rule that matches allows the record. ``checkpoints``:
    the trajectory commitments its records must make (None: any)."""

    model: str = Field(min_length=1)
    rules: list[dict[str, list[Value]]] = Field(min_length=1)
    checkpoints: CheckpointRequirement | None = None

    @field_validator("rules")
    @classmethod
    def _fields(cls, rules: list[dict[str, list[Value]]]) -> list[dict[str, list[Value]]]:
        known = set(RuntimeFingerprint.model_fields) | set(DERIVED_FIELDS)
        for rule in rules:
            unknown = sorted(set(rule) - known)
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
            empty = sorted(name for name, values in rule.items() if not values)
            if empty:
                raise ValueError(f"field(s) {', '.join(empty)} allow no value; allowed: one value or more")
        return rules


class AllowedClasses(_Model):
    """The network's list of runtime classes per model (see the module docstring)."""

    schema_version: Literal["ditproof.classes/1"] = CLASSES_SCHEMA
    version: int = Field(ge=1)
    description: str
    models: list[ModelClasses]

    @classmethod
    def load(cls, path: str | Path | None = None) -> AllowedClasses:
        """Reads a classes file (default: :data:`DEFAULT_ALLOWED`).

        Raises:
            InvalidInputError: missing, unreadable or invalid file.
        """
        return load_model_file(cls, path or DEFAULT_ALLOWED, "allowed classes", CLASSES_SCHEMA)

    def entry_for(self, preset: str, revision: str) -> ModelClasses | None:
        """The entry that governs a model: its revision's, else its preset's, else a pattern's."""
        for wanted in (revision, preset):
            for entry in self.models:
                if entry.model == wanted:
                    return entry
        return next(
            (e for e in self.models if fnmatchcase(revision, e.model) or fnmatchcase(preset, e.model)),
            None,
        )

    def problems(self, record: InferenceRecord) -> list[str]:
        """Why the record's class is not allowed (empty: allowed)."""
        entry = self.entry_for(record.model.preset, record.model.revision)
        if entry is None:
            return [
                f"no runtime class is allowed for model {record.model.preset} (revision {record.model.revision[:16]})"
            ]
        problems = _schedule_problems(entry.checkpoints, record)
        values = _values(record.runtime)
        misses = [_misses(rule, values) for rule in entry.rules]
        if any(not miss for miss in misses):
            return problems
        closest = min(misses, key=len)
        return [f"{name}={values[name]!r} (allowed: {', '.join(map(str, rule))})" for name, rule in closest] + problems


def _schedule_problems(required: CheckpointRequirement | None, record: InferenceRecord) -> list[str]:
    schedule = record.options.capture.schedule
    if required is None:
        return []
    if schedule is None or schedule.rule != required.rule or schedule.segments < required.min_segments:
        stated = "no checkpoint schedule" if schedule is None else f"{schedule.rule} with {schedule.segments} segments"
        return [
            f"options.capture.schedule: {stated} (allowed: {required.rule} with at least {required.min_segments} "
            "segments: the trajectory commitments the network requires)"
        ]
    return []


def _values(fp: RuntimeFingerprint) -> dict[str, Value]:
    values: dict[str, Value] = {
        name: value for name, value in fp.model_dump(mode="json").items() if not isinstance(value, dict | list)
    }
    parts = class_parts(fp)
    values.update({name: parts[name] for name in DERIVED_FIELDS})
    return values


def _misses(rule: dict[str, list[Value]], values: dict[str, Value]) -> list[tuple[str, list[Value]]]:
    return [(name, allowed) for name, allowed in rule.items() if not any(_match(values[name], a) for a in allowed)]


def _match(value: Value, allowed: Value) -> bool:
    if isinstance(allowed, str) and isinstance(value, str):
        return fnmatchcase(value, allowed)
    return type(value) is type(allowed) and value == allowed
