"""Seconds of the RGB → yuv420p conversion and of the whole mp4 encode, per yuv method.

The conversion changed from a float64 matrix product (``bt601-float64``, whose bytes depended on
the BLAS kernels of the CPU) to exact integer arithmetic (``bt601-integer``, docs/determinism.md).
This times both on the same frames (seeded random RGB, or a smooth gradient that compresses like
video) at a generation's size, on this host's CPU, with the encoder settings of the performance
table's kept configuration (8 encoder threads), and checks that the integer method gives the same
bytes on repeat.

    PYTHONPATH=src python3 bench/yuv_speed.py --out bench/results/yuv_speed_<host>_<date>.json
    PYTHONPATH=src python3 bench/yuv_speed.py --size 128x128x17 --out /tmp/yuv.json   # quick
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result
from ditproof.protocol.options import VideoEncoding
from ditproof.video import encode_video, rgb_to_yuv420p

METHODS = ("bt601-float64", "bt601-integer")


def frames_of(width: int, height: int, count: int) -> np.ndarray:
    """Frames that move: a gradient drifting by a few pixels per frame plus seeded noise."""
    rng = np.random.default_rng(20261205)
    ys, xs = np.mgrid[0:height, 0:width]
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for f in range(count):
        base = np.stack([(xs + 3 * f) % 256, (ys + 2 * f) % 256, (xs + ys + f) % 256], axis=-1)
        noise = rng.integers(-8, 9, size=base.shape)
        out[f] = np.clip(base + noise, 0, 255).astype(np.uint8)
    return out


def seconds(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="832x480x81", help="WIDTHxHEIGHTxFRAMES")
    parser.add_argument("--threads", type=int, default=8, help="encoder threads (the kept configuration's 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    width, height, count = (int(v) for v in args.size.split("x"))
    frames = frames_of(width, height, count)
    rows = []
    for method in METHODS:
        convert = seconds(lambda m=method: [rgb_to_yuv420p(f, m) for f in frames], args.repeats)
        encoding = VideoEncoding.model_validate({"threads": args.threads, "yuv": method})
        digests: set[str] = set()

        def encode(e: VideoEncoding = encoding, seen: set[str] = digests) -> None:
            seen.add(hashlib.sha256(encode_video(frames, 16, e)).hexdigest())

        encode_s = seconds(encode, args.repeats)
        rows.append(
            {
                "method": method,
                "convert_s": statistics.median(convert),
                "encode_s": statistics.median(encode_s),
                "convert_all_s": convert,
                "encode_all_s": encode_s,
                "repeat_equal": len(digests) == 1,
                "video_sha256": sorted(digests),
            }
        )
    print(f"{args.size}, {args.threads} encoder threads, median of {args.repeats}")
    print(f"{'method':<16}{'convert s':>11}{'encode s':>10}  repeat equal")
    for row in rows:
        print(f"{row['method']:<16}{row['convert_s']:>11.3f}{row['encode_s']:>10.3f}  {row['repeat_equal']}")
    write_result(
        args.out,
        {"bench": "yuv_speed", "device": device_info(), "size": args.size, "threads": args.threads, "rows": rows},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
