"""Diffusers' defaults vs ditproof's best, whole generations side by side on one GPU.

One process, one card. Per variant: build ``wan-a14b-shape`` with the variant's runtime options
(the same ``load_model`` as production: fused projections and regional compilation are applied
there), one untimed 1-step generation per size (compilation, kernel selection), then per size a
short generation (480p 4 steps, 720p 2 steps by default, CFG on) timed per step by the step
callback and scaled to 40 steps with each expert's steady step time; text encode and VAE decode
from the run; the mp4 encode of its frames timed with the variant's encoding; peak GPU memory.
Seconds per forward: each expert's forward calls timed on the device (CUDA events around the
transformer's ``forward``, recorded without synchronizing; the first call of each expert per run
left out), the median per expert; ``step_per_pass_s`` = steady step time / passes per step (2 with
CFG) also counts what a step does besides its forwards (CFG combination, solver step, trajectory
capture, the step boundary's synchronization). Determinism: the first size's short run is
repeated, and its final latent and mp4 bytes must be equal.

Each variant starts from an idle card: ``--pause`` seconds without GPU work before it (the SM
clock falls under sustained load, so a variant measured right after another one's minutes at
700 W ran ~2-4% slower than the same variant first). The card's temperature, SM clock and power
are recorded before each variant and after each run.

    PYTHONPATH=src python3 bench/perf_pipeline.py --out $OUT/perf_pipeline.json
    PYTHONPATH=src python3 bench/perf_pipeline.py --smoke --out /tmp/perf_pipeline.json   # CPU, tiny
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import device_info, gpu_state, write_result
from ditproof.generation.generate import generate
from ditproof.models.registry import load_model
from ditproof.protocol.options import RuntimeOptions
from ditproof.video import encode_video
from perf_forward import forward_flops
from step_timing import SEED, scale_to_steps, short_request, timed_generation

VARIANTS: dict[str, dict[str, Any]] = {
    "diffusers-defaults": {"attention_backend": "sdpa"},
    "ditproof-best": {
        "attention_backend": "sdpa-cudnn",
        "fuse_projections": True,
        "fuse_elementwise": True,
        "compile": "regional",
        "encoding": {"threads": 8},
    },
}
"""Overrides of the base options per variant (``encoding`` fields update the pinned encoding)."""


def base_options(device: str) -> RuntimeOptions:
    """The A14B settings of the GPU benches: bf16 everywhere, the 11 GB text encoder offloaded."""
    if device == "cpu":
        return RuntimeOptions()
    return RuntimeOptions(
        device=device, dtype="bfloat16", vae_dtype="bfloat16", text_encoder_dtype="bfloat16", offload_text_encoder=True
    )


def variant_options(base: RuntimeOptions, overrides: dict[str, Any], device: str) -> RuntimeOptions:
    """``base`` with a variant's overrides (flash/cuDNN kernels need CUDA: the CPU smoke keeps sdpa)."""
    update = dict(overrides)
    if "encoding" in update:
        update["encoding"] = base.encoding.model_copy(update=update["encoding"])
    if device == "cpu":
        update["attention_backend"] = "sdpa"
    return base.model_copy(update=update)


class ForwardTimer:
    """Times every forward call of the given experts: CUDA events recorded around each call (no
    synchronization in between; read after the run), or the host clock on a CPU."""

    def __init__(self, experts: dict[str, torch.nn.Module], cuda: bool) -> None:
        self.cuda = cuda
        self.marks: dict[str, list[tuple[Any, Any]]] = {name: [] for name in experts}
        self.handles = []
        for name, expert in experts.items():
            self.handles.append(expert.register_forward_pre_hook(lambda *_, name=name: self._mark(name, start=True)))
            self.handles.append(expert.register_forward_hook(lambda *_, name=name: self._mark(name, start=False)))

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _mark(self, name: str, start: bool) -> None:
        if start:
            self.marks[name].append((self._now(), None))
        else:
            began, _ = self.marks[name][-1]
            self.marks[name][-1] = (began, self._now())

    def seconds(self) -> dict[str, list[float]]:
        """Each expert's forward seconds in call order (after the run; removes the hooks)."""
        for handle in self.handles:
            handle.remove()
        if self.cuda:
            torch.cuda.synchronize()
            return {k: [a.elapsed_time(b) / 1e3 for a, b in v] for k, v in self.marks.items()}
        return {k: [b - a for a, b in v] for k, v in self.marks.items()}


def measure(model: Any, options: RuntimeOptions, size: str, steps: int, target: int) -> dict[str, Any]:
    """Times ``steps`` steps at ``size`` and scales them to ``target`` steps (see the module docstring)."""
    request = short_request(size, steps)
    cuda = options.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    pipe = model.pipeline
    timer = ForwardTimer({"high": pipe.transformer, "low": pipe.transformer_2}, cuda)
    result, step_s = timed_generation(model, options, request)
    calls = timer.seconds()
    began = time.perf_counter()
    video = encode_video(result.frames, request.fps, options.encoding)
    encode_s = time.perf_counter() - began
    scaled = scale_to_steps(step_s, request, target)
    steady, denoise = scaled.steady_step_s, scaled.denoise_target_s
    text_s, vae_s = result.timings["text_encode_s"], result.timings["vae_decode_s"]
    passes = 2 if request.guidance_scale > 1 else 1
    config = model.pipeline.transformer.config
    frames, height, width = request.num_frames, request.height, request.width
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    flops = forward_flops(dict(config), tokens)
    forward_s = {k: statistics.median(v[1:] or v) for k, v in calls.items() if v}
    return {
        "tflops_per_expert": {k: flops / v / 1e12 for k, v in forward_s.items()},
        "size": size,
        "steps": steps,
        "step_s": step_s,
        "forward_s": forward_s,
        "forward_calls_s": calls,
        "step_per_pass_s": {k: v / passes for k, v in steady.items()},
        "text_encode_s": text_s,
        "vae_decode_s": vae_s,
        "encode_s": encode_s,
        "target_steps": target,
        "denoise_target_s": denoise,
        "whole_target_s": text_s + denoise + vae_s + encode_s,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "final_latent": result.capture.latents["final"][1],
        "video": video,
    }


