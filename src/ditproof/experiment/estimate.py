"""GPU-hours and storage of a plan, from per-configuration times.

``GPU-hours = Σ over jobs of seconds per video × GPUs per job / 3600``, grouped by GPU model.
Storage per job: the video (``video_bytes``, measured or assumed) plus the three saved latents
(initial noise, before the expert switch, final), stored as float32:
``3 × 16 × ((F-1)/4+1) × H/8 × W/8 × 4`` bytes (25.2 MB at 832×480×81).

Timings file (TOML)::

    video_bytes = 3_500_000            # optional, per video (default 3.5 MB, the proposal's 35 GB / 10,000)

    [timings.default]                  # any configuration without its own entry
    seconds = 326.9
    gpu_model = "H100"

    [timings.tp4]
    seconds = 91.7
    gpus = 4                           # default: the configuration's tp × cp degree (0 for a
                                       # configuration run on the CPU in a GPU experiment)
    gpu_model = "H100"
"""

from __future__ import annotations

import statistics
import tomllib
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ditproof.errors import InvalidInputError
from ditproof.experiment.config import DATA_DIR
from ditproof.experiment.plan import Job

LATENTS_SAVED = 3
DEFAULT_VIDEO_BYTES = 3_500_000


class Timing(BaseModel):
    """Measured or assumed time of one video under one configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(gt=0)
    gpus: int | None = Field(default=None, ge=1)
    gpu_model: str = "unspecified"


class TimingsFile(BaseModel):
    """A timings file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    video_bytes: int = Field(default=DEFAULT_VIDEO_BYTES, ge=0)
    timings: dict[str, Timing]


class EstimateRow(BaseModel):
    """The cost of one configuration of the plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    configuration: str
    jobs: int
    seconds_per_video: float
    gpus: int
    gpu_model: str
    gpu_hours: float
    storage_bytes: int


class Estimate(BaseModel):
    """The cost of a plan, per configuration and in total."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: list[EstimateRow]
    gpu_hours_by_model: dict[str, float]
    gpu_hours: float
    storage_bytes: int
    video_hours: float


def load_timings(path: str | Path) -> TimingsFile:
    """Reads a timings file, or a shipped one by name (``proposal-timings``).

    Raises:
        InvalidInputError: unreadable file, bad TOML, unknown keys or bad values.
    """
    file = Path(path)
    if not file.exists() and (DATA_DIR / f"{path}.toml").exists():
        file = DATA_DIR / f"{path}.toml"
    try:
        data = tomllib.loads(file.read_text())
        return TimingsFile.model_validate(data)
    except OSError as exc:
        raise InvalidInputError(f"timings: {path} cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"timings {file}: not valid TOML ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(
            f"timings {file}: {where}: {first['msg']} (got {first.get('input')!r}); allowed keys: video_bytes, "
            "timings.NAME.{seconds, gpus, gpu_model}"
        ) from None


def latent_bytes(job: Job) -> int:
    """Bytes of the latents saved per job (float32)."""
    _, channels, frames, height, width = job.request.latent_shape()
    return LATENTS_SAVED * channels * frames * height * width * 4


def estimate(jobs: list[Job], timings: TimingsFile) -> Estimate:
    """GPU-hours and storage of ``jobs``.

    Raises:
        InvalidInputError: when a configuration has no timing and there is no ``default``.
    """
    by_config: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_config[job.configuration].append(job)
    gpu_plan = any(job.options.device == "cuda" for job in jobs)
    rows = []
    for name, group in by_config.items():
        timing = timings.timings.get(name) or timings.timings.get("default")
        if timing is None:
            raise InvalidInputError(
                f"timings: no entry for configuration {name!r} and no 'default'; allowed: an entry per "
                f"configuration ({', '.join(by_config)}) or timings.default"
            )
        # A CPU configuration of a GPU experiment (a CPU validator's class) holds no GPU.
        on_host_cpu = gpu_plan and group[0].options.device == "cpu"
        gpus = timing.gpus or (0 if on_host_cpu else group[0].world_size)
        storage = sum(latent_bytes(job) + timings.video_bytes for job in group)
        rows.append(
            EstimateRow(
                configuration=name,
                jobs=len(group),
                seconds_per_video=timing.seconds,
                gpus=gpus,
                gpu_model=timing.gpu_model,
                gpu_hours=len(group) * timing.seconds * gpus / 3600.0,
                storage_bytes=storage,
            )
        )
    by_model: dict[str, float] = defaultdict(float)
    for row in rows:
        by_model[row.gpu_model] += row.gpu_hours
    video_seconds = sum(job.request.num_frames / job.request.fps for job in jobs)
    return Estimate(
        rows=rows,
        gpu_hours_by_model=dict(by_model),
        gpu_hours=sum(by_model.values()),
        storage_bytes=sum(row.storage_bytes for row in rows),
        video_hours=video_seconds / 3600.0,
    )


def measured_timings(seconds: dict[str, list[float]], gpu_model: str, video_bytes: list[int]) -> TimingsFile:
    """A timings file from measured seconds per video per configuration (the median of each)."""
    return TimingsFile(
        video_bytes=int(statistics.median(video_bytes)) if video_bytes else DEFAULT_VIDEO_BYTES,
        timings={
            name: Timing(seconds=statistics.median(values), gpu_model=gpu_model)
            for name, values in seconds.items()
            if values
        },
    )
