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
from ditproof.protocol.request import MAX_SEED

SEED_DERIVATION = "ditproof-seed-v1"
"""Name of the seed derivation below; recorded in every inference record."""

NOISE_DERIVATION = "torch-cpu-mt19937-randn-float64-to-float32-v1"
"""Name of the initial-noise draw below; recorded in every inference record."""

JL_DERIVATION = "ditproof-jl-v1"
"""Name of the trajectory-fingerprint projection below."""

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


# Proof-of-Compute
#
# The PoC seeds follow Gonka's PoC v2 where it defines them (the per-nonce seed and the
# per-layer Householder seed); what Gonka leaves open for a DiT (latent, timestep, text input,
# expert choice, output pick) is derived here from the per-nonce seed, each under its own
# label, so that no two draws share a generator. Every draw is a CPU float64 draw rounded to
# float32 (cpu_normal), or integer arithmetic on sha256, never a device generator: a CPU
# validator and a GPU executor must agree on every input bit.

POC_DERIVATION = "ditproof-poc-v1"
"""Name of the PoC input derivations below; recorded in every PoC commitment."""

POC_MAX_NONCE = 2**32 - 1


def _seed32(text: str) -> int:
    """Gonka's seed form: ``int(sha256(text).hexdigest()[:8], 16)`` (the first 4 bytes, big-endian)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def poc_nonce_seed(block_hash: str, public_key: str, nonce: int) -> int:
    """Per-nonce seed of Gonka PoC v2: ``int(sha256("{block_hash}_{public_key}_nonce{n}")[:8], 16)``."""
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce <= POC_MAX_NONCE:
        raise InvalidInputError(f"nonce: got {nonce!r}; allowed: an integer from 0 to {POC_MAX_NONCE}")
    return _seed32(f"{block_hash}_{public_key}_nonce{nonce}")


def poc_layer_seed(block_hash: str, layer: int) -> int:
    """Seed of block ``layer``'s Householder vector: ``int(sha256("{block_hash}_layer_{i}_householder")[:8], 16)``.

    The same vector serves block ``i`` of either expert (both have the same width).
    """
    return _seed32(f"{block_hash}_layer_{layer}_householder")


def poc_householder_vector(seed: int, dim: int) -> torch.Tensor:
    """A unit float32 vector of ``dim`` values: :func:`cpu_normal` of ``seed``, divided by its norm in float64."""
    values = cpu_normal(seed, (dim,)).to(torch.float64)
    return (values / values.norm()).to(torch.float32)


def poc_input_seed(nonce_seed: int, label: str) -> int:
    """Seed of one per-nonce PoC input: ``seed63(sha256("ditproof-poc-v1/{nonce_seed}/{label}"))``.

    Labels: ``latent`` (the N(0,1) input latent), ``text`` (the N(0,1) encoder_hidden_states),
    ``timestep``, ``expert``, ``pick`` (the output positions).
    """
    return _seed_from_text(f"{POC_DERIVATION}/{nonce_seed}/{label}")


def poc_expert(nonce_seed: int) -> int:
    """The expert of a nonce: 0 (high-noise, ``transformer``) or 1 (low-noise, ``transformer_2``).

    The lowest bit of :func:`poc_input_seed` ``(nonce_seed, "expert")``: about half of the
    nonces need each expert, whatever the timestep, so a node holding one expert fails half.
    """
    return poc_input_seed(nonce_seed, "expert") & 1


def poc_timestep(nonce_seed: int, low: float, high: float) -> float:
    """A timestep uniform in ``[low, high)``: ``low + u·(high − low)`` rounded to float32.

    ``u`` is the first 53 bits of sha256("ditproof-poc-v1/{nonce_seed}/timestep") over 2**53,
    so it is exact on every machine.
    """
    digest = hashlib.sha256(f"{POC_DERIVATION}/{nonce_seed}/timestep".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") >> 11) / float(2**53)
    return float(torch.tensor(low + u * (high - low), dtype=torch.float64).to(torch.float32))


def seeded_sample(seed_text: str, population: int, k: int) -> list[int]:
    """The first ``k`` items of a seeded shuffle of ``range(population)``, without repeats.

    A partial Fisher–Yates shuffle whose j-th draw is uniform on ``[j, population)`` by
    rejection sampling on ``sha256("{seed_text}/{j}/{attempt}")`` read as a 64-bit big-endian
    integer. Independent of any library's RNG, so it never changes between versions.
    """
    if population < 0 or not 0 <= k <= population:
        raise InvalidInputError(f"sample: got k={k} of a population of {population}; allowed: 0 <= k <= population")
    swapped: dict[int, int] = {}
    picked: list[int] = []
    for j in range(k):
        span = population - j
        limit = (2**64 // span) * span
        attempt = 0
        while True:
            draw = int.from_bytes(hashlib.sha256(f"{seed_text}/{j}/{attempt}".encode()).digest()[:8], "big")
            if draw < limit:
                break
            attempt += 1
        other = j + draw % span
        picked.append(swapped.get(other, other))
        swapped[other] = swapped.get(j, j)
    return picked


def poc_output_pick(nonce_seed: int, size: int, k: int) -> list[int]:
    """The ``k`` output positions (of ``size``) that form a nonce's vector.

    :func:`seeded_sample` of ``"ditproof-poc-v1/{nonce_seed}/pick"``.
    """
    return seeded_sample(f"{POC_DERIVATION}/{nonce_seed}/pick", size, k)


def poc_output_seed(block_hash: str, index: int) -> int:
    """Seed of the ``index``-th output Householder reflection: ``int(sha256("{block_hash}_output_{j}_householder")[:8], 16)``."""
    return _seed32(f"{block_hash}_output_{index}_householder")


def poc_sample_seed_text(block_hash: str, public_key: str, root: str, validator_key: str) -> str:
    """Seed text of a validator's leaf sample: ``"ditproof-poc-v1/sample/{block_hash}/{public_key}/{root}/{validator_key}"``.

    It includes the committed Merkle root, so the node cannot know the sample before it commits;
    each validator (``validator_key``) draws its own sample.
    """
    return f"{POC_DERIVATION}/sample/{block_hash}/{public_key}/{root}/{validator_key}"


# Validation: spot-check segments
#
# The validator picks which trajectory segments to re-run after the executor has committed to
# its checkpoints. The choice mixes the record's sha256 (which covers every checkpoint's file
# hash, so it cannot change after the executor commits) with the validator's own entropy, which
# the executor never sees: an executor cannot know which segments will be checked, and a
# validator cannot steer the choice without revealing the entropy it used (it is written in the
# verdict, so anyone can recompute the choice).

SPOT_CHECK_DERIVATION = "ditproof-spot-v1"
"""Name of the spot-check segment choice below; recorded in every spot-check verdict."""

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def spot_check_segments(record_sha256: str, validator_entropy: str, segments: int, k: int) -> list[int]:
    """The ``k`` segment indices (of ``segments``, ascending) a spot check re-runs.

    :func:`seeded_sample` of ``"ditproof-spot-v1/{record_sha256}/{validator_entropy}"`` (entropy
    in lower case), sorted: the same record and entropy always give the same segments.

    Args:
        record_sha256: the record's sha256 (64 lower-case hex digits), the executor's commitment.
        validator_entropy: the validator's own randomness, hex digits as for :func:`check_entropy`.
        segments: how many segments the record's checkpoints delimit.
        k: how many to check (1 to ``segments``).

    Raises:
        InvalidInputError: a malformed hash or entropy, or ``k`` outside 1 to ``segments``.
    """
    if not isinstance(record_sha256, str) or not _SHA256_HEX.match(record_sha256):
        raise InvalidInputError(f"record_sha256: got {record_sha256!r}; allowed: 64 lower-case hex digits")
    entropy = check_entropy(validator_entropy)
    if segments < 1:
        raise InvalidInputError(
            f"spot-check segments: got {segments} segment(s) to choose from; allowed: at least 1 (a record with "
            "checkpoints at two or more distinct steps)"
        )
    if not 1 <= k <= segments:
        raise InvalidInputError(f"spot-check segments: got k={k} of {segments} segment(s); allowed: 1 to {segments}")
    return sorted(seeded_sample(f"{SPOT_CHECK_DERIVATION}/{record_sha256}/{entropy}", segments, k))


SPOT_CHECK_PHASE_DERIVATION = "ditproof-spot-v2"
"""Name of the per-phase spot-check choice below (the default since checkpoint schedules)."""


def spot_check_phase_segments(record_sha256: str, validator_entropy: str, phases: list[int], k: int) -> list[int]:
    """The segment indices a spot check re-runs: ``k`` drawn in each expert phase (all of a phase
    with ``k`` or fewer), ascending over the whole trajectory.

    Phase ``p`` holds ``phases[p]`` consecutive segments (high-noise first); its draw is
    :func:`seeded_sample` of ``"ditproof-spot-v2/{record_sha256}/{validator_entropy}/{p}"``. A
    draw per phase means a deviation confined to one phase meets ``k`` of that phase's segments,
    whatever the other phase holds.

    Raises:
        InvalidInputError: a malformed hash or entropy, no segments, or ``k`` below 1.
    """
    if not isinstance(record_sha256, str) or not _SHA256_HEX.match(record_sha256):
        raise InvalidInputError(f"record_sha256: got {record_sha256!r}; allowed: 64 lower-case hex digits")
    entropy = check_entropy(validator_entropy)
    if sum(phases) < 1 or any(count < 0 for count in phases):
        raise InvalidInputError(
            f"spot-check segments: got {phases} segment(s) per phase; allowed: at least 1 (a record with "
            "checkpoints at two or more distinct steps)"
        )
    if k < 1:
        raise InvalidInputError(f"spot-check segments: got k={k} per phase; allowed: 1 or more")
    chosen: list[int] = []
    offset = 0
    for phase, count in enumerate(phases):
        if count:
            seed = f"{SPOT_CHECK_PHASE_DERIVATION}/{record_sha256}/{entropy}/{phase}"
            chosen += [offset + i for i in seeded_sample(seed, count, min(k, count))]
        offset += count
    return sorted(chosen)
