"""Engines: what runs the denoising loop of :func:`ditproof.generation.generate.generate`.

``diffusers`` is ditproof's own loop (``ditproof.generation.generate``). ``vllm-omni`` runs
vLLM-Omni's Wan2.2 pipeline with ditproof's plugin (``plugins/ditproof_vllm_omni``), either in
this process (``vllm_omni.Omni``, when ditproof runs inside the vLLM-Omni environment) or
against a running ``vllm serve DIR --omni`` over HTTP. Whichever runs, the result is the same
:class:`~ditproof.generation.generate.GenerationResult` (frames, noise hash, trajectory), so
the executor, the validator and the experiments stay on the one generation path, and the
engine and its version enter the runtime fingerprint and class.

Choosing the vLLM-Omni target (process-wide, :func:`configure_vllm_omni` or environment):
``DITPROOF_VLLM_OMNI_URL`` (HTTP) or ``DITPROOF_VLLM_OMNI_MODEL`` (in-process folder), and
``DITPROOF_OMNI_ARTIFACTS`` (the folder the server's plugin writes captures into).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ditproof.errors import InvalidInputError

if TYPE_CHECKING:
    from ditproof.generation.result import GenerationResult, StepCallback
    from ditproof.generation.solver_state import ResumePoint
    from ditproof.models.registry import LoadedModel
    from ditproof.protocol.options import RunOptions
    from ditproof.protocol.request import GenerationRequest

ENGINES = ("diffusers", "vllm-omni")

__all__ = ["ENGINES", "configure_vllm_omni", "engine_fingerprint_fields", "run_engine"]


def configure_vllm_omni(url: str | None = None, model_dir: str | None = None, artifacts: str | None = None) -> None:
    """Sets where ``engine="vllm-omni"`` runs (see :class:`ditproof.generation.engines.vllm_omni.runner.OmniTarget`)."""
    from ditproof.generation.engines.vllm_omni.runner import configure

    configure(url=url, model_dir=model_dir, artifacts=artifacts)


def run_engine(
    request: GenerationRequest,
    seed: int,
    model: LoadedModel,
    run: RunOptions,
    on_step: StepCallback | None = None,
    *,
    resume: ResumePoint | None = None,
    stop_after: int | None = None,
) -> GenerationResult:
    """Runs one generation through the engine the model was loaded for (any but diffusers)."""
    from ditproof.protocol.options import RuntimeOptions

    options = RuntimeOptions.of(model.load, run)
    if options.engine == "vllm-omni":
        if resume is not None or stop_after is not None:
            raise InvalidInputError(
                "resume/stop_after: got a segment for engine 'vllm-omni'; allowed: whole runs only "
                "(vLLM-Omni's loop cannot start from a checkpoint; regenerate segments with engine 'diffusers')"
            )
        from ditproof.generation.engines.vllm_omni.runner import generate_via_omni

        return generate_via_omni(request, seed, model, options, on_step)
    raise InvalidInputError(f"engine: got {options.engine!r}; allowed: {', '.join(ENGINES)}")


def engine_fingerprint_fields(model: LoadedModel, run: RunOptions) -> dict[str, Any]:
    """The runtime-fingerprint fields an engine other than diffusers reports about itself."""
    from ditproof.protocol.options import RuntimeOptions

    options = RuntimeOptions.of(model.load, run)
    if options.engine == "vllm-omni":
        from ditproof.generation.engines.vllm_omni.runner import fingerprint_fields

        return fingerprint_fields(model, options)
    raise InvalidInputError(f"engine: got {options.engine!r}; allowed: {', '.join(ENGINES)}")
