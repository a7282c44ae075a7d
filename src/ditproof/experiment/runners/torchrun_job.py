"""One multi-GPU job under torchrun: every rank runs the job, rank 0 writes it to the store.

Launched by the local runner (see :func:`ditproof.experiment.runners.local.torchrun_command`)::

    torchrun --standalone --nproc-per-node W -m ditproof.experiment.runners.torchrun_job \\
        --store URL --job JOB_ID --run-id RUN --attempt 1

Each rank uses ``cuda:$LOCAL_RANK`` (or the CPU, where tensor parallelism runs over gloo); the
generation code sets up tensor or context parallelism from the job's ``tp_degree`` /
``cp_degree``. Ranks other than 0 generate into a temporary
store that is thrown away, so the experiment store receives one copy of the artifacts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ditproof.experiment.jobs import load_plan
from ditproof.experiment.runners.worker import JobWorker


def main(argv: list[str] | None = None) -> int:
    """Runs the job on this rank; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--attempt", type=int, default=1)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from ditproof.experiment.store import Store

    jobs = {j.job_id: j for j in load_plan(Store(args.store))}
    if args.job not in jobs:
        print(f"job: got {args.job!r}; not in the plan of {args.store}", file=sys.stderr)
        return 2
    job = jobs[args.job]
    with tempfile.TemporaryDirectory(prefix="ditproof-rank-") as scratch:
        store_url = args.store if rank == 0 else scratch
        if rank != 0:
            from ditproof.experiment.jobs import PLAN_FILE

            Store(scratch).write_json(PLAN_FILE, [job.model_dump(mode="json")])
        device = "cpu" if job.options.device == "cpu" else f"cuda:{local_rank}"
        worker = JobWorker(store_url, device, args.run_id, threads=1 if device == "cpu" else None)
        try:
            worker.run(job, args.attempt)
        except Exception as exc:  # recorded by rank 0, reported through the exit code
            if rank == 0:
                worker.record_failure(job, args.attempt, exc)
            print(f"rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
