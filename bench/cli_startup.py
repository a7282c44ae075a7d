"""Start-up time of the ``ditproof`` command: whole processes, several runs, min / median / max.

Times ``ditproof --help``, ``generate --help``, ``info``, ``client --help`` (and ``info --probe``,
which imports torch, for reference) as ``python -m ditproof.cli.main ...`` with this checkout's
``src`` first on the path: wall seconds around each process and its CPU seconds (user + sys,
from the kernel's accounting of the finished child). One untimed run of each command first
(file caches), then the commands in turn, ``--runs`` rounds, so a machine that slows down mid-way
slows every command alike. Targets: ``info`` at most 1.5 s on this project's 2-core machines.

    PYTHONPATH=src python3 bench/cli_startup.py                   # writes bench/results/cli_startup_cpu_<date>.json
    PYTHONPATH=src python3 bench/cli_startup.py --runs 3 --out /tmp/startup.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model

ROOT = Path(__file__).resolve().parent.parent
COMMANDS: dict[str, list[str]] = {
    "ditproof --help": ["--help"],
    "generate --help": ["generate", "--help"],
    "info": ["info"],
    "client --help": ["client", "--help"],
    "info --probe": ["info", "--probe"],
}
TARGETS_S = {"info": 1.5}
"""Wall-clock targets (median) on this project's 2-core CPU machines."""


def run_once(python: str, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``ditproof`` process; raises if it does not exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run([python, "-m", "ditproof.cli.main", *args], capture_output=True, env=env, timeout=120)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"ditproof {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed rounds (each command once per round)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with ditproof's requirements")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: bench/results/...)")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100:
        parser.error(f"--runs: got {args.runs}; allowed: 1 to 100")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    out = args.out or ROOT / "bench" / "results" / f"cli_startup_cpu_{date}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    load_before = os.getloadavg()
    for argv in COMMANDS.values():  # untimed: file caches
        run_once(args.python, argv, env)
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            wall_s, cpu_s = run_once(args.python, argv, env)
            walls[name].append(wall_s)
            cpus[name].append(cpu_s)
    load_after = os.getloadavg()

    results: dict[str, Any] = {}
    header = f"{'command':<18} {'wall min':>9} {'median':>8} {'max':>8} {'cpu median':>11}  target"
    print(header)
    print("-" * len(header))
    for name in COMMANDS:
        wall, cpu = summary(walls[name]), summary(cpus[name])
        target = TARGETS_S.get(name)
        verdict = "" if target is None else f"≤ {target} s: {'met' if wall['median'] <= target else 'MISSED'}"
        print(
            f"{name:<18} {wall['min']:>9.3f} {wall['median']:>8.3f} {wall['max']:>8.3f} {cpu['median']:>11.3f}  {verdict}"
        )
        results[name] = {
            "argv": COMMANDS[name],
            "wall_s": wall,
            "cpu_s": cpu,
            "wall_samples_s": [round(v, 4) for v in walls[name]],
            "target_median_wall_s": target,
        }
    print(f"{args.runs} rounds; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    data = {
        "benchmark": "cli_startup",
        "date": date,
        "host": {
            "cpu": cpu_model(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        },
        "method": "whole process, python -m ditproof.cli.main with src/ first; 1 untimed run each, then rounds",
        "runs": args.runs,
        "results": results,
    }
    sys.path.insert(0, str(ROOT / "src"))
    from ditproof.hashing import atomic_write_text

    atomic_write_text(out, json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
