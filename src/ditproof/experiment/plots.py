"""The report's plots: ROC curves on a log FPR axis, scores per configuration, divergence steps.

PNG files written atomically, without a timestamp, so the same analysis gives the same bytes.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ditproof.experiment.calibration import PoolCalibration
from ditproof.experiment.findings import KeyResult
from ditproof.hashing import atomic_write_bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def slug(key: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in key)


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def hardest_pool(result: KeyResult) -> PoolCalibration:
    """The pool where the key separates malign from benign worst (lowest mean AUC over malign classes)."""
    return min(result.pools, key=lambda p: (float(np.mean([c.auc for c in p.classes])) if p.classes else 1.0, p.pool))


def plot_roc(result: KeyResult, grid: list[float], path: Path, fpr_target: float) -> None:
    """ROC curves of every malign class for one score key, against its hardest pool (log FPR axis)."""
    pool = hardest_pool(result)
    fig, ax = _pyplot().subplots(figsize=(5, 4.2))
    points = [i for i, f in enumerate(grid) if f > 0]
    for cls in pool.classes:
        ax.step(
            [grid[i] for i in points],
            [cls.roc_tpr[i] for i in points],
            where="post",
            label=f"{cls.configuration} (AUC {cls.auc:.3f})",
        )
    ax.axvline(fpr_target, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"false positive rate (benign pool {pool.pool}, in sample)")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC of {result.key}")
    ax.set_ylim(-0.01, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_histogram(rows: list[dict[str, Any]], key: str, threshold: float, path: Path) -> None:
    """Score distribution per configuration for one key, with the threshold."""
    by_config: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(key) is not None:
            by_config[f"{row['configuration']} ({row['label']})"].append(float(row[key]))
    fig, ax = _pyplot().subplots(figsize=(6.5, 0.45 * max(len(by_config), 3) + 1.2))
    names = sorted(by_config)
    for index, name in enumerate(names):
        values = by_config[name]
        ax.scatter(values, [index] * len(values), s=12, alpha=0.7, color="tab:red" if "malign" in name else "tab:blue")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel(key)
    ax.set_title(f"{key} per configuration (each dot: one prompt vs its reference)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_divergence(rows: list[dict[str, Any]], path: Path) -> None:
    """First diverging step (from JL fingerprints) per configuration."""
    by_config: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        step = row.get("first_divergence_step")
        by_config[row["configuration"]].append(-1 if step is None else int(step))
    fig, ax = _pyplot().subplots(figsize=(6.5, 0.45 * max(len(by_config), 3) + 1.2))
    names = sorted(by_config)
    for index, name in enumerate(names):
        ax.scatter(by_config[name], [index] * len(by_config[name]), s=12, alpha=0.7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("first step whose fingerprint differs (0: other noise, -1: none differs)")
    ax.set_title("where trajectories diverge")
    _save(fig, path)
