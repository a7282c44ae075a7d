"""Calibrated thresholds into another thresholds file (the shipped one): ``experiment install-thresholds``.

``experiment analyze`` writes one entry per score key and pair of runtime classes: the executor's
class (``runtime_class``, as a benign configuration ran) and the validator's (``validator_class``,
the pool's reference). Installing takes some of those entries into a file a validator loads and
replaces that file's entries for the same classes:

1. **Select.** The entries of the asked keys (:data:`DEFAULT_KEYS`: the keys of the full and
   checkpoints modes' joint decisions) whose executor or validator class matches one of the
   ``--replace`` fnmatch patterns.
2. **Any CPU instruction set** (optional). A CPU class names the ISA torch dispatched to
   (``cpu-x86_64/avx512-2threads/…``); :func:`any_cpu_isa` writes ``*`` there, so a validator on
   another ISA of the same architecture applies the band (the ISA changes the rounding of the
   reductions, as the thread count does, not the model's sensitivity to it). The thread count and
   everything after it stay exact.
3. **Both directions** (optional). A pool measures an executor in class E against a validator
   in class V. The relative distances are symmetric up to the norm they divide by (the two runs'
   norms agree to ~1e-6), so the entry holds for a validator in E meeting an executor in V too:
   each pair is also written as (V, E) unless the file already measured that direction. A GPU
   calibration whose pools run CPU executors against the GPU reference so also gives a CPU
   validator its thresholds against a GPU executor.
4. **Replace.** The target loses every entry of the installed entries' model revisions whose
   executor or validator class matches a ``--replace`` pattern (other models and classes stay)
   and any entry an installed one restates (same model, classes, key and position); the new
   entries are added, ``version`` goes up by one, and the result passes the file's own checks
   before it is written atomically.

Every change is stated in the entries' provenance notes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import ValidationError

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_text
from ditproof.metrics.registry import parse_score_key, score_key
from ditproof.validation.policy import ThresholdEntry, ThresholdsFile, TrajectoryPosition

DEFAULT_KEYS: tuple[tuple[str, str], ...] = (
    ("latent_rel_l2", "value"),
    ("latent_rel_l2_checkpoint", "value"),
    ("latent_rel_l2_segment", "value"),
    ("psnr", "mean"),
)
"""The keys a validator decides with after a Stage 1 calibration: the final latent, the trajectory
by position (full and checkpoints modes) and the one frame metric in the full mode's joint score.
An analysis's other frame keys each hold their own threshold; applied beside these, they would make
the validator's decision a union above the calibrated false-positive target."""

MEASURED_NOTE = "measured in this direction"
MIRRORED_NOTE = "mirrored: the pool measured the other direction (distances are symmetric)"

_CPU_ISA = re.compile(r"^cpu-(?P<arch>[^/]+)/(?P<isa>[^/-]+)-(?P<threads>\d+threads)/")

_Identity = tuple[str, str, str, str, str, TrajectoryPosition | None]
"""A thresholds entry's :attr:`~ditproof.validation.policy.ThresholdEntry.identity`."""


def any_cpu_isa(runtime_class: str) -> str:
    """The class with its CPU instruction set as ``*``; other classes unchanged.

    ``cpu-x86_64/avx512-2threads/…`` → ``cpu-x86_64/*-2threads/…``.
    """
    return _CPU_ISA.sub(lambda m: f"cpu-{m['arch']}/*-{m['threads']}/", runtime_class, count=1)


def parse_keys(text: str) -> tuple[tuple[str, str], ...]:
    """``"latent_rel_l2:value,psnr:mean"`` → ``(("latent_rel_l2", "value"), ("psnr", "mean"))``.

    Raises:
        InvalidInputError: an empty list, or a key that is not ``metric:statistic`` of a known metric.
    """
    keys = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            keys.append(parse_score_key(part))
        except InvalidInputError as exc:
            raise InvalidInputError(f"--keys: {part!r}: {exc}") from None
    if not keys:
        raise InvalidInputError(f"--keys: got {text!r}; allowed: comma-separated metric:statistic keys")
    return tuple(dict.fromkeys(keys))


def _matches(entry: ThresholdEntry, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(c, p) for c in (entry.runtime_class, entry.validator_class) for p in patterns)


def _classes(entries: Iterable[ThresholdEntry]) -> list[str]:
    return sorted({c for e in entries for c in (e.runtime_class, e.validator_class)})


def _isa_note(entry: ThresholdEntry) -> str | None:
    """What the ISA generalisation changed in ``entry``'s classes, or None where it changed nothing."""
    found = [m for c in (entry.runtime_class, entry.validator_class) if (m := _CPU_ISA.match(c)) and m["isa"] != "*"]
    if not found:
        return None
    isas = ", ".join(sorted({m["isa"] for m in found}))
    arches = ", ".join(sorted({m["arch"] for m in found}))
    return f"calibrated on {isas}, any {arches} ISA accepted"


def _rewritten(entry: ThresholdEntry, executor: str, validator: str, notes: Sequence[str]) -> ThresholdEntry:
    text = "; ".join(n for n in (entry.provenance.notes, *notes) if n)
    return entry.model_copy(
        update={
            "runtime_class": executor,
            "validator_class": validator,
            "provenance": entry.provenance.model_copy(update={"notes": text}),
        }
    )


