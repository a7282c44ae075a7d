"""Provisional thresholds for the tiny random model on the CPU: a small benign/malign sweep.

    .venv/bin/python results/thresholds/calibrate_tiny.py            # writes the two files below

Not the Stage 1 calibration: a handful of prompts on the tiny random-weight model, at
64x48, 5 frames, 4 steps, float32, this project's CPU class. For each prompt the executor runs
the reference (CFG sequential) and the honest validator regenerates with CFG batched (the benign
deviation that this CPU shows: another summation order). Malign runs: another seed, 3 steps
instead of 4, CFG off, the high-noise expert only. Videos go through the pinned encoding (crf 18
and lossless); scores compare the decoded submitted video with the decoded re-encoded
regeneration, and the final latents, as the validator does.

Outputs: ``tiny-cpu-sweep.json`` (every score) and ``wan-tiny-random.provisional.json`` (a
ditproof.thresholds/1 file, ``provisional: true``), with each threshold at the geometric mean
of the worst honest score and the best malign score (both directions), so the margins show.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from pathlib import Path

from ditproof.generation.generate import generate
from ditproof.metrics.registry import METRICS, score_latents, score_videos
from ditproof.models.registry import load_model
from ditproof.protocol.options import RuntimeOptions, VideoEncoding
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import derive_seed
from ditproof.validation.policy import ThresholdsFile
from ditproof.video import decode_video, encode_video

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "a red circle moves left",
    "a blue square moves up",
    "waves on a beach at sunset",
    "a cat walks across a wooden floor",
    "a green ball bounces",
    "snow falls on a quiet street",
    "a yellow kite in the wind",
    "a car drives through a tunnel",
]
KEYS = ("psnr:worst", "ssim:worst", "latent_rel_l2:value", "latent_cosine:value")


def run(request: GenerationRequest, seed: int, options: RuntimeOptions, model, encoding: VideoEncoding):
    result = generate(request, seed, model, options)
    assert result.frames is not None
    video = decode_video(encode_video(result.frames, request.fps, encoding))
    return video, result.capture.latents["final"][1]


def main() -> None:
    options = RuntimeOptions()
    model = load_model("wan-tiny-random", options)
    scores: dict[str, dict[str, list[float]]] = {}
    for index, prompt in enumerate(PROMPTS):
        request = GenerationRequest(prompt=prompt, width=64, height=48, num_frames=5, num_inference_steps=4)
        seed = derive_seed(f"calib-{index}", "5e" * 32)
        submitted = {
            "honest": (request, seed, options),
            "other_seed": (request, seed + 1, options),
            "fewer_steps": (request.model_copy(update={"num_inference_steps": 3}), seed, options),
            "cfg_off": (request.model_copy(update={"guidance_scale": 1.0, "guidance_scale_2": 1.0}), seed, options),
            "high_noise_only": (request, seed, options.model_copy(update={"experts": "high-noise-only"})),
        }
        for codec in ("h264", "h264-lossless"):
            encoding = VideoEncoding(codec=codec)
            reference = run(request, seed, options.model_copy(update={"cfg_mode": "batched"}), model, encoding)
            for name, (req, s, opts) in submitted.items():
                video, latent = run(req, s, opts, model, encoding)
                got = {**score_videos(["psnr", "ssim"], video, reference[0]), **score_latents(latent, reference[1])}
                bucket = scores.setdefault(f"{name}/{codec}", {k: [] for k in KEYS})
                for key in KEYS:
                    bucket[key].append(got[key])
        print(f"prompt {index + 1}/{len(PROMPTS)} done", file=sys.stderr)

    entries = []
    summary = {}
    for key in KEYS:
        metric, statistic = key.split(":")
        higher = METRICS[metric].higher_is_better
        honest = [v for name, b in scores.items() if name.startswith("honest/") for v in b[key]]
        malign = [v for name, b in scores.items() if not name.startswith("honest/") for v in b[key]]
        worst_honest = min(honest) if higher else max(honest)
        best_malign = max(malign) if higher else min(malign)
        separated = worst_honest > best_malign if higher else worst_honest < best_malign
        summary[key] = {"worst_honest": worst_honest, "best_malign": best_malign, "separated": separated}
        if not separated or metric == "ssim" or metric == "latent_cosine":
            continue  # ship thresholds on one frame metric and one latent metric only
        # The geometric mean needs positive values: PSNR (dB) and relative L2 are.
        value = math.sqrt(worst_honest * best_malign)
        summary[key]["threshold"] = value
        entries.append(
            {
                "model": "wan-tiny-random",
                "runtime_class": "cpu-*/float32/*",
                "metric": metric,
                "statistic": statistic,
                "direction": METRICS[metric].direction,
                "value": float(f"{value:.4g}"),
                "provenance": {
                    "calibration": "results/thresholds/calibrate_tiny.py: 8 prompts, 64x48x5, 4 steps, CPU",
                    "fpr_target": None,
                    "date": datetime.date.today().isoformat(),
                    "samples": len(honest) + len(malign),
                    "notes": (
                        f"provisional: geometric mean of the worst honest ({worst_honest:.4g}, CFG batched vs "
                        f"sequential) and best malign ({best_malign:.4g}) score; not an FPR-calibrated threshold"
                    ),
                },
            }
        )
    (HERE / "tiny-cpu-sweep.json").write_text(json.dumps({"summary": summary, "scores": scores}, indent=2) + "\n")
    file = ThresholdsFile.model_validate(
        {
            "version": 1,
            "provisional": True,
            "description": (
                "PROVISIONAL thresholds for the tiny random-weight model on CPU float32 only, from a small "
                "benign/malign sweep (calibrate_tiny.py); the Stage 1 experiment produces real ones"
            ),
            "entries": entries,
        }
    )
    file.save(HERE / "wan-tiny-random.provisional.json")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
