"""Loading a local diffusers-format Wan pipeline folder, offline, after checking it is complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ditproof.errors import ModelNotFoundError
from ditproof.hashing import sha256_file, sha256_json

_MODEL_COMPONENTS = ("text_encoder", "vae", "transformer", "transformer_2")
_REQUIRED = ("tokenizer", "text_encoder", "vae", "scheduler", "transformer", "transformer_2")


def check_pipeline_folder(path: Path) -> dict[str, object]:
    """Checks that ``path`` holds a complete two-expert Wan pipeline in diffusers format.

    Returns:
        The parsed ``model_index.json``.

    Raises:
        ModelNotFoundError: listing every missing or unreadable file, and what goes where.
    """
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model folder {path} does not exist. Expected a diffusers-format Wan2.2 folder "
            "(model_index.json, tokenizer/, text_encoder/, vae/, scheduler/, transformer/, transformer_2/), "
            "for example a local copy of Wan-AI/Wan2.2-T2V-A14B-Diffusers; ditproof never downloads it"
        )
    index_path = path / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise ModelNotFoundError(f"model folder {path}: model_index.json is missing") from None
    except json.JSONDecodeError as exc:
        raise ModelNotFoundError(f"model folder {path}: model_index.json is not valid JSON ({exc})") from None
    missing: list[str] = []
    for component in _REQUIRED:
        entry = index.get(component)
        if not isinstance(entry, list) or entry[0] is None:
            missing.append(f"model_index.json entry {component!r} (a Wan2.2 pipeline has two experts)")
            continue
        folder = path / component
        if component == "tokenizer":
            if not any((folder / name).is_file() for name in ("tokenizer.json", "spiece.model", "tokenizer.model")):
                missing.append(f"{component}/tokenizer.json (or spiece.model)")
        elif component == "scheduler":
            if not (folder / "scheduler_config.json").is_file():
                missing.append("scheduler/scheduler_config.json")
        else:
            missing.extend(_missing_weights(folder, component))
    if index.get("boundary_ratio") is None:
        missing.append("model_index.json key 'boundary_ratio' (0.875 for Wan2.2-T2V-A14B)")
    if missing:
        raise ModelNotFoundError(f"model folder {path} is incomplete; missing:\n  " + "\n  ".join(missing))
    return index


def _missing_weights(folder: Path, component: str) -> list[str]:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append(f"{component}/config.json")
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError) as exc:
            return [*missing, f"{component}/{indexes[0].name} is unreadable ({exc})"]
        missing.extend(f"{component}/{shard}" for shard in sorted(shards) if not (folder / shard).is_file())
    elif not list(folder.glob("*.safetensors")):
        missing.append(f"{component}/*.safetensors (weights; only safetensors files are loaded)")
    return missing


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ditproof" / "file-sha256.json"


def folder_revision(path: Path) -> str:
    """The revision of a model folder: sha256 of canonical JSON {relative path: sha256 of file}.

    Every regular file except hidden ones counts (weights, configs, tokenizer). File hashes are
    cached by (absolute path, size, mtime) so a 60 GB folder is read once.
    """
    from ditproof.hashing import atomic_write_text

    cache_path = _cache_file()
    try:
        cache: dict[str, str] = json.loads(cache_path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    listing: dict[str, str] = {}
    changed = False
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(file)
            changed = True
        listing[relative] = cache[key]
    if changed:
        try:
            atomic_write_text(cache_path, json.dumps(cache, sort_keys=True))
        except OSError:
            pass  # the cache only saves time; the revision is computed either way
    return sha256_json(listing)
