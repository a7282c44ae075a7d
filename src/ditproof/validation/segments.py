"""The executor's checkpoints as a trajectory: files checked against the record, segments re-run.

A record lists its checkpoints (``initial``, ``pre_switch``, ``final`` and ``step_NNN``), each a
file holding the latent after ``step`` denoising steps and the UniPC solver state then. Sorted by
step, consecutive checkpoints delimit *segments*; a segment ``k → m`` is re-run by resuming the
one generation path (:func:`ditproof.generation.generate.generate`) from the executor's
checkpoint ``k`` and stopping after step ``m``, and its end state (latent and solver history) is
compared with the executor's checkpoint ``m``. The first segment starts from the noise, which the
validator draws itself from the seed; the others from the executor's latent and solver history,
with the solver's bookkeeping derived from the schedule.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from ditproof.errors import IntegrityError, InvalidInputError
from ditproof.generation.generate import generate
from ditproof.generation.result import FrameSink, GenerationResult
from ditproof.generation.solver_state import ResumePoint, SolverState, derived_resume_point, schedule_state
from ditproof.hashing import sha256_bytes, sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RunOptions
from ditproof.protocol.record import CheckpointRef, InferenceRecord
from ditproof.validation.trajectory import relative_l2

_STEP_NAME = re.compile(r"^step_(\d{3,})$")


class CheckpointMissingError(InvalidInputError):
    """Checkpoint files the record lists are not in the artifacts folder given to the validator."""


@dataclass(frozen=True)
class Checkpoint:
    """One verified checkpoint: its record entry and its content."""

    ref: CheckpointRef
    point: ResumePoint

    @property
    def name(self) -> str:
        """The checkpoint's name in the record."""
        return self.ref.name

    @property
    def step(self) -> int:
        """Denoising steps done before it."""
        return self.ref.step


NOISE_ANCHOR_SHARE = 0.5
"""The largest norm, relative to the seed's noise, of the clean latent a checkpoint at noise level σ
may imply, as a share of what another noise implies there (``σ√2 / (1 − σ)``): see
:func:`noise_anchor_bound`. Honest runs of the shipped model: 0.93 to 3.56 at guidance 4 (an H100,
Stage 1 prompts), growing with the guidance scale (up to 29 at 50, the largest a request may ask)."""
NOISE_ANCHOR_MIN_SIGMA = 0.98
"""Checkpoints below this noise level are not held to the anchor: there the bound
(:func:`noise_anchor_bound`, 34.6 at σ = 0.98) would come near what an honest run at a high
guidance scale implies. At 40 steps of the shipped schedule: the checkpoints up to step 8."""


def noise_anchor_bound(sigma: float) -> float:
    """The largest implied clean-latent norm (over the noise's) allowed at noise level ``sigma``:
    :data:`NOISE_ANCHOR_SHARE` of the ``σ√2 / (1 − σ)`` that another noise implies."""
    return NOISE_ANCHOR_SHARE * sigma * math.sqrt(2.0) / (1.0 - sigma)


def noise_anchor_ratios(
    noise: torch.Tensor, checkpoints: list[Checkpoint], sigmas: list[float]
) -> list[tuple[Checkpoint, float, float]]:
    """(checkpoint, its noise level σ, the norm of the clean latent it implies over the noise's) for
    each of ``checkpoints`` held to the anchor (noise level from :data:`NOISE_ANCHOR_MIN_SIGMA`,
    below 1); see :func:`noise_anchor_problems`. NaN where the latent is not finite."""
    base = noise.double()
    scale = float(base.norm())
    found = []
    for checkpoint in checkpoints:
        sigma = sigmas[checkpoint.step]
        if not NOISE_ANCHOR_MIN_SIGMA <= sigma < 1.0 or scale == 0.0:
            continue
        ratio = float((checkpoint.point.latent.double() - sigma * base).norm()) / ((1.0 - sigma) * scale)
        found.append((checkpoint, sigma, ratio))
    return found


