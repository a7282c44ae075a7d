r"""The VAE decode and the mp4 encode one after the other, and side by side.

The generation path hands the frames of each latent frame to a background mp4 encode as the VAE
decodes them (``decode_frames(..., on_frames=BackgroundEncode(...))``), so the CPU's x264 encode
runs while the GPU decodes the rest. This bench decodes a seeded latent with the real-size Wan
VAE (seeded weights, bf16 on a GPU, as in ``wan-a14b-shape``) or the shipped model's VAE, then:
serially (``decode_frames``, then ``encode_video``) and side by side, ``--repeats`` times each,
alternating. It prints seconds per video both ways, the saving, and whether the side-by-side
frames and mp4 are the serial ones byte for byte.

    PYTHONPATH=/tmp/site:src python3 bench/decode_encode_overlap.py --out $OUT/overlap_h100.json   # GPU, 480p+720p
    PYTHONPATH=src python3 bench/decode_encode_overlap.py --vae shipped --device cpu --sizes 128x128x17 \
        --encode-threads 1 --out bench/results/decode_encode_overlap_cpu_<date>.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VaePipe, device_info, seeded_a14b_vae, write_result
from ditproof.generation.generate import decode_frames
from ditproof.hashing import sha256_bytes
from ditproof.protocol.options import VideoEncoding
from ditproof.randomness import cpu_normal
from ditproof.video import BackgroundEncode, encode_video


def build_vae(kind: str, device: str) -> Any:
    if kind == "shipped":
        from ditproof.models.registry import load_model
        from ditproof.protocol.options import LoadOptions

        return load_model("wan-shapes-small", LoadOptions(device=device)).pipeline.vae
    return seeded_a14b_vae(device, torch.bfloat16 if device.startswith("cuda") else None)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one_size(pipe: VaePipe, size: str, device: str, encoding: VideoEncoding, repeats: int) -> dict[str, Any]:
    width, height, frames = (int(x) for x in size.split("x"))
    z_dim = int(pipe.vae.config.z_dim)
    latent = cpu_normal(7, (1, z_dim, (frames - 1) // 4 + 1, height // 8, width // 8)).to(device)
    decode_frames(pipe, latent)  # warm-up: kernel choices, allocator
    serial, overlapped, equal = [], [], []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        whole = decode_frames(pipe, latent)
        decoded = time.perf_counter()
        video = encode_video(whole, 16, encoding)
        serial.append({"decode_s": decoded - began, "encode_s": time.perf_counter() - decoded})
        sync(device)
        began = time.perf_counter()
        with BackgroundEncode(16, encoding) as encoder:
            streamed = decode_frames(pipe, latent, encoder)
            decoded = time.perf_counter()
            side_by_side = encoder.finish()
        overlapped.append({"decode_s": decoded - began, "encode_tail_s": time.perf_counter() - decoded})
        equal.append(bool((streamed == whole).all()) and side_by_side == video)
    serial_s = statistics.median(r["decode_s"] + r["encode_s"] for r in serial)
    overlapped_s = statistics.median(r["decode_s"] + r["encode_tail_s"] for r in overlapped)
    return {
        "size": size,
        "frames": frames,
        "serial": serial,
        "overlapped": overlapped,
        "serial_s": serial_s,
        "overlapped_s": overlapped_s,
        "saved_s": serial_s - overlapped_s,
        "bytes_equal": all(equal),
        "video_sha256": sha256_bytes(video),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--vae", default="a14b", choices=["a14b", "shipped"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="832x480x81,1280x720x81", help="WxHxF, comma-separated")
    parser.add_argument("--encode-threads", type=int, default=8, help="x264 threads (the kept configuration: 8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    encoding = VideoEncoding(threads=args.encode_threads)
    pipe = VaePipe(build_vae(args.vae, args.device))
    rows = []
    for size in args.sizes.split(","):
        rows.append(one_size(pipe, size, args.device, encoding, args.repeats))
        row = rows[-1]
        print(f"{size}: serial {row['serial_s']:.2f} s, side by side {row['overlapped_s']:.2f} s", flush=True)
    write_result(
        args.out,
        {"device": device_info(), "vae": args.vae, "encoding": encoding.model_dump(mode="json"), "rows": rows},
    )
    print(f"\n{'size':>12} {'decode':>7} {'encode':>7} {'serial':>7} {'side by side':>13} {'saved':>6}  bytes equal")
    for row in rows:
        decode = statistics.median(r["decode_s"] for r in row["serial"])
        encode = statistics.median(r["encode_s"] for r in row["serial"])
        print(
            f"{row['size']:>12} {decode:>7.2f} {encode:>7.2f} {row['serial_s']:>7.2f} {row['overlapped_s']:>13.2f} "
            f"{row['saved_s']:>6.2f}  {row['bytes_equal']}"
        )


if __name__ == "__main__":
    main()
