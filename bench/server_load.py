"""Load test of the ML-node service: N concurrent clients on loopback against a `ditproof serve` subprocess.

Each client loops over a mix of requests until the duration is up: the node's state, a tiny video
job (64x48, 5 frames, 3 steps), that job's status, a PoC ``generate`` of 4 nonces (wait: true)
and a price quote. 429 (queue full) is counted apart from errors: it is the node refusing work
on purpose. After the duration the accepted video jobs are awaited (bounded) and counted.

    PYTHONPATH=src python3 bench/server_load.py --clients 8 --duration 20
    PYTHONPATH=src python3 bench/server_load.py --smoke        # 2 clients, 5 s

Prints a table and writes JSON (default ``bench/results/server_load_cpu_<date>.json``). Binds
127.0.0.1 only; the server is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

TOKEN = "load-test-token-0123456789abcdef"
TINY = {"size": "64x48", "num_frames": 5, "num_inference_steps": 3}
POC = {
    "block_hash": "3c" * 32,
    "block_height": 1,
    "public_key": "load-test",
    "node_id": 0,
    "node_count": 1,
    "params": {"model": "wan-tiny-random", "seq_len": 64, "k_dim": 12},
    "wait": True,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path, max_queue: int, timeout: float = 300.0) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "server.log"
    env = dict(os.environ, DITPROOF_API_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "ditproof.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--data-dir", str(data_dir / "data"), "--model", "wan-tiny-random", "--max-queue", str(max_queue)]
    command += ["--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/api/v1/state", headers=headers, timeout=2).json().get("inference_healthy"):
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout} s")


class Recorder:
    """Latency and outcome of every request, per operation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.error_examples: dict[str, str] = {}

    def add(self, op: str, seconds: float, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.samples[op].append((seconds, outcome))
            if outcome == "error" and op not in self.error_examples:
                self.error_examples[op] = detail[:300]


def client_loop(index: int, url: str, deadline: float, recorder: Recorder, jobs: list[str]) -> None:
    ops = ["state", "video", "video_status", "pow_generate", "quote"]
    mine: list[str] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        step = index  # clients start at different points of the mix
        while time.monotonic() < deadline:
            op = ops[step % len(ops)]
            step += 1
            started = time.perf_counter()
            try:
                if op == "state":
                    response = http.get("/api/v1/state")
                elif op == "video":
                    response = http.post("/v1/videos", json={"prompt": f"load {index}-{step}", "seed": step, **TINY})
                    if response.status_code == 200:
                        mine.append(response.json()["id"])
                elif op == "video_status":
                    if not mine:
                        continue
                    response = http.get(f"/v1/videos/{mine[-1]}")
                elif op == "pow_generate":
                    nonces = [index * 100_000 + step * 4 + j for j in range(4)]
                    response = http.post("/api/v1/inference/pow/generate", json={**POC, "nonces": nonces})
                else:
                    response = http.get("/api/v1/pricing/quote", params={"size": "832x480", "seconds": "5"})
            except httpx.HTTPError as exc:
                recorder.add(op, time.perf_counter() - started, "error", f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            code = response.status_code
            outcome = "ok" if code == 200 else "rejected" if code == 429 else "error"
            recorder.add(op, elapsed, outcome, f"HTTP {code}: {response.text}")
    with recorder.lock:
        jobs.extend(mine)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def summarize(recorder: Recorder, duration: float) -> list[dict[str, Any]]:
    rows = []
    for op, samples in sorted(recorder.samples.items()):
        served = [s for s, outcome in samples if outcome == "ok"]
        rows.append(
            {
                "endpoint": op,
                "requests": len(samples),
                "ok": len(served),
                "rejected_429": sum(1 for _, o in samples if o == "rejected"),
                "errors": sum(1 for _, o in samples if o == "error"),
                "p50_ms": round(1000 * percentile(served, 0.50), 1),
                "p95_ms": round(1000 * percentile(served, 0.95), 1),
                "mean_ms": round(1000 * statistics.fmean(served), 1) if served else None,
                "ok_per_s": round(len(served) / duration, 2),
            }
        )
    return rows


def drain(url: str, jobs: list[str], timeout: float) -> dict[str, int]:
    """Waits for the accepted video jobs; counts them by final status."""
    counts: dict[str, int] = defaultdict(int)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        for job in jobs:
            while True:
                status = http.get(f"/v1/videos/{job}").json()["status"]
                if status in ("completed", "failed") or time.monotonic() > deadline:
                    counts[status] += 1
                    break
                time.sleep(0.2)
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds of load (default 20).")
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--smoke", action="store_true", help="2 clients for 5 s.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.duration = 2, 5.0
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    out = args.out or Path(__file__).parent / "results" / f"server_load_cpu_{date}.json"

    with tempfile.TemporaryDirectory(prefix="ditproof-load-") as folder:
        started = time.monotonic()
        proc, url, log = start_server(Path(folder), args.max_queue)
        startup_s = time.monotonic() - started
        try:
            recorder = Recorder()
            jobs: list[str] = []
            deadline = time.monotonic() + args.duration
            threads = [
                threading.Thread(target=client_loop, args=(i, url, deadline, recorder, jobs))
                for i in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            jobs_done = drain(url, jobs, args.drain_timeout)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            server_tail = log.read_text()[-1500:]

    rows = summarize(recorder, args.duration)
    import torch  # only for the record of the stack

    result = {
        "date": date,
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "torch": torch.__version__,
        "model": "wan-tiny-random",
        "clients": args.clients,
        "duration_s": args.duration,
        "max_queue": args.max_queue,
        "server_startup_s": round(startup_s, 1),
        "endpoints": rows,
        "video_jobs": {"accepted": len(jobs), **jobs_done},
        "error_examples": recorder.error_examples,
        "server_log_tail": server_tail if any(r["errors"] for r in rows) else "",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    header = f"{'endpoint':<14}{'requests':>9}{'ok':>7}{'429':>6}{'errors':>8}{'p50 ms':>10}{'p95 ms':>10}{'ok/s':>8}"
    print(f"\n{args.clients} clients, {args.duration:.0f} s, loopback, wan-tiny-random on CPU ({os.cpu_count()} cores)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['endpoint']:<14}{r['requests']:>9}{r['ok']:>7}{r['rejected_429']:>6}{r['errors']:>8}"
            f"{r['p50_ms']:>10}{r['p95_ms']:>10}{r['ok_per_s']:>8}"
        )
    print(f"video jobs accepted {len(jobs)}: {jobs_done}; results in {out}")


if __name__ == "__main__":
    main()
