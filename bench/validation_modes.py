"""Cost of the validation modes: full regeneration vs every checkpoint segment vs spot checks.

One executor run with a checkpoint every ``--checkpoint-every`` steps, then each mode validates it
on the same device and model (a fresh load, as a validator would have). Reports wall seconds, the
denoising steps re-run, and both as a fraction of the full regeneration.

    PYTHONPATH=src python3 bench/validation_modes.py --out $OUT/validation_modes.json \
        --preset wan-a14b-shape --device cuda --width 832 --height 480 --frames 17 --steps 40
    PYTHONPATH=src python3 bench/validation_modes.py --out $OUT/validation_modes.json \
        --preset wan-shapes-small --device cuda --dtype bfloat16 --width 128 --height 128 --frames 17 \
        --text-encoder-dtype float32 --steps 40 --segments 16   # the Stage 1 v2 GPU reference
    PYTHONPATH=src python3 bench/validation_modes.py --out $OUT/validation_modes.json \
        --preset wan-a14b-shape --device cuda --width 832 --height 480 --frames 81 --steps 40 \
        --segments 16 --repeats 2 --no-full [--encode-threads 8]   # spot checks against the executor's generation
    PYTHONPATH=src python3 bench/validation_modes.py --smoke --out /tmp/validation_modes.json   # CPU, tiny
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result
from ditproof.generation.execute import execute
from ditproof.models.registry import load_model
from ditproof.protocol.options import CaptureOptions, CheckpointSchedule, DType, RuntimeOptions, VideoEncoding
from ditproof.protocol.request import GenerationRequest
from ditproof.protocol.verdict import Verdict
from ditproof.validation import ThresholdPolicy, validate, validate_checkpoints, validate_spot_check

ENTROPY = "be" * 32

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    """Wall seconds, process CPU seconds (steadier on a shared CPU) and the result of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="wan-tiny-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--text-encoder-dtype", default=None, help="default: the experts' dtype")
    parser.add_argument(
        "--vae-dtype", default=None, help="default: bfloat16 for A14B shape (its allowed class), else float32"
    )
    parser.add_argument(
        "--segments", type=int, default=0, help="commit the per-phase schedule of this many segments instead"
    )
    parser.add_argument(
        "--dtype", default=None, help="the experts' dtype (default: bfloat16 for A14B shape, else float32)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode (median reported)")
    parser.add_argument("--spot", default="1,2", help="spot-check sizes k (segments per expert phase), comma-separated")
    parser.add_argument(
        "--no-full",
        action="store_true",
        help="time the spot checks only, against the executor's generation (A14B: a regeneration is minutes)",
    )
    parser.add_argument(
        "--encode-threads",
        type=int,
        default=1,
        help="the executor's libx264 threads (part of its encoding, so the validator's re-encode uses them too)",
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 8 steps (tests the script)")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.device, args.steps, args.checkpoint_every, args.repeats = "wan-tiny-random", "cpu", 8, 2, 1

    dtype: DType = args.dtype or ("bfloat16" if args.preset == "wan-a14b-shape" else "float32")
    if args.segments:
        steps: tuple[int, ...] = ()
        capture = CaptureOptions(schedule=CheckpointSchedule(segments=args.segments))
    else:
        steps = tuple(range(args.checkpoint_every, args.steps, args.checkpoint_every))
        capture = CaptureOptions(checkpoint_steps=steps)
    options = RuntimeOptions(
        device=args.device,
        dtype=dtype,
        vae_dtype=args.vae_dtype or ("bfloat16" if args.preset == "wan-a14b-shape" else "float32"),
        text_encoder_dtype=args.text_encoder_dtype,
        capture=capture,
        encoding=VideoEncoding(threads=args.encode_threads),
    )
    request = GenerationRequest(
        prompt="a red circle moves left on a blue background",
        width=args.width,
        height=args.height,
        num_frames=args.frames,
        num_inference_steps=args.steps,
    )
    work = Path(tempfile.mkdtemp())
    executor = load_model(args.preset, options.load)
    start = time.perf_counter()
    record = execute(request, executor, options, work, request_id="bench-1", entropy=ENTROPY)
    generate_s = time.perf_counter() - start
    del executor  # the validator loads its own copy (and on a GPU, two A14B-shape copies would not fit)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    model = load_model(args.preset, options.load)
    video = work / "video.mp4"
    # Honest runs in the same class match bit for bit; the frame threshold only covers an encoder
    # that re-encodes the same frames differently.
    policy = ThresholdPolicy(explicit={"psnr": 35.0, "latent_rel_l2_segment": 1e-3})

    modes: dict[str, Callable[[], Verdict]] = {}
    if not args.no_full:
        modes["full"] = lambda: validate(record, video, model, policy=policy)
        modes["checkpoints"] = lambda: validate_checkpoints(record, video, model, policy=policy)
    for k in (int(x) for x in args.spot.split(",")):
        for i in range(args.repeats):
            modes[f"spot-check k={k} #{i}"] = partial(
                validate_spot_check, record, video, model, k, f"{i:032x}", policy=policy
            )

    # Untimed: the first run pays for lazy initialisation (kernels, caches).
    validate_spot_check(record, video, model, 1, "ff" * 16, policy=policy)
    rows: list[dict[str, Any]] = []
    for name, fn in modes.items():
        runs = [timed(fn) for _ in range(1 if name.startswith("spot") else args.repeats)]
        verdict = runs[-1][2]
        rows.append(
            {
                "mode": name,
                "seconds": statistics.median(t for t, _, _ in runs),
                "cpu_seconds": statistics.median(c for _, c, _ in runs),
                "decision": verdict.decision,
                "reason": verdict.reason,
                "regenerated_steps": verdict.regenerated_steps,
                "total_steps": verdict.total_steps,
                "steps_fraction": verdict.cost_fraction,
                "segments": [s.label for s in verdict.segments],
            }
        )
    # The denominator: the full validation, else the executor's generation (its wall time only).
    full_s, full_cpu = (rows[0]["seconds"], rows[0]["cpu_seconds"]) if not args.no_full else (generate_s, None)
    for row in rows:
        row["time_fraction"] = row["seconds"] / full_s
        row["cpu_fraction"] = row["cpu_seconds"] / full_cpu if full_cpu else None

    result = {
        "device": device_info(),
        "preset": args.preset,
        "request": request.model_dump(),
        "checkpoint_steps": sorted({c.step for c in record.checkpoints}),
        "encoding": record.video.encoding.model_dump(),
        "generate_s": generate_s,
        # The executor's phases (its first generation after the load): what the denominator holds.
        "generate_timings": record.timings.model_dump(mode="json"),
        "denominator": "the executor's generation" if args.no_full else "the full validation",
        "rows": rows,
    }
    write_result(args.out, result)
    print(
        f"{args.preset} {args.width}x{args.height}x{args.frames}, {args.steps} steps, checkpoints {result['checkpoint_steps']}"
    )
    print(f"{'mode':<22} {'seconds':>8} {'time frac':>9} {'cpu frac':>8} {'steps':>7} {'step frac':>9}  decision")
    for row in rows:
        steps_done = f"{row['regenerated_steps']}/{row['total_steps']}" if row["total_steps"] else "-"
        fraction = f"{row['steps_fraction']:.3f}" if row["steps_fraction"] is not None else "-"
        cpu_fraction = f"{row['cpu_fraction']:.2f}" if row["cpu_fraction"] is not None else "-"
        print(
            f"{row['mode']:<22} {row['seconds']:>8.2f} {row['time_fraction']:>9.2f} {cpu_fraction:>8} "
            f"{steps_done:>7} {fraction:>9}  {row['decision']}"
        )
    refused = [row for row in rows if row["decision"] != "valid"]
    if refused:  # an honest record must pass every mode: a timing of a refusal measures nothing
        raise SystemExit(f"not valid: {refused[0]['mode']}: {refused[0]['reason']}")


if __name__ == "__main__":
    main()
