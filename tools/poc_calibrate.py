"""PoC throughput and per-nonce distance calibration with wan-a14b-shape (bf16) on one GPU.

Measures, on one GPU:
1. nonces per second of the PoC forward at the chosen PoC shape, for several batch sizes;
2. honest distances (batch sizes, attention kernels) and cheating distances (one expert, 1% of
   weights perturbed, FP8 weights, fewer layers) against a bf16 batch-16 reference, every nonce's
   distance kept, and the policy derived from them for the target error rates
   (:mod:`ditproof.poc.derive`);
3. the tiny model on the CPU (float32) against CUDA float32 and bfloat16.

The reference vectors go into the JSON, so that another card or configuration can be measured
against them later (``--honest-against``, below).

``--kept`` loads wan-a14b-shape in the kept fast configuration (fused projections, fused
elementwise kernels, regional torch.compile) and runs the PoC forwards with flash-attn-3 (the
other kernels stay as honest runtimes); the weight-swapping cheats (perturbed, FP8) swap the
fused GELU projections' weights per block there. ``--throughput-only`` builds the model,
measures the throughput rows (which say the configuration) and writes the JSON: a quick
before/after.

``--honest-against CAL`` measures one more honest runtime against a calibration (a file of
``ditproof poc calibrate --out``) without its cheats: this card and configuration (``--kept``,
``--batch-size``) compute the calibration's nonces, and every nonce's distance to its reference
vectors goes into a runtime file (``ditproof.poc-runtime/1``) that ``ditproof poc calibrate
--from CAL --honest RUN`` adds to the calibration. ``--expect-weights`` refuses a card whose
random weights differ from the calibration's (their fingerprint, printed by every run).

    PYTHONPATH=src python3 tools/poc_calibrate.py --out $OUT/poc_calibrate.json
    PYTHONPATH=src python3 tools/poc_calibrate.py --throughput-only --kept --out $OUT/poc_tput_kept.json
    PYTHONPATH=src python3 tools/poc_calibrate.py --smoke --out /tmp/poc_smoke.json   # CPU, tiny
    PYTHONPATH=src python3 tools/poc_calibrate.py --honest-against calibration.json --name "H200 bf16 batch 16" \
        --expect-weights FINGERPRINT --out $OUT/h200.json      # then: ditproof poc calibrate --from … --honest …

2,048 nonces per runtime take longer than one 600 s GPU call: run the calibration in parts over
contiguous nonce ranges (the tiny model in the first part only), then merge them and derive the
policy (the merge equals one run over the whole range):

    PYTHONPATH=src python3 tools/poc_calibrate.py --nonces 683 --first-nonce 0 --out $OUT/part0.json
    PYTHONPATH=src python3 tools/poc_calibrate.py --nonces 683 --first-nonce 683 --skip-tiny --out $OUT/part1.json
    PYTHONPATH=src python3 tools/poc_calibrate.py --nonces 682 --first-nonce 1366 --skip-tiny --out $OUT/part2.json
    ditproof poc calibrate --from part0.json --from part1.json --from part2.json \
        --out calibration.json --policy-out policy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py
from common import device_info, write_result
from ditproof.generation.attention import attention_for_run
from ditproof.hashing import sha256_tensor
from ditproof.models.registry import LoadedModel, load_model
from ditproof.poc.calibrate import CalibrationSettings, RuntimeSpec, calibrate
from ditproof.poc.calibration_data import (
    format_derivation,
    format_table,
    runtime_run,
    with_runtimes,
)
from ditproof.poc.compute import PADDED_SHAPES, PocModel, compute_vectors
from ditproof.poc.deviations import fewer_layers
from ditproof.protocol.options import LoadOptions
from ditproof.protocol.poc import PocCalibration, PocParams


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def weights_fingerprint(model: LoadedModel) -> str:
    """sha256 over a few weight tensors of both experts: equal fingerprints, equal random weights."""
    parts = []
    for expert in (model.pipeline.transformer, model.pipeline.transformer_2):
        for block in (expert.blocks[0], expert.blocks[-1]):
            parts.append(sha256_tensor(block.attn1.to_q.weight))
            parts.append(sha256_tensor(block.ffn.net[2].weight))
    return sha256_tensor(torch.tensor([int(p[:8], 16) for p in parts], dtype=torch.int64))


KEPT = LoadOptions(device="cuda", dtype="bfloat16", fuse_projections=True, fuse_elementwise=True, compile="regional")
"""The kept fast configuration's load options (--kept); its attention kernel is KEPT_ATTENTION."""
KEPT_ATTENTION = "flash-attn-3"


