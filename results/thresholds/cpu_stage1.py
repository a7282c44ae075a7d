"""The shipped model's CPU thresholds from the CPU Stage 1 calibration, into the shipped file.

Reads the thresholds file `ditproof experiment analyze` wrote for the `stage1-v2-cpu` store (one
entry per key and pair of runtime classes: the executor's, as each benign configuration ran, and
the validator's, the reference's), keeps the keys the CPU validator decides with, and replaces the
shipped file's CPU entries (runtime classes `cpu-*`) with them; the GPU entries stay as they are.

What it changes on the way, each stated in the entries' provenance notes:

* **Both directions of a pair.** A pool measures an executor of class E validated in class V (the
  reference). A validator in class E meeting an executor of class V (a validator with one CPU
  thread, an executor with two) sees the same distances between the two runs: the relative L2
  of the final latents and of committed checkpoints is symmetric up to the norm it divides by
  (the two runs' norms agree to ~1e-6). So each entry is written for (E, V) and for (V, E).
* **The CPU's instruction set.** Classes name the ISA torch dispatches to (``avx512``,
  ``avx2``, …). The calibration ran on AVX-512 only; the entries name ``*`` there, so a
  validator on another x86-64 ISA applies the AVX-512 band (the ISA changes the rounding of the
  reductions, as the thread count does, not the model's sensitivity to it). Thread counts,
  kernels, CFG mode and everything else stay exact.

    PYTHONPATH=src python results/thresholds/cpu_stage1.py STORE/thresholds.json \
        --into src/ditproof/models/shipped/thresholds.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ditproof.hashing import atomic_write_text
from ditproof.validation.policy import ThresholdEntry, ThresholdsFile

KEPT = {
    ("latent_rel_l2", "value"),
    ("latent_rel_l2_checkpoint", "value"),
    ("latent_rel_l2_segment", "value"),
    ("psnr", "mean"),
}
"""Keys the CPU validator decides with: the final latent, the trajectory (full and checkpoint
modes), and one frame metric that ties the submitted video to the regeneration."""

ISA = re.compile(r"^cpu-(?P<arch>[^/]+)/[^/-]+-(?P<threads>\d+threads)/")


def any_isa(runtime_class: str) -> str:
    """``cpu-x86_64/avx512-2threads/…`` → ``cpu-x86_64/*-2threads/…``."""
    return ISA.sub(lambda m: f"cpu-{m['arch']}/*-{m['threads']}/", runtime_class, count=1)


def cpu_entries(calibrated: ThresholdsFile) -> list[ThresholdEntry]:
    """The kept keys of ``calibrated``, ISA as a pattern, each pair in both directions."""
    entries: list[ThresholdEntry] = []
    seen: set[tuple[object, ...]] = set()
    for entry in calibrated.entries:
        if (entry.metric, entry.statistic) not in KEPT or not entry.runtime_class.startswith("cpu-"):
            continue
        executor, validator = any_isa(entry.runtime_class), any_isa(entry.validator_class)
        for target, checker, note in (
            (executor, validator, "measured in this direction"),
            (validator, executor, "mirrored: the pool measured the other direction (distances are symmetric)"),
        ):
            key = (target, checker, entry.metric, entry.statistic, entry.position)
            if key in seen:
                continue
            seen.add(key)
            notes = f"{entry.provenance.notes}; {note}; calibrated on AVX-512, any x86-64 ISA accepted"
            entries.append(
                entry.model_copy(
                    update={
                        "runtime_class": target,
                        "validator_class": checker,
                        "provenance": entry.provenance.model_copy(update={"notes": notes[:2000]}),
                    }
                )
            )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calibrated", type=Path, help="thresholds.json of `experiment analyze` on stage1-v2-cpu")
    parser.add_argument("--into", type=Path, required=True, help="the shipped thresholds file to update")
    args = parser.parse_args()
    calibrated = ThresholdsFile.load(args.calibrated)
    shipped = ThresholdsFile.load(args.into)
    fresh = cpu_entries(calibrated)
    if not fresh:
        parser.error(f"{args.calibrated}: no CPU entry of the kept keys {sorted(KEPT)}")
    kept = [e for e in shipped.entries if not e.runtime_class.startswith("cpu-")]
    merged = shipped.model_copy(update={"entries": [*kept, *fresh], "version": shipped.version + 1})
    ThresholdsFile.model_validate(merged.model_dump(mode="json"))  # the file's own checks (duplicates, …)
    text = json.dumps(merged.model_dump(mode="json", exclude_none=True), indent=1, sort_keys=True, ensure_ascii=False)
    atomic_write_text(args.into, text + "\n")
    print(f"{args.into}: {len(kept)} GPU entries kept, {len(fresh)} CPU entries from {args.calibrated}")


if __name__ == "__main__":
    main()
