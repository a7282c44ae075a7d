"""Reading, selecting and writing pricing coefficients (``ditproof.pricing-coefficients/1``).

The packaged file ``ditproof/pricing/coefficients.json`` holds one entry per (model shape,
GPU). Writes go through a temporary file and a rename, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from ditproof.errors import InvalidInputError, ModelNotFoundError
from ditproof.hashing import atomic_write_text, sha256_json
from ditproof.protocol.pricing import CoefficientEntry, CoefficientsFile

PACKAGED_COEFFICIENTS = Path(__file__).with_name("coefficients.json")


def load_coefficients(path: str | Path | None = None) -> CoefficientsFile:
    """Loads a coefficients file (the packaged one by default).

    Raises:
        ModelNotFoundError: the file does not exist.
        InvalidInputError: it is not valid JSON of the ``ditproof.pricing-coefficients/1`` schema.
    """
    target = Path(path) if path is not None else PACKAGED_COEFFICIENTS
    try:
        text = target.read_text()
    except FileNotFoundError:
        raise ModelNotFoundError(f"coefficients: file {target} does not exist") from None
    except IsADirectoryError:
        raise InvalidInputError(
            f"coefficients: got {str(path)!r}, a folder; allowed: a coefficients JSON file"
        ) from None
    try:
        return CoefficientsFile.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"coefficients: {target} is not valid JSON ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise InvalidInputError(f"coefficients: {target} does not follow the coefficients schema: {problems}") from None


def dump_coefficients(data: CoefficientsFile) -> str:
    """Human-readable JSON with sorted keys (the file is reviewed in diffs)."""
    return json.dumps(data.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def merge_entry(data: CoefficientsFile, entry: CoefficientEntry) -> CoefficientsFile:
    """Adds ``entry``, replacing any entry for the same GPU that prices one of its models."""
    kept = tuple(old for old in data.entries if not (old.gpu == entry.gpu and set(old.models) & set(entry.models)))
    return CoefficientsFile(entries=(*kept, entry))


def write_entry(path: str | Path, entry: CoefficientEntry) -> CoefficientsFile:
    """Merges ``entry`` into the file at ``path`` (created if absent) and writes it atomically."""
    target = Path(path)
    existing = load_coefficients(target) if target.exists() else CoefficientsFile()
    merged = merge_entry(existing, entry)
    atomic_write_text(target, dump_coefficients(merged))
    return merged


def entry_sha256(entry: CoefficientEntry) -> str:
    """Canonical sha256 of an entry: a quote names the exact coefficients it used."""
    return sha256_json(entry.model_dump(mode="json"))


def select_entry(data: CoefficientsFile, model: str, gpu: str | None = None) -> CoefficientEntry:
    """Finds the entry pricing ``model`` on ``gpu``.

    ``gpu`` matches an entry's device name exactly or as a case-insensitive part of it
    (``h100`` finds ``NVIDIA H100 80GB HBM3``); without it, the model must have exactly one entry.

    Raises:
        ModelNotFoundError: no entry, or several that ``gpu`` does not tell apart.
    """
    candidates = [entry for entry in data.entries if model in entry.models]
    if not candidates:
        priced = sorted({name for entry in data.entries for name in entry.models})
        raise ModelNotFoundError(
            f"model: got {model!r}, which has no pricing coefficients; allowed: {', '.join(priced) or 'none'} "
            "(calibrate others with `ditproof price calibrate` and pass --coefficients FILE)"
        )
    gpus = [entry.gpu for entry in candidates]
    if gpu is not None:
        exact = [entry for entry in candidates if entry.gpu == gpu]
        matches = exact or [entry for entry in candidates if gpu.lower() in entry.gpu.lower()]
        if len(matches) == 1:
            return matches[0]
        what = "matches several GPUs" if matches else "matches no GPU"
        raise ModelNotFoundError(f"gpu: got {gpu!r}, which {what} for model {model}; allowed: {', '.join(gpus)}")
    if len(candidates) > 1:
        raise ModelNotFoundError(f"gpu: model {model} is priced on several GPUs; choose one of: {', '.join(gpus)}")
    return candidates[0]