def noise_anchor_problems(checkpoints: list[Checkpoint], sigmas: list[float]) -> list[str]:
    """Checkpoints that do not lie on a trajectory from the seed's noise (``checkpoints[0]``, the
    verified ``initial``); ``sigmas[s]``: the noise level after ``s`` steps.

    A latent at noise level σ is the noise times σ plus (1 − σ) times the clean latent the
    trajectory heads for, so ``‖latent − σ·noise‖ / ((1 − σ)·‖noise‖)`` is that clean latent's norm
    relative to the noise: 1 to 4 for an honest run at guidance 4 (early predictions under
    classifier-free guidance overshoot the content's scale, more so at a higher guidance scale).
    A trajectory from another noise puts about ``σ√2 / (1 − σ)`` there (200 at σ = 0.993), so a
    checkpoint whose norm stays within :func:`noise_anchor_bound` (half that) pins the trajectory to
    the seed's noise, at no model cost: a record cannot claim the seed while committing another seed's
    trajectory, whichever segments a spot check draws. Checked at noise levels from
    :data:`NOISE_ANCHOR_MIN_SIGMA` up."""
    problems = []
    for checkpoint, sigma, ratio in noise_anchor_ratios(checkpoints[0].point.latent, checkpoints[1:], sigmas):
        bound = noise_anchor_bound(sigma)
        if not ratio <= bound:  # NaN fails too
            problems.append(
                f"{checkpoint.name} (step {checkpoint.step}, noise level {sigma:.3f}): its implied clean latent is "
                f"{ratio:.3g} times the noise's norm (allowed: at most {bound:.3g}, half what another noise "
                "would imply there)"
            )
    return problems


@dataclass(frozen=True)
class Segment:
    """The trajectory from checkpoint ``start`` to checkpoint ``end`` (``end.step > start.step``)."""

    start: Checkpoint
    end: Checkpoint

    @property
    def steps(self) -> int:
        """Denoising steps a re-run costs."""
        return self.end.step - self.start.step

    @property
    def label(self) -> str:
        """``"step_002 (2) → step_004 (4)"``."""
        return f"{self.start.name} ({self.start.step}) → {self.end.name} ({self.end.step})"