def throughput(
    model: LoadedModel, params: PocParams, batch_size: int, nonces: int, attention: str = "sdpa"
) -> dict[str, Any]:
    """Nonces per second after warming up, and the peak memory, with ``attention``. A model compiled
    for static shapes warms up over ``2 * PADDED_SHAPES`` batches, so that the padded sub-batch sizes
    it meets (each a graph of its own) are compiled before the clock starts; eager, one batch."""
    poc = PocModel.from_loaded(model)
    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    warmup = batch_size * (2 * PADDED_SHAPES if poc.static_shapes else 1)
    with attention_for_run(experts, attention, poc.device):
        compute_vectors(poc, params, "aa" * 32, "warmup", list(range(warmup)), batch_size)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        sync()
        started = time.perf_counter()
        compute_vectors(poc, params, "bb" * 32, "throughput", list(range(nonces)), batch_size)
        sync()
    seconds = time.perf_counter() - started
    return {
        "config": {"load": model.load.model_dump(mode="json"), "attention_backend": attention},
        "batch_size": batch_size,
        "nonces": nonces,
        "seconds": seconds,
        "nonces_per_s": nonces / seconds,
        "tokens_per_nonce": params.tokens(),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, small shape (tests the script)")
    parser.add_argument(
        "--nonces", type=int, default=2048, help="Nonces per runtime (the honest rate is bounded over them)."
    )
    parser.add_argument(
        "--first-nonce", type=int, default=0, help="First nonce calibrated (a part of a calibration in parts)."
    )
    parser.add_argument("--skip-tiny", action="store_true", help="No tiny-model calibration (one part has it).")
    parser.add_argument(
        "--throughput-only", action="store_true", help="Build the model, measure throughput, write the JSON, exit."
    )
    parser.add_argument(
        "--kept",
        action="store_true",
        help="The kept fast configuration: fused projections and elementwise kernels, regional compile, "
        f"attention {KEPT_ATTENTION} (CUDA only).",
    )
    parser.add_argument("--latent", default="16,2,32,32", help="PoC latent C,F,H,W.")
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="Throughput batch sizes.")
    parser.add_argument("--skip-layers", type=int, default=1)
    parser.add_argument(
        "--honest-against",
        default=None,
        metavar="CAL",
        help="Measure only this card and configuration against a calibration file's reference vectors.",
    )
    parser.add_argument("--name", default=None, help="--honest-against: the runtime's name (say card and settings).")
    parser.add_argument("--batch-size", type=int, default=16, help="--honest-against: the batch size.")
    parser.add_argument("--device", default="cuda", help="--honest-against: the device (plain configuration).")
    parser.add_argument("--dtype", default="bfloat16", help="--honest-against: the dtype (plain configuration).")
    parser.add_argument(
        "--expect-weights", default=None, help="--honest-against: the calibration's weights fingerprint."
    )
    args = parser.parse_args()
    if args.honest_against:
        honest_against(args)
        return
    if args.kept and args.smoke:
        parser.error(f"--kept: got it with --smoke; allowed: --kept on a CUDA GPU only ({KEPT_ATTENTION} is CUDA-only)")
    if args.first_nonce < 0 or args.first_nonce + (32 if args.smoke else args.nonces) > 2**32 or args.nonces < 1:
        parser.error(
            f"--first-nonce/--nonces: got {args.first_nonce}/{args.nonces}; allowed: first nonce >= 0, nonces >= 1, "
            "first nonce + nonces <= 2**32"
        )

    channels, frames, height, width = (int(v) for v in args.latent.split(","))
    if args.smoke:
        frames, height, width = 1, 16, 16
    params = PocParams(
        latent_channels=channels, latent_frames=frames, latent_height=height, latent_width=width, text_len=args.text_len
    )
    nonces = 32 if args.smoke else args.nonces
    result: dict[str, Any] = {
        "device": device_info(),
        "params": params.model_dump(mode="json"),
        "first_nonce": args.first_nonce,
        "nonces": nonces,
    }
    started_all = time.perf_counter()

    # 1. The tiny model: CPU float32 reference against CUDA float32 (honest) and bfloat16.
    tiny: PocCalibration | None = None
    if not (args.skip_tiny or args.throughput_only):
        tiny, tiny_fingerprint = calibrate_tiny(params, nonces, args.first_nonce)
        result["tiny"] = {"calibration": tiny.model_dump(mode="json"), "weights_fingerprint": tiny_fingerprint}
        print(f"tiny model done at {time.perf_counter() - started_all:.0f} s", flush=True)

    # 2. The main model.
    attention = KEPT_ATTENTION if args.kept else "sdpa"
    if args.smoke:
        main_model = load_model("wan-tiny-random", LoadOptions(dtype="bfloat16"))
        kernels = ["sdpa-math"]
        sizes = [1, 8]
    else:
        started = time.perf_counter()
        options = KEPT if args.kept else LoadOptions(device="cuda", dtype="bfloat16")
        main_model = load_model("wan-a14b-shape", options)
        # PoC needs no text encoder: free its 11 GB for larger batches.
        main_model.pipeline.text_encoder.to("meta")
        torch.cuda.empty_cache()
        sync()
        result["build_s"] = time.perf_counter() - started
        kernels = ["sdpa-flash", "sdpa-efficient", "sdpa-cudnn"]
        sizes = [int(v) for v in args.batch_sizes.split(",")]
    result["model"] = main_model.preset
    result["model_revision"] = main_model.revision
    result["config"] = {"load": main_model.load.model_dump(mode="json"), "attention_backend": attention}
    fingerprint = weights_fingerprint(main_model)
    result["throughput"] = []
    for size in sizes:
        try:
            row = throughput(main_model, params, size, max(2 * size, 16 if args.smoke else 64), attention)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            row = {"batch_size": size, "error": "out of memory"}
        result["throughput"].append(row)
        print(f"throughput batch {size}: {row}", flush=True)

    main_calibration: PocCalibration | None = None
    if not args.throughput_only:
        main_calibration = calibrate_main(
            main_model, params, nonces, args.first_nonce, args.skip_layers, attention, kernels, args.smoke
        )
        result["main"] = {"calibration": main_calibration.model_dump(mode="json"), "weights_fingerprint": fingerprint}
    result["total_s"] = time.perf_counter() - started_all
    write_result(args.out, result)

    print()
    last = args.first_nonce + nonces - 1
    if tiny is not None:
        print(f"== tiny model (reference CPU float32), nonces {args.first_nonce}-{last} ==")
        for line in format_table(tiny):
            print(line)
    if main_calibration is not None:
        print(f"== {main_model.preset} on {result['device'].get('gpu') or 'cpu'}, nonces {args.first_nonce}-{last} ==")
        for line in format_table(main_calibration):
            print(line)
    print(f"configuration: {json.dumps(result['config'], sort_keys=True)}")
    print(f"{'batch':>6} {'nonces/s':>10} {'tokens/nonce':>13} {'peak GiB':>9}")
    for row in result["throughput"]:
        if "error" in row:
            print(f"{row['batch_size']:>6} {row['error']}")
        else:
            peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
            print(f"{row['batch_size']:>6} {row['nonces_per_s']:>10.1f} {row['tokens_per_nonce']:>13} {peak:>9}")
    print(f"total {result['total_s']:.0f} s")


