"""Calibration: honest and cheating distances per nonce, and the policy the targets ask for.

Every runtime computes the same nonces; each is compared with a reference run nonce by nonce
(L2 distance of the float16 vectors). Honest runtimes (another batch size, attention kernel or
device, same dtype) show how far an honest node can be; cross-dtype runs are reported apart;
cheats (:mod:`ditproof.poc.deviations`) show what the threshold must catch. Every per-nonce
distance is kept in the result, and the policy is derived from them and the target error rates
by :func:`ditproof.poc.derive.derive_policy` (honest rounds called fraud at most
``honest_round_rate``; a node cheating on ``cheat_fraction`` of its nonces caught in
``detection`` of rounds), so it can be derived again for other targets without recomputing
(``ditproof poc calibrate --from FILE``).

A run covers nonces ``first_nonce … first_nonce + nonces - 1``; runs of one calibration over
contiguous ranges (parts, e.g. one per GPU call) are joined by
:func:`ditproof.poc.calibration_data.merge_calibrations`, which gives what one run over the whole
range gives: the same per-nonce distances, summaries and policy (both assemble the result with
:func:`ditproof.poc.calibration_data.assemble`, from the distances as the file keeps them).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ditproof.errors import InvalidInputError
from ditproof.generation.attention import attention_for_run
from ditproof.models.registry import LoadedModel
from ditproof.poc.calibration_data import RuntimeKind, assemble, kept_distances, l2_distances
from ditproof.poc.compute import PocModel, compute_vectors, encode_vector
from ditproof.poc.deviations import fewer_layers, fp8_transform, high_noise_only, perturb_transform, swapped_weights
from ditproof.protocol.poc import (
    MAX_NONCE,
    PocCalibration,
    PocParams,
    PolicyTargets,
)

ContextFactory = Callable[[], AbstractContextManager[object]]


@dataclass
class RuntimeSpec:
    """One way to compute the nonces: a loaded model, a batch size, an attention kernel."""

    name: str
    kind: RuntimeKind
    model: LoadedModel
    batch_size: int
    attention_backend: str = "sdpa"
    poc_model: Callable[[PocModel], PocModel] | None = None
    context: Callable[[PocModel], AbstractContextManager[object]] | None = None


@dataclass
class CalibrationSettings:
    """What a calibration run measures."""

    block_hash: str = "c0ffee" * 10 + "abcd"
    public_key: str = "calibration-node"
    nonces: int = 2048
    first_nonce: int = 0
    targets: PolicyTargets = field(default_factory=PolicyTargets)
    perturb_fraction: float = 0.01
    skip_layers: int = 1
    extra_cheats: list[RuntimeSpec] = field(default_factory=list)


def _attention(model: LoadedModel, backend: str) -> AbstractContextManager[None]:
    """Both experts with ``backend`` for the block, as a generation selects it."""
    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    return attention_for_run(experts, backend, next(model.pipeline.transformer.parameters()).device)


def torch_threads(count: int) -> Callable[[PocModel], AbstractContextManager[object]]:
    """A runtime context that computes with ``count`` torch CPU threads (another honest CPU runtime)."""

    @contextmanager
    def threads(_: PocModel) -> Iterator[None]:
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    return threads


def run_spec(spec: RuntimeSpec, params: PocParams, settings: CalibrationSettings, nonces: list[int]) -> np.ndarray:
    """The vectors of ``nonces`` under one runtime."""
    base = PocModel.from_loaded(spec.model)
    poc_model = spec.poc_model(base) if spec.poc_model else base
    context = spec.context(base) if spec.context else nullcontext()
    with _attention(spec.model, spec.attention_backend), context:
        return compute_vectors(poc_model, params, settings.block_hash, settings.public_key, nonces, spec.batch_size)


def standard_cheats(reference: RuntimeSpec, settings: CalibrationSettings) -> list[RuntimeSpec]:
    """One expert only, perturbed weights, FP8 weights, fewer layers — on the reference runtime."""

    def like(name: str, **kwargs: object) -> RuntimeSpec:
        return RuntimeSpec(
            name,
            "cheat",
            reference.model,
            reference.batch_size,
            reference.attention_backend,
            **kwargs,  # type: ignore[arg-type]
        )

    fraction = settings.perturb_fraction
    return [
        like("one expert (high-noise only)", poc_model=high_noise_only),
        like(
            f"{fraction:.0%} of weights perturbed",
            context=lambda pm: swapped_weights(pm, perturb_transform(fraction)),
        ),
        like("FP8 weights (e4m3 round trip)", context=lambda pm: swapped_weights(pm, fp8_transform())),
        like(
            f"last {settings.skip_layers} layer(s) skipped", context=lambda pm: fewer_layers(pm, settings.skip_layers)
        ),
    ]


def calibrate(
    reference: RuntimeSpec,
    others: list[RuntimeSpec],
    params: PocParams,
    settings: CalibrationSettings,
    on_run: Callable[[str, float], None] | None = None,
) -> PocCalibration:
    """Runs the reference, every other runtime and the standard cheats; proposes a policy.

    Args:
        reference: the runtime the others are compared with (its model gets the cheats).
        others: honest and cross-dtype runtimes.
        params: PoC parameters.
        settings: nonces, policy base and proposal rule.
        on_run: called after each run with (name, seconds).
    """
    import time

    first, count = settings.first_nonce, settings.nonces
    if first < 0 or count < 1 or first + count > MAX_NONCE + 1:
        raise InvalidInputError(
            f"settings.first_nonce/nonces: got {first}/{count}; allowed: first_nonce >= 0, nonces >= 1, "
            f"first_nonce + nonces <= {MAX_NONCE + 1}"
        )
    nonces = list(range(first, first + count))

    def timed(spec: RuntimeSpec) -> np.ndarray:
        started = time.perf_counter()
        vectors = run_spec(spec, params, settings, nonces)
        if on_run is not None:
            on_run(spec.name, time.perf_counter() - started)
        return vectors

    ref = timed(reference)
    all_distances: dict[str, np.ndarray] = {}
    kinds: dict[str, RuntimeKind] = {}
    warnings: list[str] = []
    for spec in [*others, *standard_cheats(reference, settings), *settings.extra_cheats]:
        try:
            vectors = timed(spec)
        except (RuntimeError, ValueError) as exc:
            # A kernel or dtype this machine lacks: measure the rest, and say what was skipped.
            warnings.append(f"{spec.name}: skipped ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        all_distances[spec.name] = kept_distances(l2_distances(vectors, ref))
        kinds[spec.name] = spec.kind

    device = str(PocModel.from_loaded(reference.model).device)
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return assemble(
        PocCalibration.model_construct(
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            device=device,
            torch_version=torch.__version__,
            model=reference.model.preset,
            model_revision=reference.model.revision,
            params=params,
            block_hash=settings.block_hash,
            public_key=settings.public_key,
        ),
        reference.name,
        [encode_vector(vector) for vector in ref],
        first,
        all_distances,
        kinds,
        warnings,
        settings.targets,
    )
