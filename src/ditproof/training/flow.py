"""Flow matching for the two experts, on the same shifted schedule as the UniPC flow solver.

Noising: ``x_t = (1 - σ) x_0 + σ ε``; the expert predicts the velocity ``ε - x_0`` at timestep
``t = 1000 σ`` (UniPC's ``flow_prediction``: ``x_0 = x_t - σ v``). The solver's sigmas are
``shift(u) = s u / (1 + (s - 1) u)`` of a uniform grid ``u``; training draws ``u`` uniformly over
the part of [0, 1] whose shifted sigma falls in the expert's range, so each expert sees its
timesteps with the density the solver visits them at flow shift ``s``:

- high-noise expert (``transformer``): σ ≥ boundary_ratio (t ≥ 875 for 0.875);
- low-noise expert (``transformer_2``): σ < boundary_ratio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditproof.errors import InvalidInputError

NUM_TRAIN_TIMESTEPS = 1000
EXPERTS = ("high", "low")


def shift_sigma(u: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """The flow shift applied to a uniform position ``u`` in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def unshift_sigma(sigma: float, shift: float) -> float:
    """Inverse of :func:`shift_sigma`."""
    return sigma / (shift - (shift - 1) * sigma)


def expert_u_range(expert: str, shift: float, boundary_ratio: float) -> tuple[float, float]:
    """The interval of ``u`` whose shifted sigma belongs to ``expert`` ("high" or "low")."""
    if expert not in EXPERTS:
        raise InvalidInputError(f"expert: got {expert!r}; allowed: {', '.join(EXPERTS)}")
    u_boundary = unshift_sigma(boundary_ratio, shift)
    return (u_boundary, 1.0) if expert == "high" else (0.0, u_boundary)


def sample_sigmas(
    count: int, expert: str, shift: float, boundary_ratio: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``count`` sigmas of ``expert``'s range, drawn as in the module docstring (float32)."""
    low, high = expert_u_range(expert, shift, boundary_ratio)
    u = low + (high - low) * torch.rand(count, generator=generator, device=device)
    sigma = shift_sigma(u, shift)
    assert isinstance(sigma, torch.Tensor)
    return sigma


def flow_matching_loss(
    expert: nn.Module,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between the expert's velocity and ``noise - x0`` at ``sigma``."""
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    pred = expert(
        hidden_states=noisy, timestep=sigma * NUM_TRAIN_TIMESTEPS, encoder_hidden_states=text, return_dict=False
    )[0]
    return F.mse_loss(pred.float(), (noise - x0).float())


def encode_text(text_encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, max_length: int) -> torch.Tensor:
    """Text embeddings as ``WanPipeline.encode_prompt`` makes them, with gradients.

    The pipeline keeps each prompt's first ``len`` positions and fills the rest of
    ``max_length`` with zeros; ``ids`` may be padded to any length up to ``max_length`` (UMT5's
    relative attention with the padding mask gives the real positions the same values).
    """
    hidden = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
    return F.pad(hidden, (0, 0, 0, max_length - hidden.shape[1]))
