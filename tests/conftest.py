"""Shared fixtures: the tiny random model and a small request, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ditproof.generation.runtime import runtime_class
from ditproof.models.registry import LoadedModel, PromptCache, load_model
from ditproof.protocol.options import LoadOptions, RuntimeOptions
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import GenerationRequest

ENTROPY = "5e" * 32

PREFLIGHT_CHECKS = ["integrity", "seed", "noise", "record", "allowed_class", "runtime_class"]
"""The checks of every validation mode before anything is regenerated, in order, when all pass."""


@pytest.fixture(scope="session")
def cpu_options() -> RuntimeOptions:
    return RuntimeOptions()


@pytest.fixture(scope="session")
def tiny_model(cpu_options: RuntimeOptions) -> LoadedModel:
    return load_model("wan-tiny-random", cpu_options.load)


@pytest.fixture(scope="session")
def omni_model(tiny_model: LoadedModel) -> LoadedModel:
    """The tiny model as loaded for ``engine="vllm-omni"``: vLLM-Omni runs the loop, the pipeline
    only serves the revision and the scheduler, so it is the tiny model's own."""
    return replace(tiny_model, load=LoadOptions(engine="vllm-omni"), prompts=PromptCache())


@pytest.fixture()
def small_request() -> GenerationRequest:
    return GenerationRequest(prompt="a red circle moves left", width=64, height=48, num_frames=9, num_inference_steps=6)


def declaring(record: InferenceRecord, options: dict[str, Any] | None = None, **runtime: Any) -> InferenceRecord:
    """The record with other options and fingerprint fields and its runtime class recomputed: a
    record that declares another class consistently (as a careful forger would)."""
    fingerprint = record.runtime.model_copy(update=runtime)
    return record.model_copy(
        update={
            "options": record.options.model_copy(update=options or {}),
            "runtime": fingerprint,
            "runtime_class": runtime_class(fingerprint),
        }
    )


GPU_CLASS = {
    "device_type": "cuda",
    "compute_capability": "9.0",
    "sm_count": 132,
    "cudnn_version": 91900,
    "cublas": "13.1.0.3",
    "triton": "3.6.0",
    "cpu_threads": None,
}
"""Fingerprint fields of an H100-class GPU run (with ``{"device": "cuda"}`` options)."""


@pytest.fixture()
def declare() -> Callable[..., InferenceRecord]:
    """:func:`declaring`, for tests that forge a record of another class."""
    return declaring


@pytest.fixture()
def gpu_class() -> dict[str, Any]:
    """:data:`GPU_CLASS`."""
    return dict(GPU_CLASS)


# The server tests' clients: each server test module defines its own module-scoped ``node`` (a
# test_server_support.NodeProcess: `ditproof serve` on loopback); these connect to it.
@pytest.fixture(scope="module")
def client(node: Any) -> Any:
    """The ditproof client of the module's node."""
    from ditproof.client import Client
    from test_server_support import TOKEN

    with Client(node.url, TOKEN, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def http(node: Any) -> Any:
    """A raw HTTP client of the module's node, with its token."""
    import httpx

    with httpx.Client(base_url=node.url, headers=node.headers, timeout=120) as h:
        yield h


def processor_backends(model: LoadedModel) -> set[object]:
    """Every attention processor's diffusers backend in both experts (``{None}``: as loaded)."""
    found = set()
    for expert in (model.pipeline.transformer, model.pipeline.transformer_2):
        for module in expert.modules():
            processor = getattr(module, "processor", None)
            if hasattr(processor, "_attention_backend"):
                found.add(processor._attention_backend)
    return found


@pytest.fixture()
def attention_backends() -> Callable[[LoadedModel], set[object]]:
    """:func:`processor_backends`: after a run, a model's attention is as loaded again."""
    return processor_backends
