"""Refits a pricing calibration's stored timings (no GPU): ``fit_min_patches`` or a new fit method.

Every sample of every size is kept in a calibration result, so the fit can be redone anywhere:

    PYTHONPATH=src python3 tools/pricing_refit.py bench/results/pricing_calibrate_WHAT_h100_DATE.json \\
        --fit-min-patches 300 --out bench/results/pricing_calibrate_WHAT_refit300_h100_DATE.json
    ditproof price import bench/results/pricing_calibrate_WHAT_refit300_h100_DATE.json

Prints the same table as ``tools/pricing_calibrate.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py

from common import write_result
from ditproof.pricing.calibrate import FIT_MIN_PATCHES, fit_expert
from ditproof.protocol.pricing import CoefficientEntry
from pricing_calibrate import _table


def refit(entry: CoefficientEntry, fit_min_patches: int) -> CoefficientEntry:
    """The entry with every timed expert's fits redone from its stored samples."""
    scale = entry.method.layers_total / entry.method.layers_timed
    experts = {}
    for name, fit in entry.experts.items():
        if not fit.points:  # an expert of the same shape reuses another's timings
            continue
        points = fit.points
        experts[name] = fit_expert(
            name,
            [p.size for p in points],
            [p.patches for p in points],
            [list(p.samples) for p in points],
            scale,
            fit_min_patches,
        )
    for name, fit in entry.experts.items():
        if not fit.points:
            experts[name] = experts[fit.timed_as].model_copy(update={"timed_as": fit.timed_as, "points": ()})
    return entry.model_copy(
        update={"experts": experts, "provenance": f"{entry.provenance}; refit with N ≥ {fit_min_patches}"}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="a tools/pricing_calibrate.py result JSON")
    parser.add_argument("--fit-min-patches", type=int, default=FIT_MIN_PATCHES)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    entry = refit(CoefficientEntry.model_validate(result["entry"]), args.fit_min_patches)
    fit = entry.experts["transformer"]
    compare = CoefficientEntry.model_validate(result["comparison"]) if result.get("comparison") else None
    result.update(
        refit_of=str(args.result),
        fit_min_patches=args.fit_min_patches,
        worst_rel_error=fit.fit.max_rel_error,
        worst_rel_error_three_term=fit.three_term_fit.max_rel_error,
        worst_rel_error_two_term=fit.two_term_fit.max_rel_error,
        entry=entry.model_dump(mode="json"),
    )
    write_result(args.out, result)
    print(f"wrote {args.out}")
    print(_table(entry, compare))


if __name__ == "__main__":
    main()
