"""Canonical JSON and sha256 helpers.

Canonical JSON: keys sorted, no whitespace, UTF-8, floats in Python's shortest round-trip
form, and only JSON types (dict with str keys, list, tuple, str, int, float, bool, None).
Anything else, and non-finite floats, is refused rather than hashed loosely.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a tensor is hashed: the client and the CLI's help need none
    import torch

_CHUNK = 1 << 20


def _check_hashable(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"canonical JSON refuses the non-finite float {value!r} at {path or '<root>'}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON needs str keys, got {type(key).__name__} at {path}")
            _check_hashable(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_hashable(item, f"{path}[{index}]")
        return
    raise TypeError(f"canonical JSON cannot encode {type(value).__name__} at {path or '<root>'}")


def canonical_json(value: Any) -> bytes:
    """Serializes ``value`` canonically (sorted keys, compact, UTF-8)."""
    _check_hashable(value, "")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Hex sha256 of the canonical JSON of ``value``."""
    return sha256_bytes(canonical_json(value))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a CPU-contiguous copy of ``tensor``."""
    import torch

    cpu = tensor.detach().to("cpu").contiguous()
    if cpu.dtype == torch.bfloat16:
        # numpy has no bfloat16: view the same bytes as int16.
        return cpu.view(torch.int16).numpy().astype("<i2").tobytes()
    array = cpu.numpy()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def sha256_tensor(tensor: torch.Tensor) -> str:
    """Hex sha256 of a tensor's raw little-endian bytes (dtype and shape are recorded apart)."""
    return sha256_bytes(tensor_bytes(tensor))


def sha256_tree(root: Path, files: Iterable[Path]) -> str:
    """Hash of several files under ``root``: sha256 of the canonical JSON of {relative path: sha256}."""
    listing = {str(path.relative_to(root).as_posix()): sha256_file(path) for path in sorted(files)}
    return sha256_json(listing)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())
