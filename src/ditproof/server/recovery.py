"""Crash recovery: what the node does with its job store before the worker starts.

A job found ``in_progress`` was running when the node died (SIGKILL, power loss). It is

* published, if its artifact folder is whole and matches its record's hashes (the crash hit
  between publishing the folder and recording the job as completed);
* else queued again at its old place (the run is deterministic: it gives the same bytes), or
  failed with code ``interrupted`` once it has been started ``max_attempts`` times.

A node restarted without a model to load fails its queued jobs with code ``node_restarted``
(jobs wait only in INFERENCE). Temporary and orphaned artifact folders are removed.
``tests/test_server_restart.py`` kills a real server mid-job and checks all of this.
"""

from __future__ import annotations

import logging

from ditproof.errors import IntegrityError, InvalidInputError
from ditproof.server.artifacts import ArtifactStore
from ditproof.server.jobs import JobStore

log = logging.getLogger("ditproof.server")


def recover(store: JobStore, artifacts: ArtifactStore, max_attempts: int, will_load: bool) -> dict[str, list[str]]:
    """Settles the jobs a crash left behind (see the module docstring).

    Args:
        store: the job store, before the worker claims anything from it.
        artifacts: the artifact folders.
        max_attempts: how many starts a job gets before it fails with ``interrupted``.
        will_load: whether a model is loaded at start (without one, queued jobs fail).

    Returns:
        What recovery did: ``published``, ``requeued``, ``failed`` (job ids) and ``cleaned``.
    """
    report: dict[str, list[str]] = {"published": [], "requeued": [], "failed": [], "cleaned": []}
    for job in store.with_status("in_progress"):
        if artifacts.exists(job.id):
            try:
                record = artifacts.verify(job.id)
            except (IntegrityError, InvalidInputError) as exc:
                log.warning("job %s: discarding an incomplete artifact folder (%s)", job.id, exc)
                artifacts.remove(job.id)
            else:
                store.complete(job.id, record.sha256(), record.video.sha256)
                report["published"].append(job.id)
                continue
        if job.attempts >= max_attempts:
            store.fail(
                job.id,
                "interrupted",
                f"the node stopped while running this job {job.attempts} times (allowed attempts: "
                f"{max_attempts}); it is not retried",
            )
            report["failed"].append(job.id)
        else:
            store.requeue(job.id, refund_attempt=False)
            report["requeued"].append(job.id)
    if not will_load:
        for job in store.with_status("queued"):
            store.fail(
                job.id,
                "node_restarted",
                "the node restarted without a model to load, so this job cannot run; submit it again "
                "once the node is in state INFERENCE",
            )
            report["failed"].append(job.id)
    report["cleaned"] = artifacts.clean(store.ids())
    return report
