"""``ditproof generate``: one request through the executor."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ditproof.cli.common import call, err, out, parse_steps, reported
from ditproof.errors import InvalidInputError
from ditproof.models.presets import native_sizes
from ditproof.models.quiet import quiet_libraries
from ditproof.protocol.options import CaptureOptions, RunOptions, RuntimeOptions, VideoEncoding
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import GenerationRequest, parse_request

if TYPE_CHECKING:
    from ditproof.models.registry import LoadedModel

DEFAULT_MODEL = "wan-shapes-small"


def build_options(
    device: str,
    dtype: str | None,
    attention_backend: str,
    cfg_mode: str,
    lossless: bool,
    jl_dim: int,
    checkpoint_steps: str | None,
    model: str,
    encode_threads: int = 1,
    **deviations: object,
) -> RuntimeOptions:
    """Runtime options from CLI flags (dtype defaults to the preset's); ``deviations`` are passed through."""
    from ditproof.models.presets import PRESETS

    preset = PRESETS.get(model)
    chosen_dtype = dtype or (
        preset.default_dtype if preset else ("bfloat16" if device.startswith("cuda") else "float32")
    )
    # A bfloat16 model decodes with a bfloat16 VAE (the network's classes at A14B size: a float32
    # decode with cuDNN picks its plan by the GPU memory left free; docs/determinism.md).
    vae_dtype = "bfloat16" if preset is not None and preset.default_dtype == "bfloat16" else "float32"
    return call(
        RuntimeOptions,
        device=device,
        dtype=chosen_dtype,
        vae_dtype=vae_dtype,
        attention_backend=attention_backend,
        cfg_mode=cfg_mode,
        capture=call(CaptureOptions, jl_dim=jl_dim, checkpoint_steps=parse_steps(checkpoint_steps)),
        encoding=call(VideoEncoding, codec="h264-lossless" if lossless else "h264", threads=encode_threads),
        **deviations,
    )


FLAG_OF_FIELD = {"num_inference_steps": "--steps"}
"""Request fields whose flag is not the field's name with dashes."""


def request_from_flags(values: dict[str, object]) -> GenerationRequest:
    """:func:`parse_request` with each problem named by the flag that was typed (``--steps``,
    not ``num_inference_steps``).

    Raises:
        InvalidRequestError: one ``(flag, message)`` pair per problem.
    """
    from ditproof.errors import InvalidRequestError

    try:
        return parse_request(values)
    except InvalidRequestError as exc:
        flags = [(FLAG_OF_FIELD.get(field, "--" + field.replace("_", "-")), message) for field, message in exc.errors]
        raise InvalidRequestError(flags) from None


def run_generation(
    request: GenerationRequest,
    options: RunOptions,
    model: LoadedModel,
    out_dir: Path,
    request_id: str | None,
    entropy: str | None,
    show_progress: bool = True,
    load_seconds: float = 0.0,
    entropy_source: Literal["client", "executor"] = "client",
) -> InferenceRecord:
    """Runs the executor with a progress bar (the model holds the load options)."""
    from ditproof.api import execute

    with Progress(
        TextColumn("denoising"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task("denoising", total=request.num_inference_steps)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return execute(
            request,
            model,
            options,
            out_dir,
            request_id=request_id,
            entropy=entropy,
            on_step=on_step,
            load_seconds=load_seconds,
            entropy_source=entropy_source,
        )


def generate_command(
    prompt: str = typer.Option(..., "--prompt", help="What the video shows."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for video.mp4, record.json and latents/."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="A preset (see `ditproof info`) or a model folder."),
    model_path: str | None = typer.Option(None, "--model-path", help="Folder of the wan2.2-t2v-a14b preset."),
    negative_prompt: str = typer.Option("", "--negative-prompt"),
    width: int | None = typer.Option(None, "--width", help="Default: the model's native width, else 832."),
    height: int | None = typer.Option(None, "--height", help="Default: the model's native height, else 480."),
    num_frames: int | None = typer.Option(None, "--num-frames", help="Default: the model's native count, else 81."),
    fps: int = typer.Option(16, "--fps"),
    steps: int | None = typer.Option(None, "--steps", help="Default: the model's native count, else 40."),
    guidance_scale: float = typer.Option(4.0, "--guidance-scale", help="High-noise expert's CFG scale."),
    guidance_scale_2: float = typer.Option(3.0, "--guidance-scale-2", help="Low-noise expert's CFG scale."),
    boundary_ratio: float = typer.Option(0.875, "--boundary-ratio"),
    flow_shift: float = typer.Option(12.0, "--flow-shift"),
    request_id: str | None = typer.Option(None, "--request-id", help="Default: a new random id."),
    entropy: str | None = typer.Option(None, "--entropy", help="Public randomness in hex (default: random)."),
    seed: int | None = typer.Option(None, "--seed", help="Explicit seed for experiments (no derivation)."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: preset's)."),
    attention_backend: str = typer.Option("sdpa", "--attention-backend"),
    cfg_mode: str = typer.Option("sequential", "--cfg-mode", help="sequential or batched."),
    lossless: bool = typer.Option(False, "--lossless", help="Lossless H.264 (rgb24) for experiments."),
    jl_dim: int = typer.Option(8, "--jl-dim", help="Values per step of the trajectory fingerprint."),
    checkpoint_steps: str | None = typer.Option(
        None, "--checkpoint-steps", help="Extra latents besides the default schedule's, e.g. 10,20,30."
    ),
    experts: str = typer.Option("both", "--experts", help="both, or high-noise-only (experiments)."),
    weights: str = typer.Option("native", "--weights", help="native, or fp8-e4m3 (experiments)."),
    cache_threshold: float | None = typer.Option(None, "--cache-threshold", help="First-block cache (experiments)."),
    tp_degree: int = typer.Option(1, "--tp-degree", help="Tensor parallelism (run under torchrun)."),
    cp_degree: int = typer.Option(1, "--cp-degree", help="Context parallelism (run under torchrun)."),
    cfg_degree: int = typer.Option(
        1,
        "--cfg-degree",
        help="2: CFG's two passes on two halves of the ranks, each with --cp-degree (run under torchrun).",
    ),
    ffn_chunks: int = typer.Option(
        1,
        "--ffn-chunks",
        help="Feed-forward slices summed in a fixed order: with them a --tp-degree run gives the bytes of one process.",
    ),
    fuse_projections: bool = typer.Option(
        False, "--fuse-projections", help="Fuse the experts' attention projections (speed; in the runtime class)."
    ),
    fuse_elementwise: bool = typer.Option(
        False,
        "--fuse-elementwise",
        help="GELU in the FFN product, q/k norm + RoPE in one kernel (speed; in the runtime class).",
    ),
    compile_mode: str = typer.Option(
        "none", "--compile", help="none, or regional: torch.compile of the repeated blocks (speed; in the class)."
    ),
    offload_text_encoder: bool = typer.Option(
        False, "--offload-text-encoder", help="Keep the text encoder in pinned host memory between prompts."
    ),
    encode_threads: int = typer.Option(1, "--encode-threads", help="x264 threads (pinned in the record)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    engine: str = typer.Option("diffusers", "--engine", help="diffusers, or vllm-omni (docs/vllm-omni.md)."),
    omni_url: str | None = typer.Option(None, "--omni-url", help="vllm-omni: a `vllm serve DIR --omni` URL."),
    omni_artifacts: str | None = typer.Option(None, "--omni-artifacts", help="vllm-omni: the plugin's folder."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier run's files in --out."),
) -> None:
    """Generate a video deterministically and write its inference record."""
    with reported():
        if (out_dir / "record.json").exists() and not force:
            raise InvalidInputError(
                f"out: {out_dir} already holds a run (record.json); allowed: another folder, or --force to replace it"
            )
        sizes = native_sizes(
            model, {"width": width, "height": height, "num_frames": num_frames, "num_inference_steps": steps}
        )
        request = request_from_flags(
            {
                "prompt": prompt,
                "negative_prompt": negative_prompt,
                **sizes,
                "fps": fps,
                "guidance_scale": guidance_scale,
                "guidance_scale_2": guidance_scale_2,
                "boundary_ratio": boundary_ratio,
                "flow_shift": flow_shift,
                "seed": seed,
            }
        )
        from ditproof.models.parallel import init_parallel, is_main_process

        cache = None if cache_threshold is None else {"threshold": cache_threshold}
        options = build_options(
            device,
            dtype,
            attention_backend,
            cfg_mode,
            lossless,
            jl_dim,
            checkpoint_steps,
            model,
            encode_threads=encode_threads,
            offload_text_encoder=offload_text_encoder,
            experts=experts,
            weights=weights,
            cache=cache,
            tp_degree=tp_degree,
            cp_degree=cp_degree,
            cfg_degree=cfg_degree,
            ffn_chunks=ffn_chunks,
            engine=engine,
            fuse_projections=fuse_projections,
            fuse_elementwise=fuse_elementwise,
            compile=compile_mode,
        )
        if engine == "vllm-omni":
            from ditproof.generation.engines import configure_vllm_omni

            # Without --omni-url the model folder is loaded in this process (vLLM-Omni environment).
            configure_vllm_omni(
                url=omni_url, model_dir=None if omni_url else (model_path or model), artifacts=omni_artifacts
            )
        if entropy is not None:
            from ditproof.randomness import check_entropy

            check_entropy(entropy)
        if model == "wan2.2-t2v-a14b" and model_path is not None and engine == "diffusers":
            from ditproof.models.local import check_pipeline_folder

            check_pipeline_folder(Path(model_path))
        quiet_libraries()  # after the cheap checks: bad input is told before the libraries load
        options = init_parallel(options)
        drawn = False
        if seed is None:
            if tp_degree * cp_degree * cfg_degree > 1 and (request_id is None or entropy is None):
                raise InvalidInputError("request_id and entropy: a parallel run needs both given (all ranks agree)")
            request_id = request_id or f"local-{uuid.uuid4().hex}"
            drawn = entropy is None
            entropy = entropy or os.urandom(32).hex()
        from ditproof.api import load_model

        started = time.perf_counter()
        loaded = load_model(model, options.load, model_path=model_path)
        load_seconds = time.perf_counter() - started
        if not is_main_process():
            # Other ranks take part in every collective of the run but write nothing.
            from ditproof.generation.execute import resolve_seed
            from ditproof.generation.generate import generate

            generate(request, resolve_seed(request, request_id, entropy)[0], loaded, options.run)
            return
        source: Literal["client", "executor"] = "executor" if drawn else "client"
        record = run_generation(
            request, options.run, loaded, out_dir, request_id, entropy, not quiet, load_seconds, entropy_source=source
        )
        out.print(f"video   {out_dir / record.video.file}  sha256 {record.video.sha256}")
        out.print(f"record  {out_dir / 'record.json'}  sha256 {record.sha256()}")
        out.print(f"seed {record.seed} ({record.seed_derivation}), noise sha256 {record.noise.sha256}")
        out.print(f"runtime class {record.runtime_class}")
        out.print(f"{record.timings.total_s:.2f} s in all ({record.timings.forward_passes} forward passes)")
