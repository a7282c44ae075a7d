"""The CSV files of a committed report folder: one row per scored pair, one row per job.

``experiment report`` writes them (``write_csv``) beside ``analysis.json`` and ``thresholds.json``;
``analyze --folder`` and ``report --folder`` read them back (``read_scores_csv``,
``read_manifest_csv``) typed as the store's Parquet tables, so a committed folder regenerates
without the store, its videos or its latents. From ``COMPRESS_FROM_ROWS`` rows on a file is written
gzip-compressed (``scores-summary.csv.gz``: a 1,000-prompt run's scores are about 13 MB as text);
:func:`summary_path` finds either form.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import IO, Any

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_bytes, atomic_write_text

SCORES_CSV = "scores-summary.csv"
MANIFEST_CSV = "manifest-summary.csv"
COMPRESS_FROM_ROWS = 2000
"""Summaries of this many rows or more are written as ``NAME.gz``."""

_BOOL_COLUMNS = ("video_exact", "frames_exact", "final_latent_exact", "noise_equal")
_INT_COLUMNS = ("first_divergence_step", "fingerprint_steps", "segments", "segments_exact")
_STR_COLUMNS = (
    "job_id",
    "reference_job_id",
    "prompt_id",
    "configuration",
    "label",
    "device_name",
    "reference_device_name",
    "inputs_sha256",
    "runtime_class",
    "reference_runtime_class",
    "scored_from",
)


def summary_path(folder: Path, name: str) -> Path:
    """A folder's summary ``name``: the plain CSV, or its gzip-compressed form ``name.gz``."""
    plain, packed = folder / name, folder / f"{name}.gz"
    return packed if packed.exists() and not plain.exists() else plain


def _open_text(path: str | Path) -> IO[str]:
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), newline="")
    return open(path, newline="")  # closed by the caller's with


def read_scores_csv(path: str | Path) -> list[dict[str, Any]]:
    """Score rows from a ``scores-summary.csv`` (as ``experiment report`` writes it), typed as in the store.

    Empty cells are None; booleans are ``True``/``False``; identifiers stay strings; every other
    column is a float.

    Raises:
        InvalidInputError: a cell that does not parse as its column's type (naming line and column).
    """
    rows = []
    with _open_text(path) as handle:
        for line, raw in enumerate(csv.DictReader(handle), start=2):
            row: dict[str, Any] = {}
            for column, cell in raw.items():
                if column is None or cell is None:
                    raise InvalidInputError(f"{path}:{line}: the row has more or fewer cells than the header")
                try:
                    row[column] = _cell(column, cell)
                except ValueError as exc:
                    raise InvalidInputError(f"{path}:{line}: column {column}: got {cell!r} ({exc})") from exc
            rows.append(row)
    return rows


def _cell(column: str, cell: str) -> Any:
    if column in _STR_COLUMNS:
        return cell
    if cell == "":
        return None
    if column in _BOOL_COLUMNS:
        if cell not in ("True", "False"):
            raise ValueError("allowed: True, False")
        return cell == "True"
    if column in _INT_COLUMNS:
        return int(cell)
    return float(cell)


def read_manifest_csv(path: Path) -> list[dict[str, Any]]:
    """The report's columns of ``manifest-summary.csv``, typed (empty cells are None)."""
    rows = []
    with _open_text(path) as handle:
        for line, raw in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append(
                    {
                        "prompt_id": raw["prompt_id"],
                        "configuration": raw["configuration"],
                        "status": raw["status"],
                        "reason": raw["reason"] or "",
                        "device_name": raw["device_name"] or None,
                        "total_s": float(raw["total_s"]) if raw["total_s"] else None,
                        "forward_passes": int(raw["forward_passes"]) if raw["forward_passes"] else None,
                    }
                )
            except (KeyError, ValueError) as exc:
                raise InvalidInputError(f"{path}:{line}: {exc}") from exc
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV (every column any row has, in the order first seen, empty where a row lacks it:
    pairs without segment re-runs beside pairs with them; floats with 9 significant digits),
    written atomically."""
    buffer = io.StringIO()
    if rows:
        columns = list(dict.fromkeys(column for row in rows for column in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
    if path.suffix == ".gz":  # mtime 0 and no name: the same rows give the same bytes
        atomic_write_bytes(path, gzip.compress(buffer.getvalue().encode(), compresslevel=9, mtime=0))
    else:
        atomic_write_text(path, buffer.getvalue())


def write_summary(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """Writes a summary as ``name`` or, from ``COMPRESS_FROM_ROWS`` rows on, ``name.gz``, and removes
    the other form (a folder holds one); returns the path written."""
    plain, packed = folder / name, folder / f"{name}.gz"
    path, other = (packed, plain) if len(rows) >= COMPRESS_FROM_ROWS else (plain, packed)
    write_csv(path, rows)
    other.unlink(missing_ok=True)
    return path
