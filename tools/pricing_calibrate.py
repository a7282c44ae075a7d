"""Calibrate the pricing coefficients of the A14B expert shape on this GPU.

Times full forward passes (all 40 blocks) of one A14B-shape expert, built directly on the GPU
with seeded random bf16 weights, at sizes from N = 1 to 75,600 (incl. 832×480×81 → 32,760 and
1280×720×81 → 75,600), fits ``max(floor, alpha·N² + beta·N + gamma)`` on relative error (and
the plain three- and two-term forms for comparison), and, for comparison with the method of the
provisional H100 figures (docs/pricing.md), repeats the sweep with a 4-block model scaled ×10.
The result holds a coefficient entry that
``ditproof price import RESULT.json`` merges into ``src/ditproof/pricing/coefficients.json``.

    PYTHONPATH=src python3 tools/pricing_calibrate.py --out $OUT/pricing_calibrate.json
    PYTHONPATH=src python3 tools/pricing_calibrate.py --smoke --out /tmp/pricing_calibrate.json   # CPU, tiny
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import device_info, write_result
from ditproof.pricing.calibrate import TINY_SIZES, calibrate
from ditproof.protocol.pricing import CoefficientEntry


def _progress(expert: str, size: str, patches: int, seconds: float) -> None:
    print(f"  {expert} {size:>12} N={patches:>7,} {seconds:9.4f} s", flush=True)


def _table(entry: CoefficientEntry, compare: CoefficientEntry | None) -> str:
    fit = entry.experts["transformer"]
    other = {p.size: p for p in compare.experts["transformer"].points} if compare else {}
    head = f"{'size':>12} {'N':>7} {'measured s':>11} {'priced err':>10} {'3-term err':>10} {'2-term err':>10}"
    if compare:
        head += (
            f" {compare.method.layers_timed}-layer×{compare.method.layers_total // compare.method.layers_timed} / full"
        )
    lines = [head]
    for p in fit.points:
        line = (
            f"{p.size:>12} {p.patches:>7,} {p.seconds:>11.4f} {p.rel_error:>+10.1%} "
            f"{p.three_term_rel_error:>+10.1%} {p.two_term_rel_error:>+10.1%}"
        )
        if p.size in other:
            line += f" {other[p.size].seconds / p.seconds:>8.3f}"
        lines.append(line)
    c = fit.cost
    lines.append(f"alpha={c.alpha:.4e} s/N²  beta={c.beta:.4e} s/N  gamma={c.gamma:.4e} s  floor={c.floor:.4e} s")
    lines.append(
        f"worst error: priced {fit.fit.max_rel_error:.1%} at N={fit.fit.worst_patches:,}; "
        f"three-term {fit.three_term_fit.max_rel_error:.1%} at N={fit.three_term_fit.worst_patches:,}; "
        f"two-term {fit.two_term_fit.max_rel_error:.1%} at N={fit.two_term_fit.worst_patches:,}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/pricing_calibrate.json")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, tiny sizes")
    parser.add_argument("--model", default="wan-a14b-shape")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default=None, help="comma-separated WxHxF (default: the preset's sweep)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare-layers", type=int, default=4, help="also time this many blocks ×scale (0: skip)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.device, args.sizes = "wan-tiny-random", "cpu", ",".join(TINY_SIZES[:4])
        args.compare_layers = min(args.compare_layers, 1)
    sizes = args.sizes.split(",") if args.sizes else None

    info = device_info()
    print(f"device: {info.get('gpu') or 'cpu'}; model {args.model}; full model", flush=True)
    begin = time.perf_counter()
    entry = calibrate(
        args.model,
        device=args.device,
        sizes=sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        provenance=f"tools/pricing_calibrate.py on {info.get('gpu') or 'cpu'} ({info['date']})",
        on_point=_progress,
    )
    full_s = time.perf_counter() - begin
    compare = None
    compare_s = 0.0
    if args.compare_layers:
        print(f"{args.compare_layers}-block model, scaled", flush=True)
        begin = time.perf_counter()
        compare = calibrate(
            args.model,
            device=args.device,
            sizes=sizes,
            layers=args.compare_layers,
            warmup=args.warmup,
            repeats=args.repeats,
            provenance="comparison only (not for prices)",
            on_point=_progress,
        )
        compare_s = time.perf_counter() - begin
    fit = entry.experts["transformer"]
    result = {
        "bench": "pricing_calibrate",
        "device": info,
        "model": args.model,
        "smoke": args.smoke,
        "seconds": {"full_sweep_incl_build": full_s, "comparison_sweep_incl_build": compare_s},
        "worst_rel_error": fit.fit.max_rel_error,
        "worst_rel_error_three_term": fit.three_term_fit.max_rel_error,
        "worst_rel_error_two_term": fit.two_term_fit.max_rel_error,
        "entry": entry.model_dump(mode="json"),
        "comparison": compare.model_dump(mode="json") if compare else None,
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")
    print(_table(entry, compare))


if __name__ == "__main__":
    main()
