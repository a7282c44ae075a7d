"""Cross-engine measurement: the same requests through ditproof's diffusers loop and vLLM-Omni.

Runs in ditproof's environment; starts ``vllm serve DIR --omni`` from the vLLM-Omni environment
(scripts/vllm-omni-env.sh) on loopback, with ditproof's plugin, on the same device (this CPU).
For each request (prompt × seed) it generates through both engines and twice through each, then
reports exact-match rates (video bytes, final latent) and metric distances (PSNR, SSIM on the
frames; relative L2 on the pre-switch and final latents; the first step whose JL fingerprint
differs).

    PYTHONPATH=src .venv/bin/python bench/vllm_omni_cross_engine.py --out bench/results/x.json
    ... --smoke     (2 requests, 3 steps)

Model: the tiny random-weight model saved as a diffusers folder (``--model-dir`` to use another
folder, e.g. the shipped model's).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ditproof.generation.engines import configure_vllm_omni
from ditproof.generation.engines.vllm_omni.launch import OmniServer
from ditproof.generation.generate import GenerationResult, generate
from ditproof.hashing import sha256_bytes, sha256_tensor
from ditproof.metrics import latent_relative_l2, psnr_frames, ssim_frames
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, RunOptions, VideoEncoding
from ditproof.protocol.request import GenerationRequest
from ditproof.video import encode_video

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a red circle moves left on a blue background",
    "a green square grows slowly",
    "two yellow triangles spin",
    "a white dot bounces on a black floor",
]


def first_divergence(a: list[list[float]], b: list[list[float]]) -> int | None:
    """Index of the first step whose fingerprints differ (None: all equal)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def compare(a: GenerationResult, b: GenerationResult, fps: int) -> dict[str, Any]:
    """Exactness and distances of ``b`` against ``a``."""
    assert a.frames is not None and b.frames is not None
    encoding = VideoEncoding()
    video_a = sha256_bytes(encode_video(a.frames, fps, encoding))
    video_b = sha256_bytes(encode_video(b.frames, fps, encoding))
    final_a, final_b = a.capture.latents["final"][1], b.capture.latents["final"][1]
    psnr = psnr_frames(a.frames, b.frames)
    ssim = ssim_frames(a.frames, b.frames)
    row: dict[str, Any] = {
        "noise_equal": a.noise_sha256 == b.noise_sha256,
        "video_exact": video_a == video_b,
        "final_latent_exact": sha256_tensor(final_a) == sha256_tensor(final_b),
        "psnr_mean": float(psnr.mean()),
        "psnr_worst": float(psnr.min()),
        "ssim_mean": float(ssim.mean()),
        "ssim_worst": float(ssim.min()),
        "final_latent_rel_l2": latent_relative_l2(final_b, final_a),
        "first_divergent_step": first_divergence(a.capture.fingerprints, b.capture.fingerprints),
    }
    if "pre_switch" in a.capture.latents and "pre_switch" in b.capture.latents:
        row["pre_switch_rel_l2"] = latent_relative_l2(
            b.capture.latents["pre_switch"][1], a.capture.latents["pre_switch"][1]
        )
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates and means over request pairs (PSNR of identical frames is capped by ditproof.metrics)."""
    out: dict[str, Any] = {"pairs": len(rows)}
    for key in ("noise_equal", "video_exact", "final_latent_exact"):
        out[key + "_rate"] = sum(bool(r[key]) for r in rows) / len(rows)
    for key in ("psnr_mean", "ssim_mean", "final_latent_rel_l2", "pre_switch_rel_l2"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = statistics.fmean(values)
    out["psnr_worst"] = min(r["psnr_worst"] for r in rows)
    out["ssim_worst"] = min(r["ssim_worst"] for r in rows)
    out["final_latent_rel_l2_max"] = max(r["final_latent_rel_l2"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--omni-venv", type=Path, default=ROOT / ".venv-omni")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    prompts = PROMPTS[:1] if args.smoke else PROMPTS
    seeds = 2 if args.smoke else args.seeds
    steps = 3 if args.smoke else args.steps

    work = Path(tempfile.mkdtemp(prefix="ditproof-cross-engine-"))
    folder = args.model_dir
    if folder is None:
        folder = work / "tiny-wan"
        load_model("wan-tiny-random", LoadOptions()).pipeline.save_pretrained(folder)
    # The engine is chosen at load: one model per engine, from the same folder.
    models = {
        "diffusers": load_model(str(folder), LoadOptions(engine="diffusers")),
        "vllm-omni": load_model(str(folder), LoadOptions(engine="vllm-omni")),
    }
    artifacts = work / "artifacts"
    artifacts.mkdir()
    server = OmniServer(args.omni_venv, folder, artifacts, work / "vllm-serve.log")
    started = time.perf_counter()
    try:
        server.wait_ready()
        startup_s = time.perf_counter() - started
        configure_vllm_omni(url=server.url, artifacts=str(artifacts))
        pairs: dict[str, list[dict[str, Any]]] = {
            "diffusers_vs_vllm_omni": [],
            "diffusers_repeat": [],
            "vllm_omni_repeat": [],
        }
        seconds = {"diffusers": 0.0, "vllm-omni": 0.0}
        for prompt in prompts:
            for seed in range(1, seeds + 1):
                request = GenerationRequest(prompt=prompt, width=64, height=48, num_frames=9, num_inference_steps=steps)
                runs: dict[str, list[GenerationResult]] = {"diffusers": [], "vllm-omni": []}
                for engine in ("diffusers", "vllm-omni"):
                    for _ in range(2):
                        t0 = time.perf_counter()
                        runs[engine].append(generate(request, seed, models[engine], RunOptions()))
                        seconds[engine] += time.perf_counter() - t0
                pairs["diffusers_vs_vllm_omni"].append(compare(runs["diffusers"][0], runs["vllm-omni"][0], request.fps))
                pairs["diffusers_repeat"].append(compare(runs["diffusers"][0], runs["diffusers"][1], request.fps))
                pairs["vllm_omni_repeat"].append(compare(runs["vllm-omni"][0], runs["vllm-omni"][1], request.fps))
    finally:
        server.stop()

    import importlib.metadata as md

    summary = {name: summarize(rows) for name, rows in pairs.items()}
    result = {
        "benchmark": "vllm_omni_cross_engine",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()})",
        "torch": torch.__version__,
        "diffusers_main": md.version("diffusers"),
        "engine_info": json.loads((artifacts / "engine.json").read_text()),
        "model_revision": models["diffusers"].revision,
        "request": {"width": 64, "height": 48, "num_frames": 9, "num_inference_steps": steps, "dtype": "float32"},
        "prompts": prompts,
        "seeds": list(range(1, seeds + 1)),
        "server_startup_s": startup_s,
        "seconds_per_generation": {k: v / (2 * len(prompts) * seeds) for k, v in seconds.items()},
        "summary": summary,
        "pairs": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(
        f"{'pair':<24} {'n':>3} {'noise=':>6} {'video=':>6} {'latent=':>7} {'PSNR mean':>9} {'PSNR min':>8} "
        f"{'SSIM mean':>9} {'SSIM min':>8} {'relL2 final':>11} {'relL2 switch':>12}"
    )
    for name, s in summary.items():
        print(
            f"{name:<24} {s['pairs']:>3} {s['noise_equal_rate']:>6.2f} {s['video_exact_rate']:>6.2f} "
            f"{s['final_latent_exact_rate']:>7.2f} {s['psnr_mean']:>9.2f} {s['psnr_worst']:>8.2f} "
            f"{s['ssim_mean']:>9.4f} {s['ssim_worst']:>8.4f} {s['final_latent_rel_l2']:>11.4f} "
            f"{s.get('pre_switch_rel_l2', float('nan')):>12.4f}"
        )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