def honest_against(args: argparse.Namespace) -> None:
    """One more honest runtime (this card, ``--kept`` or plain, ``--batch-size``) against a
    calibration's reference vectors: the runtime file, and the policy derived with it."""
    try:
        calibration = PocCalibration.model_validate_json(Path(args.honest_against).read_bytes())
    except (OSError, ValueError) as exc:
        sys.exit(
            f"--honest-against: cannot read {args.honest_against} as a calibration ({str(exc).splitlines()[0]}); "
            "allowed: a file written by `ditproof poc calibrate --out` (merge a tool result's parts with --from first)"
        )
    if not calibration.reference_vectors:
        sys.exit(
            f"--honest-against: {args.honest_against} keeps no reference vectors; allowed: a calibration that does"
        )
    if not args.name:
        sys.exit("--name: missing; allowed: a name that says the card and the configuration, e.g. 'H200 bf16 batch 16'")
    started = time.perf_counter()
    model = load_model(calibration.model, KEPT if args.kept else LoadOptions(device=args.device, dtype=args.dtype))
    model.pipeline.text_encoder.to("meta")  # PoC needs no text encoder
    torch.cuda.empty_cache()
    fingerprint = weights_fingerprint(model)
    print(f"weights fingerprint {fingerprint}", flush=True)
    if args.expect_weights and fingerprint != args.expect_weights:
        sys.exit(
            f"--expect-weights: this card's weights fingerprint is {fingerprint}, the calibration's "
            f"{args.expect_weights}: its random weights differ, so distances would measure the weights, not the runtime"
        )
    if model.revision != calibration.model_revision:
        sys.exit(f"model revision {model.revision} differs from the calibration's {calibration.model_revision}")
    attention = KEPT_ATTENTION if args.kept else "sdpa"
    poc = PocModel.from_loaded(model)
    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    nonces = list(range(calibration.first_nonce, calibration.first_nonce + calibration.nonces))
    with attention_for_run(experts, attention, poc.device):
        sync()
        computed = time.perf_counter()
        vectors = compute_vectors(
            poc, calibration.params, calibration.block_hash, calibration.public_key, nonces, args.batch_size
        )
        sync()
    seconds = time.perf_counter() - computed
    info = device_info()
    run = runtime_run(
        calibration,
        args.name,
        vectors.astype(np.float32),
        created=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        device=f"{poc.device} ({info.get('gpu')})",
        torch_version=torch.__version__,
        configuration={
            "load": model.load.model_dump(mode="json"),
            "attention_backend": attention,
            "batch_size": args.batch_size,
            "seconds": seconds,
            "nonces_per_s": len(nonces) / seconds,
            "total_s": time.perf_counter() - started,
            "device_info": info,
        },
        weights_fingerprint=fingerprint,
    )
    run.save(args.out)
    values = np.array(run.distances.values)
    print(
        f"{args.name}: {len(nonces)} nonces in {seconds:.0f} s ({len(nonces) / seconds:.1f}/s); distance p50 "
        f"{np.median(values):.3g}, p99 {np.quantile(values, 0.99):.3g}, max {values.max():.3g}, exact "
        f"{(values == 0).mean():.1%}; beyond the calibration's dist_threshold {calibration.proposed.dist_threshold}: "
        f"{int((values > calibration.proposed.dist_threshold).sum())}"
    )
    for line in format_derivation(with_runtimes(calibration, [run]).derivation):  # type: ignore[arg-type]
        print(line)


