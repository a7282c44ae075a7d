"""Every seeded draw of ditproof, with its derivation written next to it.

Nothing in ditproof draws from global RNG state: each draw below builds its own generator from
a seed derived here.

Cross-machine reproducibility of CPU draws. PyTorch's CPU ``randn`` in float32 takes a
vectorized path on CPUs with AVX2 and a scalar one elsewhere, and the two give different
numbers for the same seed (measured here, torch 2.13: ``ATEN_CPU_CAPABILITY=default`` vs
``avx2`` changed the sha256 of a 480p latent). The float64 path is the same on every CPU
capability, so every normal draw below is made in float64 from a CPU generator and then
rounded to float32. CUDA generators are never used for anything a record depends on.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

import torch

from ditproof.errors import InvalidInputError

SEED_DERIVATION = "ditproof-seed-v1"
"""Name of the seed derivation below; recorded in every inference record."""

NOISE_DERIVATION = "torch-cpu-mt19937-randn-float64-to-float32-v1"
"""Name of the initial-noise draw below; recorded in every inference record."""

JL_DERIVATION = "ditproof-jl-v1"
"""Name of the trajectory-fingerprint projection below."""

MAX_SEED = 2**63 - 1
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _seed_from_text(text: str) -> int:
    """A 63-bit seed from the first 8 bytes (big-endian) of sha256(``text``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & MAX_SEED


def check_request_id(request_id: str) -> str:
    """Returns ``request_id`` if it is 1–128 characters of letters, digits and ``. _ : -``."""
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise InvalidInputError(
            f"request_id: got {request_id!r}; allowed: 1 to 128 characters from A-Z a-z 0-9 . _ : -"
        )
    return request_id


def check_entropy(entropy: str) -> str:
    """Returns the lower-case form of ``entropy``: an even number (16 to 256) of hex digits."""
    if not isinstance(entropy, str) or not _HEX.match(entropy) or len(entropy) % 2 or not 16 <= len(entropy) <= 256:
        raise InvalidInputError(
            f"entropy: got {entropy!r}; allowed: an even number, 16 to 256, of hex digits "
            "(for example a 64-digit block hash, without 0x)"
        )
    return entropy.lower()


def derive_seed(request_id: str, entropy: str) -> int:
    """Derives the generation seed from the request id and public randomness.

    The executor cannot choose the seed: it is fixed by the request id (chosen by the client
    before the executor is known) and by public entropy (for example the hash of a block produced
    after the request was accepted)::

        digest = sha256(b"ditproof-seed-v1\\n" + request_id (UTF-8) + b"\\n" + bytes.fromhex(entropy))
        seed   = int.from_bytes(digest[:8], "big") & (2**63 - 1)

    Args:
        request_id: 1–128 characters of ``A-Z a-z 0-9 . _ : -``.
        entropy: hex digits (even count, 16–256, either case).

    Returns:
        A seed in ``[0, 2**63 - 1]``.

    Raises:
        InvalidInputError: if either argument is out of the allowed form.
    """
    request_id = check_request_id(request_id)
    raw = bytes.fromhex(check_entropy(entropy))
    digest = hashlib.sha256(SEED_DERIVATION.encode() + b"\n" + request_id.encode() + b"\n" + raw).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


def check_seed(seed: int) -> int:
    """Returns ``seed`` if it is an int in ``[0, 2**63 - 1]``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed: got {seed!r}; allowed: an integer from 0 to {MAX_SEED}")
    return seed


def cpu_normal(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """N(0, 1) float32 values drawn on the CPU, identical on every machine for a seed and shape.

    ``torch.Generator("cpu").manual_seed(seed)``, ``torch.randn(shape, dtype=float64)``, rounded
    to float32 (see the module docstring for why float64).
    """
    generator = torch.Generator(device="cpu").manual_seed(check_seed(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64).to(torch.float32)


def initial_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The initial latent noise of a generation: :func:`cpu_normal` of the generation seed."""
    return cpu_normal(seed, shape)


def jl_seed(seed: int) -> int:
    """Seed of the trajectory-fingerprint projection: ``seed63(sha256("ditproof-jl-v1/{seed}"))``."""
    return _seed_from_text(f"{JL_DERIVATION}/{check_seed(seed)}")


def jl_projection(seed: int, dim: int, k: int) -> torch.Tensor:
    """A ``(k, dim)`` Gaussian Johnson–Lindenstrauss projection, scaled by ``1/sqrt(k)``.

    Drawn with :func:`cpu_normal` from :func:`jl_seed` of the generation seed.
    """
    if k < 1 or dim < 1:
        raise InvalidInputError(f"jl projection: got k={k}, dim={dim}; allowed: both at least 1")
    return cpu_normal(jl_seed(seed), (k, dim)) / math.sqrt(k)


def parameter_seed(base_seed: int, name: str) -> int:
    """Seed of one parameter of a random-weight preset: ``seed63(sha256("{base_seed}/{name}"))``."""
    return _seed_from_text(f"ditproof-weights-v1/{check_seed(base_seed)}/{name}")
