"""Provisional trajectory thresholds from a ``tools/trajectory_cheats.py`` result.

Per expert phase and metric (the fingerprints' relative distance, the committed latents' relative
L2), the threshold is the geometric mean of the worst benign value and the best malign value that
has left the reference (a shortcut is exactly the reference before its first cheap step, so its
zeros there say nothing of the margin). The segment threshold reuses the checkpoint latent's: a
segment re-run from the executor's own checkpoint deviates less than a whole regeneration. The
final latent gets a ``latent_rel_l2`` entry the same way. Not an FPR-calibrated threshold: few
prompts, no target rate; the provenance says so.

    PYTHONPATH=src python results/thresholds/trajectory_provisional.py \
        bench/results/trajectory_cheats_shapes_cpu_2026-12-05.json --model REVISION --runtime-class 'cpu-*' \
        --into src/ditproof/models/shipped/thresholds.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ditproof.hashing import atomic_write_text
from ditproof.validation.policy import ThresholdsFile

METRICS = {"fingerprint_rel_l2": "fingerprint_rel_l2", "latent_rel_l2": "latent_rel_l2_checkpoint"}


def margins(result: dict[str, Any]) -> dict[tuple[str, str], tuple[float, float]]:
    """(phase, point metric) → (worst benign, best malign that left the reference)."""
    worst: dict[tuple[str, str], float] = {}
    best: dict[tuple[str, str], float] = {}
    for row in result["rows"]:
        benign = row["run"].startswith("benign")
        for point in row["points"]:
            for metric in METRICS:
                value = point[metric]
                key = (point["phase"], metric)
                if benign:
                    worst[key] = max(worst.get(key, 0.0), value)
                elif value > 0.0:
                    best[key] = min(best.get(key, math.inf), value)
        final = row["points"][-1]["latent_rel_l2"]
        key = ("final", "latent_rel_l2")
        if benign:
            worst[key] = max(worst.get(key, 0.0), final)
        elif final > 0.0:
            best[key] = min(best.get(key, math.inf), final)
    return {key: (worst[key], best[key]) for key in worst if key in best}


def entries(
    result: dict[str, Any], source: str, model: str, runtime_class: str, validator_class: str
) -> list[dict[str, Any]]:
    prompts = len({row["prompt"] for row in result["rows"]})
    out = []
    for (phase, metric), (benign, malign) in sorted(margins(result).items()):
        if malign <= benign:
            raise SystemExit(
                f"{phase} {metric}: the best malign value {malign:.3g} is not above the worst benign {benign:.3g}"
            )
        value = float(f"{math.sqrt(benign * malign) if benign > 0 else malign / 10:.3g}")
        provenance = {
            "calibration": f"tools/trajectory_cheats.py: {prompts} prompts, {result['request']}, CPU ({source})",
            "date": result["date"],
            "fpr_target": None,
            "samples": sum(len(r["points"]) for r in result["rows"]),
            "notes": (
                f"provisional: geometric mean of the worst benign ({benign:.4g}: CFG batched, one CPU thread) and the "
                f"best malign ({malign:.4g}: the shortcuts, once they left the reference) {metric} in "
                f"{'the final latent' if phase == 'final' else 'the ' + phase + ' phase'}; not an FPR-calibrated threshold"
            ),
        }
        common = {"model": model, "runtime_class": runtime_class, "validator_class": validator_class,
                  "statistic": "value", "direction": "lower-is-better", "value": value, "metric_weights": {},
                  "provenance": provenance}  # fmt: skip
        if phase == "final":
            out.append({**common, "metric": "latent_rel_l2"})
            continue
        position = {"phase": phase, "start": 0.0, "end": 1.0}
        names = [METRICS[metric]] + (["latent_rel_l2_segment"] if metric == "latent_rel_l2" else [])
        out += [{**common, "metric": name, "position": position} for name in names]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--model", required=True, help="a preset name or a model revision")
    parser.add_argument("--runtime-class", required=True, help="the executor's: exact class or fnmatch pattern")
    parser.add_argument(
        "--validator-class", default="cpu-*", help="the validator's class the pairs were measured with (pattern)"
    )
    parser.add_argument("--into", type=Path, help="a thresholds file to add the entries to (else: print them)")
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    new = entries(result, str(args.result), args.model, args.runtime_class, args.validator_class)
    if args.into is None:
        print(json.dumps(new, indent=1))
        return
    data = json.loads(args.into.read_text())
    pair = (args.model, args.runtime_class, args.validator_class)
    kept = [e for e in data["entries"] if (e["model"], e["runtime_class"], e.get("validator_class", "*")) != pair]
    data.update(schema_version="ditproof.thresholds/3", version=int(data.get("version", 0)) + 1, entries=kept + new)
    ThresholdsFile.model_validate(data)  # refuses a file the validator would refuse
    atomic_write_text(args.into, json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{args.into}: {len(new)} entries for {args.model} / {args.runtime_class}")


if __name__ == "__main__":
    main()
