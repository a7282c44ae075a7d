"""Nonce → vector: the Proof-of-Compute forward pass of a two-expert Wan DiT.

For a round (``block_hash``) and a node (``public_key``), nonce ``n`` is computed as follows
(every seed is in :mod:`ditproof.randomness`, section "Proof-of-Compute"):

1. ``s = poc_nonce_seed(block_hash, public_key, n)`` (Gonka PoC v2's per-nonce seed).
2. Expert: ``poc_expert(s)`` — 0 runs ``transformer`` (high-noise), 1 runs ``transformer_2``
   (low-noise). Chosen from the seed, not from the timestep, so both experts are needed.
3. Inputs, drawn on the CPU: a N(0,1) latent of ``params.latent_shape()``, a N(0,1) text input
   of ``(params.text_len, text_dim)`` standing in for the text encoder's output, and a timestep
   uniform in the chosen expert's range (``[boundary, 1000)`` high, ``[0, boundary)`` low), so
   each expert sees the inputs it was trained for.
4. Forward of the expert, with a Householder reflection ``x ← x − 2(v·x)v`` of the hidden state
   after every block ``i`` (``v`` seeded by ``"{block_hash}_layer_{i}_householder"``). In Wan the
   block output is the residual stream, so this reflects hidden state and residual together.
   The hooks live only inside :func:`poc_context`; the served model is untouched outside it.
5. Output vector: ``k_dim`` seeded positions of the velocity prediction (per nonce), in float64
   on the CPU, reflected by ``output_reflections`` seeded Householder vectors (per round),
   normalized to unit length, and rounded to float16.

Nonces are batched per expert; a nonce's vector does not depend on its batch beyond the
rounding of the kernels (measured in docs/poc.md). Experts compiled for static shapes (``compile
= "regional"``) would compile once per sub-batch size, and the split of a batch between the two
experts varies from batch to batch: there each expert's sub-batch is padded with copies of its
first nonce up to a multiple of ``ceil(batch_size / 8)`` (:func:`padded_size`), so a round
compiles at most 8 batch shapes; the copies' outputs are dropped.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ditproof.errors import InvalidInputError
from ditproof.models.registry import LoadedModel
from ditproof.protocol.poc import PocArtifact, PocParams
from ditproof.randomness import (
    cpu_normal,
    poc_expert,
    poc_householder_vector,
    poc_input_seed,
    poc_layer_seed,
    poc_nonce_seed,
    poc_output_pick,
    poc_output_seed,
    poc_timestep,
)

EXPERT_NAMES = ("transformer", "transformer_2")
"""Index 0: the high-noise expert; index 1: the low-noise expert."""


@dataclass(frozen=True)
class PocModel:
    """The two experts as PoC runs them (both may be the same module for a simulated cheat)."""

    # WanTransformer3DModel instances (typed Any: mypy does not follow diffusers).
    experts: tuple[Any, Any]
    device: torch.device
    dtype: torch.dtype
    static_shapes: bool = False
    """The experts are compiled for fixed shapes: sub-batches are padded to few sizes."""

    @classmethod
    def from_loaded(cls, model: LoadedModel) -> PocModel:
        """The experts of a loaded pipeline, on their device and in their dtype."""
        high, low = model.pipeline.transformer, model.pipeline.transformer_2
        first = next(high.parameters())
        return cls((high, low), first.device, high.dtype, static_shapes=model.load.compile != "none")

    @property
    def text_dim(self) -> int:
        """Width of the text input (the text encoder's hidden size)."""
        return int(self.experts[0].config.text_dim)

    @property
    def in_channels(self) -> int:
        """Latent channels the experts take."""
        return int(self.experts[0].config.in_channels)


@dataclass(frozen=True)
class NonceInputs:
    """Everything one nonce's forward pass takes (CPU float32 tensors)."""

    nonce: int
    seed: int
    expert: int
    timestep: float
    latent: torch.Tensor
    text: torch.Tensor
    pick: list[int]


def nonce_inputs(block_hash: str, public_key: str, nonce: int, params: PocParams, text_dim: int) -> NonceInputs:
    """The seeded inputs of one nonce (see the module docstring, steps 1–3)."""
    seed = poc_nonce_seed(block_hash, public_key, nonce)
    expert = poc_expert(seed)
    low, high = (
        (params.boundary_timestep, float(params.num_train_timesteps))
        if expert == 0
        else (0.0, params.boundary_timestep)
    )
    size = params.latent_channels * params.latent_frames * params.latent_height * params.latent_width
    return NonceInputs(
        nonce=nonce,
        seed=seed,
        expert=expert,
        timestep=poc_timestep(seed, low, high),
        latent=cpu_normal(poc_input_seed(seed, "latent"), params.latent_shape()),
        text=cpu_normal(poc_input_seed(seed, "text"), (params.text_len, text_dim)),
        pick=poc_output_pick(seed, size, params.k_dim),
    )


def _reflect(hidden: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    # In float32 whatever the model dtype: the reflection must add no rounding of its own
    # beyond the final cast back.
    values = hidden.float()
    values = values - 2.0 * (values @ vector).unsqueeze(-1) * vector
    return values.to(hidden.dtype)


@contextmanager
def poc_context(model: PocModel, block_hash: str) -> Iterator[None]:
    """Installs the per-block Householder hooks on both experts; removes them on exit.

    Block ``i`` of either expert reflects its output by the unit vector seeded by
    ``"{block_hash}_layer_{i}_householder"`` (float32, on the model's device).
    """
    handles = []
    vectors: dict[int, torch.Tensor] = {}
    try:
        seen: set[int] = set()
        for expert in model.experts:
            if id(expert) in seen:
                continue
            seen.add(id(expert))
            width = int(expert.config.num_attention_heads * expert.config.attention_head_dim)
            for index, block in enumerate(expert.blocks):
                if index not in vectors:
                    vectors[index] = poc_householder_vector(poc_layer_seed(block_hash, index), width).to(model.device)
                vector = vectors[index]

                def hook(
                    module: nn.Module, args: object, output: torch.Tensor, v: torch.Tensor = vector
                ) -> torch.Tensor:
                    return _reflect(output, v)

                handles.append(block.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def output_reflections(block_hash: str, params: PocParams) -> torch.Tensor:
    """``(output_reflections, k_dim)`` unit float64 vectors of the round's output reflections."""
    rows = [
        poc_householder_vector(poc_output_seed(block_hash, j), params.k_dim).to(torch.float64)
        for j in range(params.output_reflections)
    ]
    return torch.stack(rows) if rows else torch.zeros((0, params.k_dim), dtype=torch.float64)


def finish_vectors(picked: torch.Tensor, reflections: torch.Tensor) -> np.ndarray:
    """Step 5 after the pick: reflect (float64), normalize, round to float16. ``(n, k)`` in, out."""
    values = picked.to("cpu", torch.float64)
    for vector in reflections:
        values = values - 2.0 * (values @ vector).unsqueeze(-1) * vector
    values = values / values.norm(dim=-1, keepdim=True)
    return values.numpy().astype("<f2")


def encode_vector(vector: np.ndarray) -> str:
    """Little-endian float16 bytes of ``vector``, standard base64."""
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(raw: bytes, k_dim: int) -> np.ndarray | None:
    """``k_dim`` float16 values from little-endian bytes, as float32; None when the length is wrong."""
    if len(raw) != 2 * k_dim:
        return None
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def check_params(model: PocModel, params: PocParams) -> None:
    """Refuses parameters the model cannot run."""
    if params.latent_channels != model.in_channels:
        raise InvalidInputError(
            f"params.latent_channels: got {params.latent_channels}; allowed: {model.in_channels} (the model's in_channels)"
        )
    size = params.latent_channels * params.latent_frames * params.latent_height * params.latent_width
    if params.k_dim > size:
        raise InvalidInputError(f"params.k_dim: got {params.k_dim}; allowed: at most {size} (the output size)")


PADDED_SHAPES = 8
"""At most this many sub-batch sizes per batch size on experts compiled for static shapes."""


def padded_size(count: int, batch_size: int) -> int:
    """The sub-batch size ``count`` nonces run at on static-shape experts: the next multiple of
    ``ceil(batch_size / PADDED_SHAPES)``, at most ``batch_size``."""
    step = -(-batch_size // PADDED_SHAPES)
    return min(batch_size, -(-count // step) * step)


@torch.inference_mode()
def _forward_group(
    model: PocModel, expert: int, inputs: Sequence[NonceInputs], reflections: torch.Tensor, batch_size: int
) -> np.ndarray:
    """Runs one expert on a batch of nonces that all chose it; returns their float16 vectors.

    On static-shape experts the batch is padded with copies of its first nonce
    (:func:`padded_size`); only the real nonces' vectors are returned.
    """
    count = len(inputs)
    if model.static_shapes:
        inputs = [*inputs, *[inputs[0]] * (padded_size(count, batch_size) - count)]
    module = model.experts[expert]
    latents = torch.stack([item.latent for item in inputs]).to(model.device, model.dtype)
    texts = torch.stack([item.text for item in inputs]).to(model.device, model.dtype)
    timesteps = torch.tensor([item.timestep for item in inputs], dtype=torch.float32).to(model.device)
    output = module(hidden_states=latents, timestep=timesteps, encoder_hidden_states=texts, return_dict=False)[0]
    picks = torch.tensor([item.pick for item in inputs[:count]], dtype=torch.long, device=output.device)
    picked = output[:count].flatten(1).gather(1, picks)
    return finish_vectors(picked, reflections)


BatchCallback = Callable[[int, int], None]
"""Called after each batch with (nonces done, nonces in all)."""


def compute_vectors(
    model: PocModel,
    params: PocParams,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    batch_size: int = 16,
    on_batch: BatchCallback | None = None,
) -> np.ndarray:
    """The float16 vectors ``(len(nonces), k_dim)`` of ``nonces``, in order.

    Nonces are taken ``batch_size`` at a time and each batch is split by expert.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size: got {batch_size}; allowed: at least 1")
    check_params(model, params)
    reflections = output_reflections(block_hash, params)
    result = np.zeros((len(nonces), params.k_dim), dtype="<f2")
    with poc_context(model, block_hash):
        for start in range(0, len(nonces), batch_size):
            chunk = [
                nonce_inputs(block_hash, public_key, nonce, params, model.text_dim)
                for nonce in nonces[start : start + batch_size]
            ]
            for expert in (0, 1):
                rows = [j for j, item in enumerate(chunk) if item.expert == expert]
                if rows:
                    vectors = _forward_group(model, expert, [chunk[j] for j in rows], reflections, batch_size)
                    result[[start + j for j in rows]] = vectors
            if on_batch is not None:
                on_batch(min(start + batch_size, len(nonces)), len(nonces))
    return result


def compute_artifacts(
    model: PocModel,
    params: PocParams,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    batch_size: int = 16,
    on_batch: BatchCallback | None = None,
) -> list[PocArtifact]:
    """:func:`compute_vectors` as wire artifacts ``{nonce, vector_b64}``."""
    vectors = compute_vectors(model, params, block_hash, public_key, nonces, batch_size, on_batch)
    return [
        PocArtifact(nonce=nonce, vector_b64=encode_vector(vector))
        for nonce, vector in zip(nonces, vectors, strict=True)
    ]
