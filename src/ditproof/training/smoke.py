"""Tiny settings of both stages: the whole training path on a CPU in seconds (tests, ``--smoke``)."""

from __future__ import annotations

from typing import Any

SMOKE_VAE: dict[str, Any] = {
    "size": "smoke",
    "steps": 3,
    "batch_size": 2,
    "warmup_steps": 1,
    "stats_clips": 4,
    "eval_clips": 2,
    "log_every": 1,
}
SMOKE_EXPERTS: dict[str, Any] = {
    "size": "smoke",
    "steps": 4,
    "batch_size": 4,
    "dataset_clips": 8,
    "encode_batch": 4,
    "warmup_steps": 2,
    "log_every": 2,
}