def structure_problems(record: InferenceRecord) -> list[str]:
    """What is wrong with the record's list of checkpoints, from the record alone.

    Names must be unique and one of ``initial`` (step 0), ``final`` (the request's step count),
    ``pre_switch`` or ``step_NNN`` (step NNN); steps within the request's; shapes the request's
    latent shape; files relative paths inside the artifacts folder.
    """
    steps = record.request.num_inference_steps
    shape = record.request.latent_shape()
    names = [c.name for c in record.checkpoints]
    problems = []
    for required, step in (("initial", 0), ("final", steps)):
        if required not in names:
            problems.append(f"no {required!r} checkpoint (the {'noise' if step == 0 else 'last latent'})")
    if len(set(names)) != len(names):
        problems.append(f"checkpoint names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    for ref in record.checkpoints:
        match = _STEP_NAME.match(ref.name)
        expected = {"initial": 0, "final": steps}.get(ref.name, int(match.group(1)) if match else None)
        if ref.name != "pre_switch" and expected is None:
            problems.append(f"checkpoint {ref.name!r}: allowed names: initial, pre_switch, final, step_NNN")
        elif expected is not None and ref.step != expected:
            problems.append(f"checkpoint {ref.name!r}: step {ref.step}; allowed: {expected}")
        elif not 0 <= ref.step <= steps:
            problems.append(f"checkpoint {ref.name!r}: step {ref.step}; allowed: 0 to {steps}")
        if tuple(ref.shape) != shape:
            problems.append(f"checkpoint {ref.name!r}: shape {tuple(ref.shape)}; allowed: {shape} (the request's)")
        path = PurePosixPath(ref.file)
        if path.is_absolute() or ".." in path.parts or "\\" in ref.file or not ref.file:
            problems.append(f"checkpoint {ref.name!r}: file {ref.file!r}; allowed: a relative path without '..'")
    return problems


def trajectory_steps(record: InferenceRecord) -> list[int]:
    """The distinct checkpoint steps of the record, ascending (segments lie between them)."""
    return sorted({c.step for c in record.checkpoints})


def missing_checkpoint_files(record: InferenceRecord, artifacts_dir: Path | None) -> list[str]:
    """The record's checkpoint files (as it names them) that are not in ``artifacts_dir`` (all of
    them without a folder)."""
    return [c.file for c in record.checkpoints if artifacts_dir is None or not (artifacts_dir / c.file).is_file()]


def load_checkpoints(record: InferenceRecord, artifacts_dir: Path) -> list[Checkpoint]:
    """Every checkpoint file of the record, checked against it (call after :func:`structure_problems`).

    Checks per file: its sha256 is the record's, it holds a latent and a solver state, the latent's
    tensor hash is the record's and its solver step the checkpoint's step; ``initial`` is the noise
    of the record's seed (its tensor hash equals ``record.noise.sha256``).

    Raises:
        CheckpointMissingError: files absent from ``artifacts_dir`` (all of them named).
        IntegrityError: a file that differs from what the record states.
    """
    missing = missing_checkpoint_files(record, artifacts_dir)
    if missing:
        raise CheckpointMissingError(
            f"checkpoint files: {len(missing)} of {len(record.checkpoints)} missing in {artifacts_dir}: "
            f"{', '.join(missing)}; allowed: the executor's artifacts folder (the one holding latents/), "
            "given with --artifacts"
        )
    loaded = []
    for ref in record.checkpoints:
        path = artifacts_dir / ref.file
        digest = sha256_bytes(path.read_bytes())
        if digest != ref.sha256:
            raise IntegrityError(
                f"checkpoint {ref.name} ({ref.file}): file sha256 {digest}; the record says {ref.sha256}"
            )
        try:
            point = ResumePoint.load(path)
        except InvalidInputError as exc:
            raise IntegrityError(f"checkpoint {ref.name} ({ref.file}): not a resumable checkpoint ({exc})") from None
        latent_hash = sha256_tensor(point.latent)
        if point.latent.dtype != torch.float32 or latent_hash != ref.tensor_sha256:
            raise IntegrityError(
                f"checkpoint {ref.name}: latent {point.latent.dtype} with tensor sha256 {latent_hash}; "
                f"the record says float32 with {ref.tensor_sha256}"
            )
        if point.step != ref.step:
            raise IntegrityError(
                f"checkpoint {ref.name}: its solver state is at step {point.step}; the record says {ref.step}"
            )
        if ref.name == "initial" and ref.tensor_sha256 != record.noise.sha256:
            raise IntegrityError(
                f"checkpoint initial: tensor sha256 {ref.tensor_sha256} is not the noise of the record's seed "
                f"({record.noise.sha256})"
            )
        loaded.append(Checkpoint(ref, point))
    return loaded


def trajectory_segments(checkpoints: list[Checkpoint]) -> list[Segment]:
    """The segments between consecutive distinct checkpoint steps.

    Raises:
        IntegrityError: two checkpoints at one step with different latents.
    """
    by_step: dict[int, Checkpoint] = {}
    for checkpoint in checkpoints:
        other = by_step.setdefault(checkpoint.step, checkpoint)
        if other.ref.tensor_sha256 != checkpoint.ref.tensor_sha256:
            raise IntegrityError(
                f"checkpoints {other.name} and {checkpoint.name} are both at step {checkpoint.step} "
                "but hold different latents"
            )
    points = [by_step[step] for step in sorted(by_step)]
    return [Segment(a, b) for a, b in itertools.pairwise(points)]


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


def solver_distance(executor: SolverState, rerun: SolverState) -> tuple[bool, float | None, str]:
    """How far the executor's solver state is from the re-run's: (bitwise equal, worst relative L2
    over its history tensors or None when its structure differs, a note)."""
    for name in ("step_index", "lower_order_nums", "this_order", "timesteps"):
        if getattr(executor, name) != getattr(rerun, name):
            return False, None, f"solver {name} {getattr(executor, name)}; re-run {getattr(rerun, name)}"
    pairs = [*zip(executor.model_outputs, rerun.model_outputs, strict=False), (executor.last_sample, rerun.last_sample)]
    if len(executor.model_outputs) != len(rerun.model_outputs) or any((a is None) != (b is None) for a, b in pairs):
        return False, None, "solver history of another structure"
    if all(_equal(a, b) for a, b in pairs):
        return True, 0.0, "solver state equal"
    distances = [relative_l2(a, b) for a, b in pairs if a is not None and b is not None]
    if any(d is None for d in distances):
        return False, None, "solver history not measurable (shape or non-finite values)"
    worst = max((d for d in distances if d is not None), default=0.0)
    return False, worst, f"solver history relative L2 {worst:.3g}"


@dataclass
class SegmentRun:
    """A re-run segment's measurements and the generation result (frames when it reached the end)."""

    exact: bool
    latent_rel_l2: float | None
    solver_rel_l2: float | None
    note: str
    result: GenerationResult | None

    @property
    def score(self) -> float | None:
        """The segment's score: the larger of the latent's and the solver history's distances."""
        if self.latent_rel_l2 is None or self.solver_rel_l2 is None:
            return None
        return max(self.latent_rel_l2, self.solver_rel_l2)


def rerun_segment(
    record: InferenceRecord,
    model: LoadedModel,
    options: RunOptions,
    segment: Segment,
    on_frames: FrameSink | None = None,
) -> SegmentRun:
    """Re-runs ``segment`` from the executor's start checkpoint (from the seed's noise at step 0)
    and measures its end state against the executor's end checkpoint.

    The solver's counters, timesteps and filled history slots at the start are derived from the
    request's schedule (:func:`ditproof.generation.solver_state.schedule_state`), never read from the
    file; a file whose bookkeeping disagrees cannot be resumed (the segment fails). The history
    tensors come from the file: the end state's comparison checks them, as it checks the latent.

    A segment that ends at the last step also decodes the frames (the one generation path does),
    handing them to ``on_frames`` as they are decoded (:func:`~ditproof.generation.generate.generate`).
    A start checkpoint the generation path refuses (a solver state of another order) makes the
    segment unmeasurable, not an exception: the file is the executor's.
    """
    steps = record.request.num_inference_steps
    resume = None
    try:
        if segment.start.step > 0:
            # The solver's bookkeeping is the schedule's; only its history tensors come from the file.
            derived = schedule_state(
                model.pipeline.scheduler.config, record.request.flow_shift, steps, segment.start.step
            )
            start = segment.start.point
            resume = derived_resume_point(derived, start.latent, start.solver)
        result = generate(
            record.request, record.seed, model, options, resume=resume, stop_after=segment.end.step, on_frames=on_frames
        )
    except InvalidInputError as exc:
        return SegmentRun(False, None, None, f"cannot resume from {segment.start.name}: {exc}", None)
    name = "final" if segment.end.step == steps else f"step_{segment.end.step:03d}"
    latent = result.capture.latents[name][1]
    expected = segment.end.point
    solver_exact, solver_rel, solver_note = solver_distance(expected.solver, result.capture.solver[name])
    if sha256_tensor(latent) == segment.end.ref.tensor_sha256 and solver_exact:
        return SegmentRun(True, 0.0, 0.0, "end state equal bit for bit", result)
    latent_rel = relative_l2(expected.latent, latent)
    latent_note = "latent not measurable" if latent_rel is None else f"latent relative L2 {latent_rel:.3g}"
    return SegmentRun(False, latent_rel, solver_rel, f"{latent_note}; {solver_note}", result)
