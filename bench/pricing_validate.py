"""Predicted vs measured time of whole generations of wan-a14b-shape.

Builds the whole ``wan-a14b-shape`` pipeline (2×14B experts, UMT5-XXL, Wan2.1 VAE; build time
measured), warms up, then runs short generations through ``ditproof.generation.generate``
(480p with 4 steps and 720p with 3 steps by default, 81 frames, CFG on). Each step's time is
read from the step callback (the generation path synchronizes the device before it). The
measured time is scaled to 40 steps per expert: the short run's own steps, plus the remaining
steps of each expert at that expert's steady step time (its steps other than the very first
step of the run, which also pays one-time costs such as drawing the trajectory projection).
The prediction is the quote's transformer time; text encoding and VAE decode are measured and
added to both sides for the whole-generation comparison.

    PYTHONPATH=src python3 bench/pricing_validate.py --out $OUT/pricing_validate.json \
        [--calibration $OUT/pricing_calibrate.json]
    PYTHONPATH=src python3 bench/pricing_validate.py --smoke --out /tmp/pricing_validate.json   # CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import device_info, write_result
from ditproof.models.registry import load_model
from ditproof.pricing.calibrate import calibrate, hardware
from ditproof.pricing.coefficients import load_coefficients
from ditproof.pricing.cost import quote
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.pricing import CoefficientEntry, CoefficientsFile
from step_timing import scale_to_steps, short_request, timed_generation


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    model: Any, options: RuntimeOptions, data: CoefficientsFile, size: str, steps: int, target: int
) -> dict[str, Any]:
    """Runs ``steps`` steps at ``size`` and compares with the quote, also scaled to ``target`` steps.

    ``data`` holds the one coefficient entry to quote with.
    """
    request = short_request(size, steps)
    if options.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result, step_s = timed_generation(model, options, request)
    scaled = scale_to_steps(step_s, request, target)
    high, low = scaled.expert_steps_short
    assert (high, low) == (result.steps["high_noise_steps"], result.steps["low_noise_steps"])
    high_t, low_t = scaled.expert_steps_target
    rate, borrowed = scaled.steady_step_s, scaled.borrowed
    measured_short, measured_target = scaled.denoise_short_s, scaled.denoise_target_s
    big = request.model_copy(update={"num_inference_steps": target})
    quote_short = quote(request, model.preset, coefficients=data)
    quote_target = quote(big, model.preset, coefficients=data)
    text_s, vae_s = result.timings["text_encode_s"], result.timings["vae_decode_s"]
    passes = 2 if quote_short.cfg else 1
    return {
        "size": size,
        "steps": steps,
        "patches": quote_short.patches,
        "step_s": step_s,
        "expert_steps_short": [high, low],
        "expert_steps_target": [high_t, low_t],
        "steady_step_s": rate,
        "steady_rate_borrowed_from_other_expert": borrowed,
        "measured_per_pass_s": {k: v / passes for k, v in rate.items()},
        "predicted_per_pass_s": quote_short.experts[0].seconds_per_pass,
        "text_encode_s": text_s,
        "vae_decode_s": vae_s,
        "measured_denoise_short_s": measured_short,
        "predicted_denoise_short_s": quote_short.seconds,
        "short_rel_error": quote_short.seconds / measured_short - 1,
        "target_steps": target,
        "measured_denoise_target_s": measured_target,
        "predicted_denoise_target_s": quote_target.seconds,
        "denoise_rel_error": quote_target.seconds / measured_target - 1,
        "measured_whole_target_s": measured_target + text_s + vae_s,
        "predicted_whole_target_s": quote_target.seconds + text_s + vae_s,
        "whole_rel_error": (quote_target.seconds + text_s + vae_s) / (measured_target + text_s + vae_s) - 1,
        "units_target": quote_target.units,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if options.device.startswith("cuda") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/pricing_validate.json")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, tiny sizes")
    parser.add_argument("--calibration", default=None, help="a pricing_calibrate.py result whose entry to use")
    parser.add_argument("--coefficients", default=None, help="a coefficients file (default: the packaged one)")
    parser.add_argument("--runs", default="832x480x81:4,1280x720x81:3", help="SIZE:STEPS,...")
    parser.add_argument("--target-steps", type=int, default=40)
    args = parser.parse_args()
    info = device_info()
    if args.smoke:
        preset, warm, args.runs = "wan-tiny-random", "16x16x1", "64x48x5:4,128x96x9:3"
        options = RuntimeOptions()
    else:
        preset, warm = "wan-a14b-shape", "416x240x17"
        options = RuntimeOptions(device="cuda", dtype="bfloat16", vae_dtype="bfloat16", offload_text_encoder=True)

    if args.smoke:
        # No packaged coefficients for the tiny model: calibrate it here first.
        entry = calibrate(preset, sizes=["16x16x1", "64x48x5", "128x96x9", "128x128x17"], repeats=3)
        data = CoefficientsFile(entries=(entry,))
    elif args.calibration:
        entry = CoefficientEntry.model_validate(json.loads(Path(args.calibration).read_text())["entry"])
        data = CoefficientsFile(entries=(entry,))
    else:
        packaged = load_coefficients(args.coefficients)
        gpu = hardware(options.device).device
        data = CoefficientsFile(entries=tuple(e for e in packaged.entries if e.gpu == gpu and preset in e.models)[:1])
        if not data.entries:
            raise SystemExit(f"no coefficients for {preset} on {gpu}: run tools/pricing_calibrate.py first")
    entry = data.entries[0]
    print(f"device: {info.get('gpu') or 'cpu'}; coefficients: {entry.status}, {entry.gpu}, {entry.date}", flush=True)

    begin = time.perf_counter()
    model = load_model(preset, options.load)
    _sync(options.device)
    build_s = time.perf_counter() - begin
    print(f"built {preset} in {build_s:.1f} s", flush=True)
    begin = time.perf_counter()
    timed_generation(model, options, short_request(warm, 1))
    warmup_s = time.perf_counter() - begin

    runs = []
    for spec in args.runs.split(","):
        size, steps = spec.split(":")
        print(f"run {size}, {steps} steps", flush=True)
        runs.append(measure(model, options, data, size, int(steps), args.target_steps))
    result = {
        "bench": "pricing_validate",
        "device": info,
        "smoke": args.smoke,
        "model": preset,
        "options": options.model_dump(mode="json"),
        "coefficients": {"gpu": entry.gpu, "status": entry.status, "date": entry.date, "provenance": entry.provenance},
        "build_s": build_s,
        "warmup_s": warmup_s,
        "runs": runs,
        "worst_denoise_rel_error": max(abs(r["denoise_rel_error"]) for r in runs),
        "worst_whole_rel_error": max(abs(r["whole_rel_error"]) for r in runs),
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")
    print(f"build {build_s:.1f} s, warm-up {warmup_s:.1f} s; {entry.status} coefficients of {entry.date}")
    print(
        f"{'size':>12} {'steps':>5} {'pass meas/pred s':>18} {'denoise@40 meas/pred s':>24} {'err':>7} "
        f"{'text s':>7} {'vae s':>6} {'whole@40 meas/pred s':>22} {'err':>7}"
    )
    for r in runs:
        per_pass = statistics.mean(r["measured_per_pass_s"].values())
        print(
            f"{r['size']:>12} {r['steps']:>5} {per_pass:>8.3f}/{r['predicted_per_pass_s']:<9.3f} "
            f"{r['measured_denoise_target_s']:>11.1f}/{r['predicted_denoise_target_s']:<12.1f} {r['denoise_rel_error']:>+7.1%} "
            f"{r['text_encode_s']:>7.1f} {r['vae_decode_s']:>6.1f} "
            f"{r['measured_whole_target_s']:>10.1f}/{r['predicted_whole_target_s']:<11.1f} {r['whole_rel_error']:>+7.1%}"
        )


if __name__ == "__main__":
    main()
