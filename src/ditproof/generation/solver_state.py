"""Saving and restoring the UniPC solver's state, so a generation can resume mid-trajectory.

UniPC is a multistep solver: the step after step k depends on the latent *and* on the solver's
history (the last converted model outputs, their timesteps, the last sample for the corrector,
and counters). A checkpoint holds all of it, so a validator can run from the executor's step k
to step m exactly as the executor did (the latent-checkpoint and spot-check modes,
docs/validation.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler
from safetensors.torch import load_file

from ditproof.errors import InvalidInputError

_INTS = ("step_index", "lower_order_nums", "this_order")


@dataclass
class SolverState:
    """The UniPC state after ``step_index`` steps (tensors on the CPU)."""

    step_index: int
    lower_order_nums: int
    this_order: int
    model_outputs: list[torch.Tensor | None]
    timesteps: list[int | None]
    last_sample: torch.Tensor | None

    @classmethod
    def capture(cls, scheduler: UniPCMultistepScheduler) -> SolverState:
        """Copies the state of ``scheduler`` to the CPU."""

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to("cpu").clone()

        return cls(
            step_index=int(scheduler.step_index or 0),
            lower_order_nums=int(scheduler.lower_order_nums),
            this_order=int(getattr(scheduler, "this_order", 0) or 0),
            model_outputs=[cpu(t) for t in scheduler.model_outputs],
            timesteps=[None if t is None else int(t) for t in scheduler.timestep_list],
            last_sample=cpu(scheduler.last_sample),
        )

    def restore(self, scheduler: UniPCMultistepScheduler, device: torch.device) -> None:
        """Puts this state into a scheduler whose timesteps are already set."""
        if len(self.model_outputs) != scheduler.config.solver_order:
            raise InvalidInputError(
                f"solver state: got {len(self.model_outputs)} model outputs; allowed: {scheduler.config.solver_order} "
                "(the solver order of this model's scheduler)"
            )
        timesteps = scheduler.timesteps
        scheduler._step_index = self.step_index
        scheduler.lower_order_nums = self.lower_order_nums
        scheduler.this_order = self.this_order
        scheduler.model_outputs = [None if t is None else t.to(device) for t in self.model_outputs]
        scheduler.timestep_list = [
            None if t is None else torch.tensor(t, device=timesteps.device, dtype=timesteps.dtype)
            for t in self.timesteps
        ]
        scheduler.last_sample = None if self.last_sample is None else self.last_sample.to(device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as named tensors (for a safetensors file beside the latent)."""
        out = {f"solver.{name}": torch.tensor(getattr(self, name), dtype=torch.int64) for name in _INTS}
        for i, (tensor, step) in enumerate(zip(self.model_outputs, self.timesteps, strict=True)):
            if tensor is not None and step is not None:
                out[f"solver.model_output.{i}"] = tensor.contiguous()
                out[f"solver.timestep.{i}"] = torch.tensor(step, dtype=torch.int64)
        if self.last_sample is not None:
            out["solver.last_sample"] = self.last_sample.contiguous()
        out["solver.order"] = torch.tensor(len(self.model_outputs), dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SolverState:
        """Inverse of :meth:`tensors`."""
        try:
            order = int(tensors["solver.order"])
            ints = {name: int(tensors[f"solver.{name}"]) for name in _INTS}
        except KeyError as exc:
            raise InvalidInputError(f"checkpoint: solver state entry {exc} is missing") from None
        outputs = [tensors.get(f"solver.model_output.{i}") for i in range(order)]
        steps = [
            int(tensors[f"solver.timestep.{i}"]) if f"solver.timestep.{i}" in tensors else None for i in range(order)
        ]
        return cls(model_outputs=outputs, timesteps=steps, last_sample=tensors.get("solver.last_sample"), **ints)


@dataclass
class ResumePoint:
    """Where a generation resumes: the latent after ``step`` steps and the solver state then."""

    step: int
    latent: torch.Tensor
    solver: SolverState

    @classmethod
    def load(cls, path: str | Path) -> ResumePoint:
        """Reads a checkpoint file written by the executor (``latents/*.safetensors``)."""
        try:
            tensors = load_file(str(path))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"checkpoint {path}: cannot be read ({exc})") from None
        if "latent" not in tensors:
            raise InvalidInputError(f"checkpoint {path}: no 'latent' tensor")
        solver = SolverState.from_tensors(tensors)
        return cls(step=solver.step_index, latent=tensors["latent"], solver=solver)


def schedule_state(config: object, flow_shift: float, total: int, done: int) -> SolverState:
    """The solver's bookkeeping after ``done`` of ``total`` steps, derived from the schedule alone.

    Counters (step index, lower-order count, order), the timesteps of the history slots and which
    slots are filled follow from the scheduler's configuration, the flow shift and the step count,
    not from the latents: a fresh scheduler is stepped ``done`` times on 1-element stand-ins. A
    validator resumes a segment with these, never with the executor's; only the history tensors
    (the converted model outputs and the last sample), which cannot be derived, come from a file.
    The returned history tensors are the stand-ins (their presence is what counts).
    """
    scheduler = UniPCMultistepScheduler.from_config(config, flow_shift=flow_shift)
    scheduler.set_timesteps(total, device="cpu")
    scheduler.set_begin_index(0)
    stand_in = torch.zeros(1, 1, dtype=torch.float32)
    for t in scheduler.timesteps[:done]:
        stand_in = scheduler.step(torch.zeros_like(stand_in), t, stand_in, return_dict=False)[0]
    return SolverState.capture(scheduler)


def derived_resume_point(derived: SolverState, latent: torch.Tensor, executor: SolverState) -> ResumePoint:
    """A resume point with the derived bookkeeping and the executor's history tensors.

    Raises:
        InvalidInputError: the executor's state disagrees with the schedule (another step index,
            counters, timesteps, or other history slots filled): such a file is not the state of
            an honest run at that step.
    """
    for name in (*_INTS, "timesteps"):
        if getattr(executor, name) != getattr(derived, name):
            raise InvalidInputError(
                f"solver state: {name} {getattr(executor, name)}; the schedule gives {getattr(derived, name)}"
            )
    filled = [t is not None for t in derived.model_outputs]
    if [t is not None for t in executor.model_outputs] != filled or (executor.last_sample is None) != (
        derived.last_sample is None
    ):
        raise InvalidInputError("solver state: its filled history slots are not the ones the schedule gives")
    state = SolverState(
        step_index=derived.step_index,
        lower_order_nums=derived.lower_order_nums,
        this_order=derived.this_order,
        model_outputs=list(executor.model_outputs),
        timesteps=list(derived.timesteps),
        last_sample=executor.last_sample,
    )
    return ResumePoint(step=derived.step_index, latent=latent, solver=state)
