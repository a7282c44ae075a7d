"""Time of each validation metric on one video, per frame and for a whole 81-frame 480p video.

    PYTHONPATH=src python3 bench/metrics_speed.py --out $OUT/metrics_speed.json
    PYTHONPATH=src python3 bench/metrics_speed.py --smoke --out /tmp/metrics_speed.json   # CPU, tiny

Timings do not depend on weight values, so the learned metrics run with random stand-in weight
files of the real shapes (``ditproof.metrics.testing``) written to a temporary folder; nothing
is downloaded. SSIM and MS-SSIM need torchmetrics and are skipped (and reported so) where it is
not installed. Each metric: one warm-up call, then the median of ``--repeats`` calls over the
whole video (frames in chunks of ``--batch``), device synchronized.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result
from ditproof.metrics.testing import write_random_weights

METRICS = ("psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg", "dists")


def _video(frames: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    noise = rng.integers(-3, 4, a.shape)
    return a, np.clip(a.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (17 frames of 192x176)")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--batch", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.frames, args.width, args.height, args.repeats, args.batch = 5, 192, 176, 1, 5

    tmp = Path(tempfile.mkdtemp(prefix="ditproof-metric-weights-"))
    write_random_weights(tmp / "torch" / "hub" / "checkpoints", tmp / "heads", seed=0)
    os.environ["TORCH_HOME"] = str(tmp / "torch")
    os.environ["DITPROOF_METRIC_WEIGHTS"] = str(tmp / "heads")
    from ditproof.metrics.registry import frame_values

    a, b = _video(args.frames, args.height, args.width, seed=1)
    rows: list[dict[str, str | float | None]] = []
    for metric in METRICS:
        try:
            frame_values(metric, a[: args.batch], b[: args.batch], device, args.batch)  # warm-up and load
        except ImportError as exc:
            rows.append({"metric": metric, "skipped": f"{type(exc).__name__}: {exc}"})
            continue
        times = []
        for _ in range(args.repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            frame_values(metric, a, b, device, args.batch)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        video_s = statistics.median(times)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        rows.append(
            {
                "metric": metric,
                "video_s": round(video_s, 4),
                "per_frame_ms": round(1000 * video_s / args.frames, 3),
                "peak_gib": None if peak is None else round(peak, 2),
            }
        )
    result = {
        "benchmark": "metrics_speed",
        "device": device,
        "frames": args.frames,
        "width": args.width,
        "height": args.height,
        "batch": args.batch,
        "repeats": args.repeats,
        "note": "includes host-to-device copies of uint8 frames; random stand-in weights (timing only)",
        "rows": rows,
        **device_info(),
    }
    write_result(args.out, result)
    print(f"{args.frames} frames of {args.width}x{args.height} on {device} ({result.get('gpu') or 'cpu'})")
    print(f"{'metric':<12} {'video s':>9} {'ms/frame':>9} {'peak GiB':>9}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['metric']:<12} skipped ({row['skipped']})")
        else:
            peak_text = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
            print(f"{row['metric']:<12} {row['video_s']:>9.3f} {row['per_frame_ms']:>9.2f} {peak_text:>9}")


if __name__ == "__main__":
    main()
