"""The executor: request → seed → generate → encode → files and inference record.

Output folder layout::

    OUT/video.mp4          the encoded video (its sha256 is the on-chain hash)
    OUT/record.json        the inference record (canonical JSON)
    OUT/latents/*.safetensors  trajectory checkpoints named in the record
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from ditproof.errors import InvalidInputError
from ditproof.generation.generate import StepCallback, generate_video
from ditproof.generation.runtime import runtime_class, runtime_fingerprint
from ditproof.generation.trajectory import save_checkpoints
from ditproof.hashing import atomic_write_bytes, sha256_bytes
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RunOptions, RuntimeOptions
from ditproof.protocol.record import (
    LATENTS_DIR,
    RECORD_FILE,
    VIDEO_FILE,
    InferenceRecord,
    ModelInfo,
    NoiseInfo,
    PhaseTimings,
    VideoInfo,
)
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import NOISE_DERIVATION, check_entropy, check_request_id, derive_seed


def resolve_seed(request: GenerationRequest, request_id: str | None, entropy: str | None) -> tuple[int, str]:
    """The seed of a request and how it was obtained.

    With ``request_id`` and ``entropy``, the seed is derived (and an explicit ``request.seed`` must
    equal it). Without them, ``request.seed`` is used as an explicit experiment seed.

    Raises:
        InvalidInputError: when neither is given, only one of request_id/entropy is, or the
            explicit seed contradicts the derived one.
    """
    if (request_id is None) != (entropy is None):
        raise InvalidInputError(
            f"request_id and entropy: got request_id={request_id!r}, entropy={entropy!r}; allowed: both or neither"
        )
    if request_id is not None and entropy is not None:
        seed = derive_seed(request_id, entropy)
        if request.seed is not None and request.seed != seed:
            raise InvalidInputError(
                f"seed: got {request.seed}; allowed: the derived seed {seed} of this request id and entropy, "
                "or no seed (the executor cannot choose it)"
            )
        return seed, "ditproof-seed-v1"
    if request.seed is None:
        raise InvalidInputError("seed: got none and no request id/entropy; allowed: request_id + entropy, or a seed")
    return request.seed, "explicit"


def execute(
    request: GenerationRequest,
    model: LoadedModel,
    options: RunOptions | RuntimeOptions,
    out_dir: str | Path,
    request_id: str | None = None,
    entropy: str | None = None,
    on_step: StepCallback | None = None,
    load_seconds: float = 0.0,
    entropy_source: Literal["client", "executor"] = "client",
) -> InferenceRecord:
    """Generates the video of ``request`` into ``out_dir`` and writes its inference record.

    ``options``: the run's (complete options are taken when their load part is the model's,
    :meth:`~ditproof.models.registry.LoadedModel.run_options`); the record states
    ``RuntimeOptions.of(model.load, run)``. ``entropy_source`` says who chose ``entropy``
    (recorded; see ``InferenceRecord.entropy_source``).

    Files are written atomically; the record is written last, so a folder with a record is whole.
    """
    started = time.perf_counter()
    if request_id is not None:
        request_id = check_request_id(request_id)
    if entropy is not None:
        entropy = check_entropy(entropy)
    seed, derivation = resolve_seed(request, request_id, entropy)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"out: got {out}, which is a file; allowed: a folder (created if missing)")

    run = model.run_options(options)
    # The mp4 encode runs beside the VAE decode; encode_s is what it took after the decode.
    result, video, encode_s = generate_video(request, seed, model, run, run.encoding, on_step=on_step)
    assert result.frames is not None  # a whole run always decodes
    atomic_write_bytes(out / VIDEO_FILE, video)
    video_sha, video_size = sha256_bytes(video), len(video)
    checkpoints = save_checkpoints(result.capture, out / LATENTS_DIR, prefix=f"{LATENTS_DIR}/")

    fingerprint = runtime_fingerprint(model, run)
    record = InferenceRecord(
        request_id=request_id,
        entropy=entropy,
        entropy_source=entropy_source if entropy is not None else None,
        request=request,
        seed=seed,
        seed_derivation=derivation,  # type: ignore[arg-type]
        noise=NoiseInfo(shape=result.noise_shape, derivation=NOISE_DERIVATION, sha256=result.noise_sha256),
        model=ModelInfo(preset=model.preset, revision=model.revision, text_max_length=model.text_max_length),
        options=RuntimeOptions.of(model.load, run),
        runtime=fingerprint,
        runtime_class=runtime_class(fingerprint),
        video=VideoInfo(
            file=VIDEO_FILE,
            sha256=video_sha,
            size_bytes=video_size,
            width=request.width,
            height=request.height,
            num_frames=int(result.frames.shape[0]),
            fps=request.fps,
            encoding=run.encoding,
        ),
        checkpoints=checkpoints,
        fingerprints=result.capture.fingerprint_record(),
        timings=PhaseTimings(
            load_s=load_seconds,
            encode_s=encode_s,
            total_s=load_seconds + time.perf_counter() - started,
            text_encode_s=result.timings["text_encode_s"],
            high_noise_s=result.timings["high_noise_s"],
            low_noise_s=result.timings["low_noise_s"],
            vae_decode_s=result.timings["vae_decode_s"],
            high_noise_steps=result.steps["high_noise_steps"],
            low_noise_steps=result.steps["low_noise_steps"],
            forward_passes=result.steps["forward_passes"],
        ),
    )
    record.save(out / RECORD_FILE)
    return record
