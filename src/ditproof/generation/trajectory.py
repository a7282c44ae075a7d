"""Trajectory capture: latent checkpoints and per-step JL fingerprints.

Checkpoint names: ``initial`` (the noise, step 0), ``pre_switch`` (the latent entering the first
low-noise step), ``final`` (after the last step, before the VAE), and ``step_NNN`` for the other
committed steps (the latent after NNN steps): those of the capture options' checkpoint schedule
and the extra ``checkpoint_steps`` (:meth:`CaptureOptions.committed_steps`). Each checkpoint file
holds the latent (key ``latent``) and the solver state at that point (keys ``solver.*``), so a
generation can resume from it (:mod:`ditproof.generation.solver_state`).

The per-step fingerprints are computed on the CPU in float64 (the same values on any machine).
That work runs on one background thread: on a GPU the latent is copied to pinned host memory
without waiting, and the next step's forward passes run while the previous step is projected
(the GPU would otherwise idle for the copy and the projection, tens of milliseconds per step at
480p). The values and their order are those of computing them in line.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from ditproof.generation.solver_state import SolverState
from ditproof.hashing import atomic_write_bytes, sha256_bytes, sha256_tensor
from ditproof.protocol.options import CaptureOptions
from ditproof.protocol.record import CheckpointRef, TrajectoryFingerprints
from ditproof.randomness import JL_DERIVATION, jl_projection, jl_seed


@dataclass
class TrajectoryCapture:
    """Collects checkpoints and fingerprints while the denoising loop runs."""

    seed: int
    options: CaptureOptions
    switch_step: int | None
    # The run's step count: the checkpoint schedule depends on it (None: extra steps only).
    total_steps: int | None = None
    latents: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)
    solver: dict[str, SolverState] = field(default_factory=dict)
    fingerprints: list[list[float]] = field(default_factory=list)
    _projection: torch.Tensor | None = None
    _pending: list[Future[list[float]]] = field(default_factory=list)
    _named: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        # Steps saved as step_NNN: the explicit extras, and the schedule's steps other than the
        # noise, the switch and the end (those are initial, pre_switch and final).
        scheduled: set[int] = set()
        if self.total_steps is not None and self.options.schedule is not None:
            scheduled = set(self.options.schedule.steps(self.total_steps, self.switch_step))
            scheduled -= {0, self.total_steps, self.switch_step}
        self._named = frozenset(scheduled | set(self.options.checkpoint_steps))

    def start(self, step: int, latents: torch.Tensor, scheduler: object, name: str = "initial") -> None:
        """Records the starting latent (the noise, or a resume point) and the solver state."""
        cpu = latents.detach().to("cpu", torch.float32).clone()
        state = SolverState.capture(scheduler)
        self.latents[name] = (step, cpu)
        self.solver[name] = state
        if self.switch_step == step:
            self.latents["pre_switch"] = (step, cpu)
            self.solver["pre_switch"] = state

    def after_step(self, step: int, latents: torch.Tensor, scheduler: object) -> None:
        """Records the latent after denoising step ``step`` (0-based) where asked for."""
        done = step + 1
        cpu: torch.Tensor | None = None

        def on_cpu() -> torch.Tensor:
            nonlocal cpu
            if cpu is None:
                cpu = latents.detach().to("cpu", torch.float32).clone()
            return cpu

        if done == self.switch_step:
            self.latents["pre_switch"] = (done, on_cpu())
            self.solver["pre_switch"] = SolverState.capture(scheduler)
        if done in self._named:
            self.latents[f"step_{done:03d}"] = (done, on_cpu())
            self.solver[f"step_{done:03d}"] = SolverState.capture(scheduler)
        if self.options.jl_dim:
            snapshot, ready = (cpu, None) if cpu is not None else _snapshot(latents)
            self._pending.append(_fingerprint_worker().submit(self._fingerprint, snapshot, ready))

    def _fingerprint(self, latent: torch.Tensor, ready: torch.cuda.Event | None) -> list[float]:
        """One step's JL fingerprint (on the background thread, in step order)."""
        if ready is not None:
            ready.synchronize()
        flat = latent.reshape(-1).to(torch.float64)
        if self._projection is None:
            self._projection = jl_projection(self.seed, flat.numel(), self.options.jl_dim).to(torch.float64)
        return [float(v) for v in (self._projection @ flat).to(torch.float32)]

    def _collect(self) -> None:
        """Waits for the fingerprints in flight and appends them in step order."""
        self.fingerprints.extend(future.result() for future in self._pending)
        self._pending.clear()

    def finish(self, step_count: int, latents: torch.Tensor, scheduler: object, name: str = "final") -> None:
        """Records the last latent (``final``, or the end of a partial run)."""
        self.latents[name] = (step_count, latents.detach().to("cpu", torch.float32).clone())
        self.solver[name] = SolverState.capture(scheduler)
        self._collect()
        self._projection = None

    def fingerprint_record(self) -> TrajectoryFingerprints | None:
        """The fingerprints as stored in the record (None when disabled)."""
        if not self.options.jl_dim:
            return None
        self._collect()
        return TrajectoryFingerprints(
            derivation=JL_DERIVATION,
            dim=self.options.jl_dim,
            projection_seed=jl_seed(self.seed),
            values=self.fingerprints,
        )


@functools.cache
def _fingerprint_worker() -> ThreadPoolExecutor:
    """The one thread that projects every capture's latents (first in, first out)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ditproof-fingerprint")


def _snapshot(latents: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A float32 copy of ``latents`` on the CPU, and on CUDA the event after which it is complete.

    On CUDA the copy goes to pinned memory without blocking: the device keeps working on what is
    queued after it, and the reader waits for the event instead.
    """
    if latents.device.type != "cuda":
        return latents.detach().to(torch.float32).clone(), None
    host = torch.empty(latents.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(latents.detach(), non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def save_checkpoints(capture: TrajectoryCapture, folder: Path, prefix: str) -> list[CheckpointRef]:
    """Writes each checkpoint as ``{folder}/{name}.safetensors`` (latent + solver state) atomically."""
    latents = capture.latents
    refs = []
    order = {"initial": 0, "pre_switch": 1, "final": 3}
    for name, (step, tensor) in sorted(latents.items(), key=lambda kv: (kv[1][0], order.get(kv[0], 2), kv[0])):
        # No safetensors metadata: its key order is not stable, so the file bytes would vary.
        tensors = {"latent": tensor.contiguous()}
        if name in capture.solver:
            tensors.update(capture.solver[name].tensors())
        data = save_safetensors(tensors)
        atomic_write_bytes(folder / f"{name}.safetensors", data)
        refs.append(
            CheckpointRef(
                name=name,
                step=step,
                file=f"{prefix}{name}.safetensors",
                sha256=sha256_bytes(data),
                tensor_sha256=sha256_tensor(tensor),
                shape=tuple(tensor.shape),
            )
        )
    return refs