def calibrate_tiny(params: PocParams, nonces: int, first_nonce: int) -> tuple[PocCalibration, str]:
    """The tiny model: CPU float32 batch 16 against CPU batch 1, CUDA float32 and bfloat16; and its
    weights' fingerprint."""
    cpu_tiny = load_model("wan-tiny-random", LoadOptions())
    others = [RuntimeSpec("cpu float32 batch 1", "honest", cpu_tiny, 1)]
    if torch.cuda.is_available():
        cuda32 = load_model("wan-tiny-random", LoadOptions(device="cuda"))
        cuda16 = load_model("wan-tiny-random", LoadOptions(device="cuda", dtype="bfloat16"))
        others += [
            RuntimeSpec("cuda float32 batch 16", "honest", cuda32, 16),
            RuntimeSpec("cuda float32 batch 64", "honest", cuda32, 64),
            RuntimeSpec("cuda bfloat16 batch 16", "cross-dtype", cuda16, 16),
        ]
    calibration = calibrate(
        RuntimeSpec("cpu float32 batch 16", "honest", cpu_tiny, 16),
        others,
        params,
        CalibrationSettings(nonces=nonces, first_nonce=first_nonce, skip_layers=1),
    )
    return calibration, weights_fingerprint(cpu_tiny)


def calibrate_main(
    model: LoadedModel,
    params: PocParams,
    nonces: int,
    first_nonce: int,
    skip_layers: int,
    attention: str,
    kernels: list[str],
    smoke: bool,
) -> PocCalibration:
    """The main model: batch 16 with ``attention`` against batch 1 and 4, the other ``kernels``
    (honest) and the cheats."""
    device, dtype = ("cpu" if smoke else "cuda"), "bfloat16"
    label = "" if attention == "sdpa" else f" {attention} (kept)"
    others = [RuntimeSpec(f"{device} {dtype} batch {s}{label}", "honest", model, s, attention) for s in (1, 4)]
    others += [RuntimeSpec(f"{device} {dtype} {k}", "honest", model, 16, k) for k in kernels if k != attention]
    skip_more = 4 if not smoke else 1
    settings = CalibrationSettings(
        nonces=nonces,
        first_nonce=first_nonce,
        skip_layers=skip_layers,
        extra_cheats=[
            RuntimeSpec(
                f"last {skip_more} layers skipped",
                "cheat",
                model,
                16,
                attention,
                context=lambda pm: fewer_layers(pm, skip_more),
            )
        ],
    )
    return calibrate(
        RuntimeSpec(f"{device} {dtype} batch 16{label}", "honest", model, 16, attention),
        others,
        params,
        settings,
        on_run=lambda name, s: print(f"  {name}: {s:.1f} s", flush=True),
    )


if __name__ == "__main__":
    main()
