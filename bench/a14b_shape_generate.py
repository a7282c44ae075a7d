"""GPU checks of wan-a14b-shape through the one generation path at 832×480×81.

Measures seconds per forward pass of each expert (2-step runs, CFG on), checks that the
initial-noise hash is the same as on another machine's CPU and on a CUDA run of the tiny model,
and that two runs on the same GPU give bitwise-identical latents and mp4 bytes.

    PYTHONPATH=src python3 bench/a14b_shape_generate.py --out $OUT/a14b_shape_generate.json \
        --expected-noise-sha256 <hash printed by --print-noise-hash on another machine>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result
from ditproof.generation.execute import execute
from ditproof.hashing import sha256_tensor
from ditproof.models.registry import load_model
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import derive_seed, initial_noise

REQUEST_ID, ENTROPY = "bench-a14b-1", "c0ffee" * 10 + "0123"


class Size(TypedDict, total=False):
    """The request's size fields the smoke run sets (none: the request's 480p defaults)."""

    width: int
    height: int
    num_frames: int


def noise_hash_480p() -> str:
    seed = derive_seed(REQUEST_ID, ENTROPY)
    return sha256_tensor(initial_noise(seed, GenerationRequest(prompt="x").latent_shape()))


def tiny_cpu_vs_gpu(work: Path) -> dict[str, object]:
    """Same request on the tiny model, CPU and CUDA: the recorded noise hash must be equal."""
    request = GenerationRequest(
        prompt="a red circle moves left", width=64, height=48, num_frames=9, num_inference_steps=4
    )
    out: dict[str, object] = {}
    noise: dict[str, str] = {}
    for device in ("cpu", "cuda"):
        options = RuntimeOptions(device=device)
        model = load_model("wan-tiny-random", options.load)
        record = execute(request, model, options, work / f"tiny-{device}", request_id="tiny-1", entropy=ENTROPY)
        noise[device] = record.noise.sha256
        out[device] = {
            "noise_sha256": record.noise.sha256,
            "video_sha256": record.video.sha256,
            "final_latent": next(c.tensor_sha256 for c in record.checkpoints if c.name == "final"),
            "runtime_class": record.runtime_class,
        }
    out["noise_equal"] = noise["cpu"] == noise["cuda"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--expected-noise-sha256", default=None)
    parser.add_argument("--print-noise-hash", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, tiny size (tests the script)")
    args = parser.parse_args()
    if args.print_noise_hash:
        print(noise_hash_480p())
        return
    result: dict[str, object] = {"device": device_info()}
    local_noise = noise_hash_480p()
    noise_480p = {
        "here": local_noise,
        "expected": args.expected_noise_sha256,
        "equal": args.expected_noise_sha256 in (None, local_noise),
    }
    result["noise_480p"] = noise_480p
    work = Path(tempfile.mkdtemp())
    size: Size
    tiny: dict[str, object] | None = None
    if args.smoke:
        preset, options = "wan-tiny-random", RuntimeOptions()
        size = {"width": 64, "height": 48, "num_frames": 9}
    else:
        tiny = tiny_cpu_vs_gpu(work)
        result["tiny_cpu_vs_gpu"] = tiny
        preset = "wan-a14b-shape"
        options = RuntimeOptions(device="cuda", dtype="bfloat16", vae_dtype="bfloat16", offload_text_encoder=True)
        size = {}
    started = time.perf_counter()
    model = load_model(preset, options.load)
    if torch.cuda.is_available() and not args.smoke:
        torch.cuda.synchronize()
    result["build_s"] = time.perf_counter() - started
    result["model_revision"] = model.revision

    runs: list[dict[str, Any]] = []
    # Default boundary: both steps fall on the high-noise expert (t = 999, 923 with shift 12).
    # boundary_ratio 0.95: one step on each expert.
    plans = [("default-boundary", 0.875), ("boundary-0.95-a", 0.95), ("boundary-0.95-b", 0.95)]
    for name, boundary in plans:
        request = GenerationRequest(
            prompt="a red circle moves left on a blue background",
            num_inference_steps=2,
            boundary_ratio=boundary,
            **size,
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        record = execute(request, model, options, work / name, request_id=REQUEST_ID, entropy=ENTROPY)
        t = record.timings
        passes_per_step = 2
        runs.append(
            {
                "name": name,
                "request": request.model_dump(mode="json"),
                "noise_sha256": record.noise.sha256,
                "video_sha256": record.video.sha256,
                "final_latent_sha256": next(c.tensor_sha256 for c in record.checkpoints if c.name == "final"),
                "runtime_class": record.runtime_class,
                "timings": t.model_dump(),
                "high_s_per_forward": t.high_noise_s / (t.high_noise_steps * passes_per_step)
                if t.high_noise_steps
                else None,
                "low_s_per_forward": t.low_noise_s / (t.low_noise_steps * passes_per_step)
                if t.low_noise_steps
                else None,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            }
        )
    result["runs"] = runs
    result["deterministic"] = (
        runs[1]["video_sha256"] == runs[2]["video_sha256"]
        and runs[1]["final_latent_sha256"] == runs[2]["final_latent_sha256"]
    )
    result["noise_same_across_runs"] = len({r["noise_sha256"] for r in runs}) == 1
    write_result(args.out, result)

    print(f"{'run':<20}{'high s/fwd':>12}{'low s/fwd':>12}{'text s':>9}{'vae s':>8}{'enc s':>8}{'peak GiB':>10}")
    for r in runs:
        timings = r["timings"]
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"  # noqa: E731
        print(
            f"{r['name']:<20}{fmt(r['high_s_per_forward']):>12}{fmt(r['low_s_per_forward']):>12}"
            f"{timings['text_encode_s']:>9.2f}{timings['vae_decode_s']:>8.2f}{timings['encode_s']:>8.2f}"
            f"{fmt(r['peak_gib']):>10}"
        )
    print(
        f"build {result['build_s']:.1f} s; deterministic run to run: {result['deterministic']}; "
        f"noise 480p here {local_noise[:16]} equal to expected: {noise_480p['equal']}"
    )
    if tiny is not None:
        print(f"tiny model CPU vs CUDA noise hash equal: {tiny['noise_equal']}")


if __name__ == "__main__":
    main()
