"""How far a benign cross-class regeneration and each shortcut cheat lie from the reference, at
every committed step of the default checkpoint schedule.

For each prompt: the reference run (the published algorithm), benign runs of other classes (CFG
batched; one CPU thread) and one run per shortcut; at each committed step, the relative L2 of the latent against
the reference's and the relative distance of the JL fingerprints (what a validator measures
without the files); and the frames after the pinned H.264 encoding (crf 18): the worst frame's
PSNR against the reference's encoding, beside the encoder's own loss on the reference (the worst
frame's PSNR of its encoding against its raw frames). Also the compute each shortcut saves at
this size and at A14B size.

    PYTHONPATH=src python tools/trajectory_cheats.py --preset wan-shapes-small --prompts 2 \
        --out bench/results/trajectory_cheats_shapes_cpu_DATE.json
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from ditproof.experiment.prompts import PROMPTS_DIR, SHIPPED, load_prompts
from ditproof.generation.generate import generate
from ditproof.generation.shortcuts import compute_saving
from ditproof.hashing import atomic_write_bytes, canonical_json
from ditproof.metrics.registry import score_videos
from ditproof.models.registry import load_model
from ditproof.protocol.options import (
    CfgOffTail,
    LoadOptions,
    LowNoiseReuse,
    RuntimeOptions,
    SkipBlock,
    UncondReuseTail,
    VideoEncoding,
)
from ditproof.protocol.request import GenerationRequest
from ditproof.validation.fingerprints import fingerprint_distance
from ditproof.validation.trajectory import relative_l2, step_position
from ditproof.video import decode_video, encode_video

PROMPTS = [
    "a red circle moves left on a blue background",
    "a yellow square moves up on a black background",
    "a green triangle moves right on a white background",
    "a blue circle moves down on a yellow background",
]
SHORTCUTS: dict[str, LowNoiseReuse | CfgOffTail | UncondReuseTail | SkipBlock] = {
    "low-noise-reuse": LowNoiseReuse(kind="low-noise-reuse"),
    "cfg-off-tail-3": CfgOffTail(kind="cfg-off-tail", steps=3),
    "uncond-reuse-tail-8": UncondReuseTail(kind="uncond-reuse-tail", steps=8),
    "skip-block-low-0": SkipBlock(kind="skip-block", expert="low-noise", block=0),
    "skip-block-high-0": SkipBlock(kind="skip-block", expert="high-noise", block=0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="wan-tiny-random")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: 40 (tiny) or the model's native steps")
    parser.add_argument("--size", default=None, help="WxHxF (default: 64x48x5 tiny, 128x128x17 otherwise)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tiny = args.preset == "wan-tiny-random"
    width, height, frames = map(int, (args.size or ("64x48x5" if tiny else "128x128x17")).split("x"))
    steps = args.steps or (40 if tiny else 20)
    model = load_model(args.preset, LoadOptions())
    layers = int(model.pipeline.transformer.config.num_layers)
    rows = []
    started = time.perf_counter()
    # The four fixed prompts, then the shipped model's held-out captions.
    prompts = PROMPTS + [p.prompt for p in load_prompts(PROMPTS_DIR / SHIPPED["grammar"])]
    for index, prompt in enumerate(prompts[: args.prompts]):
        request = GenerationRequest(
            prompt=prompt, width=width, height=height, num_frames=frames, num_inference_steps=steps
        )
        seed = 1000 + index
        reference = generate(request, seed, model, RuntimeOptions())
        switch = reference.steps["high_noise_steps"]
        encoding = VideoEncoding()
        assert reference.frames is not None
        ref_video = decode_video(encode_video(reference.frames, request.fps, encoding))
        encoder_loss = score_videos(["psnr"], ref_video, reference.frames)["psnr:worst"]
        ref_latents = {step: latent for step, latent in reference.capture.latents.values()}
        committed = sorted(s for s in ref_latents if s > 0)
        runs = {
            "benign: cfg batched": RuntimeOptions(cfg_mode="batched"),
            "benign: 1 cpu thread": RuntimeOptions(cpu_threads=1),
        }
        runs.update({name: RuntimeOptions(shortcut=shortcut) for name, shortcut in SHORTCUTS.items()})
        for name, options in runs.items():
            result = generate(request, seed, model, options)
            latents = {step: latent for step, latent in result.capture.latents.values()}
            points = []
            for step in committed:
                phase, fraction = step_position(step, steps, switch)
                points.append(
                    {
                        "step": step,
                        "phase": phase,
                        "fraction": round(fraction, 4),
                        "latent_rel_l2": relative_l2(latents[step], ref_latents[step]),
                        "fingerprint_rel_l2": fingerprint_distance(
                            result.capture.fingerprints[step - 1], reference.capture.fingerprints[step - 1]
                        ),
                    }
                )
            shortcut = options.shortcut
            assert result.frames is not None
            video = decode_video(encode_video(result.frames, request.fps, encoding))
            psnr = score_videos(["psnr"], video, ref_video)["psnr:worst"]
            rows.append(
                {
                    "prompt": prompt,
                    "run": name,
                    "switch": switch,
                    "saving_here": compute_saving(shortcut, steps, switch, layers),
                    "saving_a14b_40_steps": compute_saving(shortcut, 40, 26, 40),
                    "h264_psnr_worst_vs_reference": psnr,
                    "h264_psnr_worst_reference_encoder_loss": encoder_loss,
                    "points": points,
                }
            )
            last = points[-1]
            pre = next(p for p in points if p["step"] == switch)
            print(
                f"{index} {name:<22} pre_switch {pre['latent_rel_l2']:.2e}  final {last['latent_rel_l2']:.2e}  "
                f"fp final {last['fingerprint_rel_l2']:.2e}  psnr {psnr:.1f} (encoder {encoder_loss:.1f})",
                flush=True,
            )
    summary = {
        "bench": "trajectory_cheats",
        "date": datetime.date.today().isoformat(),
        "preset": args.preset,
        "device": "cpu",
        "machine": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "request": {"width": width, "height": height, "num_frames": frames, "steps": steps},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    atomic_write_bytes(args.out, canonical_json(summary) + b"\n")


if __name__ == "__main__":
    main()
