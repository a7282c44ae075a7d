"""Synthetic coefficient entries shared by the pricing tests (no timing needed; holds no tests)."""

from __future__ import annotations

from ditproof.protocol.pricing import (
    CoefficientEntry,
    CoefficientsFile,
    ExpertFit,
    FitQuality,
    Hardware,
    PassCost,
    TimingMethod,
)


def synthetic_entry(
    models: tuple[str, ...] = ("wan-tiny-random",),
    gpu: str = "Test GPU 1",
    alpha: float = 1e-9,
    beta: float = 1e-5,
    gamma: float = 0.01,
    max_patches: int = 100_000,
) -> CoefficientEntry:
    cost = PassCost(alpha=alpha, beta=beta, gamma=gamma)
    quality = FitQuality(max_rel_error=0.0, rms_rel_error=0.0, worst_patches=1)
    fit = ExpertFit(
        timed_as="transformer",
        cost=cost,
        fit=quality,
        three_term=cost,
        three_term_fit=quality,
        two_term=cost,
        two_term_fit=quality,
    )
    return CoefficientEntry(
        models=models,
        gpu=gpu,
        status="calibrated",
        date="2026-11-26",
        provenance="tests",
        hardware=Hardware(device=gpu, device_type="cpu", torch="test", diffusers="test", cpu_arch="x86_64"),
        method=TimingMethod(
            timer="perf_counter",
            dtype="float32",
            attention_backend="sdpa",
            text_tokens=64,
            layers_timed=2,
            layers_total=2,
            scaling="none",
            warmup=1,
            repeats=3,
        ),
        max_patches=max_patches,
        experts={"transformer": fit, "transformer_2": fit},
    )


def synthetic_file(*entries: CoefficientEntry) -> CoefficientsFile:
    return CoefficientsFile(entries=entries or (synthetic_entry(),))