def run_variant(
    preset: str, name: str, options: RuntimeOptions, runs: list[tuple[str, int]], target: int, pause: float
) -> dict[str, Any]:
    """Pauses, builds ``preset`` with ``options``, warms up, measures every run, repeats the first."""
    time.sleep(pause)
    before = gpu_state()
    began = time.perf_counter()
    model = load_model(preset, options.load)
    build_s = time.perf_counter() - began
    began = time.perf_counter()
    for size, _ in runs:  # compilation and kernel selection for each shape, untimed
        generate(short_request(size, 1), SEED, model, options)
    warmup_s = time.perf_counter() - began
    measured = []
    for size, steps in runs:
        measured.append(measure(model, options, size, steps, target))
        measured[-1]["gpu_after"] = gpu_state()
    again = measure(model, options, *runs[0], target)
    first = measured[0]
    deterministic = {
        "final_latent_equal": bool(first["final_latent"].equal(again["final_latent"])),
        "video_equal": first["video"] == again["video"],
    }
    del model
    gc.collect()
    if options.device.startswith("cuda"):
        torch.cuda.empty_cache()
    for row in measured:
        del row["final_latent"], row["video"]
    return {
        "variant": name,
        "pause_s": pause,
        "gpu_before": before,
        "options": options.model_dump(mode="json"),
        "build_s": build_s,
        "warmup_s": warmup_s,
        "runs": measured,
        "repeat_of_first_run": deterministic,
    }


def refuse_missing_kernels(planned: dict[str, RuntimeOptions], device: torch.device) -> None:
    """Exits before any work when a variant's attention kernel or fused steps cannot run here (a
    missing build would otherwise surface only after the variants before it had run for minutes)."""
    from ditproof.generation.attention import LOCAL_KERNELS
    from ditproof.kernels import fused

    for name, options in planned.items():
        kernels = LOCAL_KERNELS.get(options.attention_backend)
        reason = kernels.unavailable_reason(device) if kernels is not None else None
        if reason is None and options.fuse_elementwise:
            reason = fused.unavailable_reason(device)
        if reason is not None:
            raise SystemExit(f"perf_pipeline: variant {name} cannot run here: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", default="832x480x81:4,1280x720x81:2", help="SIZE:STEPS,...")
    parser.add_argument("--target-steps", type=int, default=40)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, tiny sizes")
    parser.add_argument("--pause", type=float, default=60.0, help="idle seconds before each variant (module docstring)")
    parser.add_argument(
        "--best-attention", default=None, help="attention backend of ditproof-best (default: its entry in VARIANTS)"
    )
    args = parser.parse_args()
    preset = "wan-a14b-shape"
    if args.smoke:
        preset, args.device, args.runs, args.pause = "wan-tiny-random", "cpu", "64x48x5:3,96x64x9:2", 0.0
    runs = [(size, int(steps)) for size, steps in (item.split(":") for item in args.runs.split(","))]
    base = base_options(args.device)
    planned = {}
    for name in args.variants.split(","):
        overrides = dict(VARIANTS[name])
        if name == "ditproof-best" and args.best_attention:
            overrides["attention_backend"] = args.best_attention
        planned[name] = variant_options(base, overrides, args.device)
    refuse_missing_kernels(planned, torch.device(args.device))
    results = []
    for name, options in planned.items():
        print(
            f"{name}: {options.attention_backend} fused={options.fuse_projections} "
            f"elementwise={options.fuse_elementwise} compile={options.compile}"
        )
        results.append(run_variant(preset, name, options, runs, args.target_steps, args.pause))
        # Written after each variant: a later one that fails leaves the earlier ones on disk.
        write_result(
            args.out, {"bench": "perf_pipeline", "device": device_info(), "preset": preset, "variants": results}
        )
    print(
        f"{'variant':<20} {'size':>12} {'s/forward':>10} {'step/pass':>10} {'text':>6} {'VAE':>6} {'encode':>7} "
        f"{'video s':>8} {'GiB':>6}"
    )
    for variant in results:
        for row in variant["runs"]:
            forward = statistics.mean(row["forward_s"].values())
            per_pass = statistics.mean(row["step_per_pass_s"].values())
            peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
            print(
                f"{variant['variant']:<20} {row['size']:>12} {forward:>10.3f} {per_pass:>10.3f} {row['text_encode_s']:>6.1f} "
                f"{row['vae_decode_s']:>6.1f} {row['encode_s']:>7.1f} {row['whole_target_s']:>8.1f} {peak:>6}"
            )
        print(f"{'':<20} repeat of the first run: {variant['repeat_of_first_run']}")
        after = [row["gpu_after"] for row in variant["runs"]]
        print(f"{'':<20} card before: {variant['gpu_before']}; after each run: {after}")


if __name__ == "__main__":
    main()
