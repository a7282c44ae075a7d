"""Shared fixtures: the tiny random model and a small request, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ditproof.models.registry import LoadedModel, load_model
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.request import GenerationRequest

ENTROPY = "5e" * 32


@pytest.fixture(scope="session")
def cpu_options() -> RuntimeOptions:
    return RuntimeOptions()


@pytest.fixture(scope="session")
def tiny_model(cpu_options: RuntimeOptions) -> LoadedModel:
    return load_model("wan-tiny-random", cpu_options)


@pytest.fixture()
def small_request() -> GenerationRequest:
    return GenerationRequest(prompt="a red circle moves left", width=64, height=48, num_frames=9, num_inference_steps=6)
