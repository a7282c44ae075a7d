"""Does the VAE decode give the same frames whatever the free GPU memory?

The real-size Wan VAE (seeded weights, bf16, as in ``wan-a14b-shape``) decodes a seeded latent
of the 480p shape through the generation path's :func:`decode_frames`, once per process, after
first filling the GPU so that only ``--free-gib`` GiB stay free (none: the whole card free).
PyTorch's cuDNN convolutions pick an execution plan per shape among those whose workspace fits
the memory available at their first call, so frames may depend on what else the process holds;
run this at several ``--free-gib`` values (separate processes) and compare the frames' sha256.

    PYTHONPATH=src python3 bench/vae_determinism.py --out $OUT/vae_free_4.json --free-gib 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VaePipe, device_info, seeded_a14b_vae, write_result
from ditproof.generation.generate import decode_frames
from ditproof.hashing import sha256_bytes
from ditproof.randomness import cpu_normal

SIZES = {"480p": (832, 480, 81), "720p": (1280, 720, 81)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--free-gib", type=float, default=None, help="GiB left free before decoding")
    parser.add_argument("--size", default="480p", choices=sorted(SIZES))
    parser.add_argument("--deterministic", action="store_true", help="torch.backends.cudnn.deterministic")
    parser.add_argument("--sequence", default=None, help="sizes decoded one after another in this process")
    args = parser.parse_args()
    torch.backends.cudnn.deterministic = args.deterministic
    vae = seeded_a14b_vae("cuda", torch.bfloat16)
    if args.sequence:
        decode_sequence(vae, args.sequence.split(","), args.out)
        return
    width, height, frames = SIZES[args.size]
    latent = cpu_normal(7, (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)).to("cuda")
    hog = None
    if args.free_gib is not None:
        free, _ = torch.cuda.mem_get_info()
        keep = int(args.free_gib * 2**30)
        if free > keep:
            hog = torch.empty(free - keep, dtype=torch.uint8, device="cuda")
    free_before = torch.cuda.mem_get_info()[0] / 2**30
    began = time.perf_counter()
    try:
        with torch.inference_mode():
            frames_u8 = decode_frames(VaePipe(vae), latent)
        torch.cuda.synchronize()
        result: dict[str, object] = {"frames_sha256": sha256_bytes(frames_u8.tobytes()), "shape": list(frames_u8.shape)}
    except torch.OutOfMemoryError as exc:
        result = {"error": f"OutOfMemoryError: {str(exc)[:200]}"}
    seconds = time.perf_counter() - began
    result.update(
        {
            "device": device_info(),
            "size": args.size,
            "free_gib_asked": args.free_gib,
            "free_gib_before_decode": free_before,
            "cudnn_deterministic": args.deterministic,
            "cudnn_wscap_env": os.environ.get("CUDNN_CONV_WSCAP_DBG"),
            "decode_s": seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
    )
    del hog
    write_result(args.out, result)
    print({k: v for k, v in result.items() if k != "device"})


def decode_sequence(vae: torch.nn.Module, sizes: list[str], out: str) -> None:
    """Decodes each size's seeded latent in turn; a size decoded twice must give the same frames
    (and the same mp4 bytes, encoded twice with the default pinned encoding)."""
    from ditproof.protocol.options import VideoEncoding
    from ditproof.video import encode_video

    rows = []
    for size in sizes:
        width, height, frames = SIZES[size]
        latent = cpu_normal(7, (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)).to("cuda")
        with torch.inference_mode():
            frames_u8 = decode_frames(VaePipe(vae), latent)
        videos = [sha256_bytes(encode_video(frames_u8, 16, VideoEncoding())) for _ in range(2)]
        rows.append({"size": size, "frames_sha256": sha256_bytes(frames_u8.tobytes()), "video_sha256": videos})
        print(rows[-1], flush=True)
    write_result(out, {"device": device_info(), "sequence": rows})


if __name__ == "__main__":
    main()