def select_entries(
    calibrated: ThresholdsFile,
    patterns: Sequence[str],
    keys: Sequence[tuple[str, str]] = DEFAULT_KEYS,
    *,
    mirror: bool = False,
    any_isa: bool = False,
) -> list[ThresholdEntry]:
    """The entries of ``calibrated`` to install (steps 1-3 of the module docstring).

    Args:
        calibrated: the analysis's thresholds file.
        patterns: fnmatch patterns; an entry is taken when its executor or validator class matches one.
        keys: the (metric, statistic) pairs taken.
        mirror: also write each pair of classes in the other direction.
        any_isa: write the instruction set of every CPU class as ``*``.

    Raises:
        InvalidInputError: no pattern, a pattern that matches no class of ``calibrated``, no entry
            selected, or two measured entries that become one entry (e.g. two ISAs under ``any_isa``).
    """
    if not patterns:
        raise InvalidInputError("--replace: none given; allowed: one or more fnmatch patterns of runtime classes")
    held = _classes(calibrated.entries)
    for pattern in patterns:
        if not any(fnmatchcase(c, pattern) for c in held):
            raise InvalidInputError(
                f"--replace: got {pattern!r}, which matches no runtime or validator class of the calibrated file; "
                f"its classes: {', '.join(held) or 'none'}"
            )
    wanted = set(keys)
    chosen = [e for e in calibrated.entries if (e.metric, e.statistic) in wanted and _matches(e, patterns)]
    if not chosen:
        held_keys = sorted({score_key(e.metric, e.statistic) for e in calibrated.entries})
        raise InvalidInputError(
            f"nothing to install: no entry of keys {', '.join(score_key(*k) for k in keys)} has a class matching "
            f"{', '.join(patterns)}; the calibrated file holds keys {', '.join(held_keys) or 'none'} "
            f"for classes {', '.join(held) or 'none'}"
        )

    # Each measured entry, then its mirror; a direction the file measured is never replaced by a mirror.
    pairs: list[tuple[ThresholdEntry, ThresholdEntry | None]] = []
    measured: set[_Identity] = set()
    for entry in chosen:
        isa = _isa_note(entry) if any_isa else None
        executor = any_cpu_isa(entry.runtime_class) if any_isa else entry.runtime_class
        validator = any_cpu_isa(entry.validator_class) if any_isa else entry.validator_class
        fresh = _rewritten(entry, executor, validator, [n for n in (MEASURED_NOTE if mirror else None, isa) if n])
        if fresh.identity in measured:
            raise InvalidInputError(
                f"two calibrated entries of {score_key(entry.metric, entry.statistic)} become one for executor class "
                f"{executor!r} and validator class {validator!r}; allowed: entries that stay distinct "
                "(install them without --any-cpu-isa)"
            )
        measured.add(fresh.identity)
        other = _rewritten(entry, validator, executor, [n for n in (MIRRORED_NOTE, isa) if n]) if mirror else None
        pairs.append((fresh, other))
    entries: dict[_Identity, ThresholdEntry] = {}
    for fresh, other in pairs:
        entries[fresh.identity] = fresh
        if other is not None and other.identity not in measured:
            entries.setdefault(other.identity, other)  # once, where both directions are one pair
    return list(entries.values())


@dataclass(frozen=True)
class Installation:
    """The updated file and what changed in it."""

    file: ThresholdsFile
    kept: int
    removed: int
    installed: int


def replace_entries(target: ThresholdsFile, fresh: Sequence[ThresholdEntry], patterns: Sequence[str]) -> Installation:
    """``target`` with ``fresh`` in place of its entries for the same model and classes (step 4).

    Raises:
        InvalidInputError: the result fails the thresholds file's own checks.
    """
    models = {e.model for e in fresh}
    restated = {e.identity for e in fresh}
    kept = [
        e for e in target.entries if not (e.model in models and _matches(e, patterns)) and e.identity not in restated
    ]
    document = target.model_dump(mode="json")
    document["entries"] = [e.model_dump(mode="json") for e in (*kept, *fresh)]
    document["version"] = target.version + 1
    try:
        merged = ThresholdsFile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(f"the result would not be a valid thresholds file (at {where}: {message})") from None
    return Installation(merged, kept=len(kept), removed=len(target.entries) - len(kept), installed=len(fresh))


def render(thresholds: ThresholdsFile) -> str:
    """The file as committed: sorted keys, one field a line, defaults that are None left out."""
    document = thresholds.model_dump(mode="json", exclude_none=True)
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def install_thresholds(
    calibrated: str | Path,
    into: str | Path,
    patterns: Sequence[str],
    keys: Sequence[tuple[str, str]] = DEFAULT_KEYS,
    *,
    mirror: bool = False,
    any_isa: bool = False,
) -> Installation:
    """Installs the selected entries of the file ``calibrated`` into the file ``into`` (module docstring).

    Nothing is written unless every step succeeds.

    Raises:
        InvalidInputError: either file missing or not a thresholds file, and every refusal of
            :func:`select_entries` and :func:`replace_entries`.
    """
    source = ThresholdsFile.load(calibrated)
    target = ThresholdsFile.load(into)
    fresh = select_entries(source, patterns, keys, mirror=mirror, any_isa=any_isa)
    result = replace_entries(target, fresh, patterns)
    atomic_write_text(into, render(result.file))
    return result
