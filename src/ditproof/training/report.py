"""Training reports (versioned, written by each stage) and the loss-curve image.

The loss curve is drawn with PIL (a dependency of diffusers, so present wherever training
runs): one panel per loss series, log-scaled, with the step axis and the final value written.
"""

from __future__ import annotations

import io
import json
import math
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ditproof.hashing import atomic_write_bytes, atomic_write_text

REPORT_SCHEMA: Literal["ditproof.shapes-train/1"] = "ditproof.shapes-train/1"


class StageReport(BaseModel):
    """What one training stage did: its configuration, hardware, time, losses and outputs."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["ditproof.shapes-train/1"] = REPORT_SCHEMA
    stage: Literal["vae", "experts"]
    config: dict[str, Any]
    size: dict[str, Any]
    hardware: dict[str, Any]
    started_utc: str
    wall_seconds: float = Field(ge=0)
    train_seconds: float = Field(ge=0)
    steps_done: int = Field(ge=0)
    stopped_early: bool
    parameters: dict[str, int]
    history: list[dict[str, float]]
    final: dict[str, float]
    extra: dict[str, Any] = Field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Writes the report as indented JSON, atomically."""
        atomic_write_text(path, json.dumps(self.model_dump(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> StageReport:
        """Reads a report written by :meth:`save`."""
        return cls.model_validate_json(Path(path).read_text())


def hardware(device: torch.device) -> dict[str, Any]:
    """The machine a stage ran on (GPU name and memory, or the CPU), with library versions."""
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LossHistory:
    """Running means of loss terms, one row per ``every`` steps.

    Values may be tensors on the training device: they are summed there and read back only when a
    row closes, so logging does not make the host wait for the device every step.
    """

    def __init__(self, every: int):
        self.every = every
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, float | torch.Tensor] = {}
        self._count = 0
        self.started = time.perf_counter()

    def add(self, step: int, values: dict[str, float | torch.Tensor]) -> dict[str, float] | None:
        """Adds one step's values; returns the averaged row when one is complete."""
        for key, value in values.items():
            value = value.detach().double() if isinstance(value, torch.Tensor) else value
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._count += 1
        if self._count < self.every:
            return None
        return self.flush(step)

    def flush(self, step: int) -> dict[str, float] | None:
        """Closes the current row (if any steps are pending)."""
        if not self._count:
            return None
        row = {"step": float(step + 1), **{k: float(v) / self._count for k, v in self._sums.items()}}
        row["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        self.rows.append(row)
        self._sums, self._count = {}, 0
        return row

    def final(self, last_rows: int = 5) -> dict[str, float]:
        """Mean of each loss term over the last ``last_rows`` rows."""
        tail = self.rows[-last_rows:]
        keys = [k for k in (tail[0] if tail else {}) if k not in ("step", "elapsed_s")]
        return {k: sum(r[k] for r in tail) / len(tail) for k in keys}


def plot_losses(history: list[dict[str, float]], title: str, width: int = 900, panel_height: int = 220) -> bytes:
    """A PNG of every loss series in ``history`` against the step, one log-scale panel each."""
    from PIL import Image, ImageDraw

    keys = [k for k in (history[0] if history else {}) if k not in ("step", "elapsed_s")]
    height = 30 + panel_height * max(len(keys), 1)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    steps = [r["step"] for r in history]
    for panel, key in enumerate(keys):
        values = [max(r[key], 1e-12) for r in history]
        top = 30 + panel * panel_height
        box = (70, top + 10, width - 20, top + panel_height - 30)
        draw.rectangle(box, outline="#888888")
        logs = [math.log10(v) for v in values]
        low, high = min(logs), max(logs)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        x_max = max(steps[-1], 1.0)

        scale_x = (box[2] - box[0]) / x_max
        scale_y = (box[3] - box[1]) / (high - low)
        points = [(box[0] + scale_x * s, box[3] - scale_y * (v - low)) for s, v in zip(steps, logs, strict=True)]
        draw.line(points, fill=colors[panel % len(colors)], width=2)
        draw.text((5, box[1]), f"{10**high:.3g}", fill="black")
        draw.text((5, box[3] - 10), f"{10**low:.3g}", fill="black")
        draw.text((box[0], box[3] + 4), "step 0", fill="black")
        draw.text((box[2] - 70, box[3] + 4), f"step {int(x_max)}", fill="black")
        draw.text((box[0] + 8, box[1] + 4), f"{key} (log scale), final {values[-1]:.4g}", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_plot(path: Path, history: list[dict[str, float]], title: str) -> None:
    """Writes :func:`plot_losses` to ``path`` atomically."""
    atomic_write_bytes(path, plot_losses(history, title))
