"""Helpers shared by the training stages: seeds, learning-rate schedule, autocast, logging."""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
from collections.abc import Callable, Iterator

import torch

Log = Callable[[str], None]


def print_log(message: str) -> None:
    """Default log: one line on stdout, flushed (training runs are watched live)."""
    print(message, flush=True)
    sys.stdout.flush()


def derived_seed(seed: int, purpose: str) -> int:
    """A 31-bit seed for one purpose of a run: ``sha256("ditproof-shapes/{seed}/{purpose}")[:4]``.

    Each purpose ("vae-data", "experts-data", "sigmas", ...) gets its own generator, so that
    changing one part of a run does not shift the random numbers of another.
    """
    digest = hashlib.sha256(f"ditproof-shapes/{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (training draws only; nothing a record depends on)."""
    return torch.Generator(device=device).manual_seed(seed)


def learning_rate(step: int, total: int, base: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to ``floor · base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bfloat16 autocast on CUDA (parameters stay float32); nothing on the CPU."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def synchronize(device: torch.device) -> None:
    """Waits for the device (so wall-clock times are real)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepPlan:
    """How many optimizer steps a stage runs: a fixed count, or as many as fit a time budget.

    With ``steps=None`` the count is set once, after ``calibrate_at`` steps, from the time of the
    steps since ``warm_from`` (the first steps pay for kernel selection): ``total = done +
    (budget - elapsed) / seconds_per_step``. The learning-rate schedule reads :attr:`total`;
    calibration ends inside the warm-up, so no scheduled value changes afterwards. The report
    records the total, and ``steps=total`` repeats the same schedule.
    """

    def __init__(self, steps: int | None, budget_s: float, calibrate_at: int = 40, warm_from: int = 10):
        self.fixed = steps is not None
        self.total = steps if steps is not None else 10**9
        self.budget_s = budget_s
        self.calibrate_at = calibrate_at
        self.warm_from = warm_from
        self._warm_time: float | None = None

    def observe(self, done: int, elapsed: float) -> None:
        """Called after each step with the steps done and the training time so far."""
        if self.fixed:
            return
        if done == self.warm_from:
            self._warm_time = elapsed
        if done == self.calibrate_at and self._warm_time is not None:
            per_step = (elapsed - self._warm_time) / (self.calibrate_at - self.warm_from)
            self.total = done + max(int((self.budget_s - elapsed) / per_step), 0)

    def over_time(self, elapsed: float) -> bool:
        """Whether training must stop now: past the budget (fixed count) or well past it (planned)."""
        return elapsed > (self.budget_s if self.fixed else self.budget_s * 1.1 + 10)
