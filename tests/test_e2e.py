"""End to end: ``herd serve`` with 4 declared GPUs runs six 2-GPU jobs, two at a time, in priority order."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tmux, pytest.mark.slow]

# (priority, exit code) per job, in submission order; all priorities differ.
JOBS = [(3, 0), (9, 1), (5, 0), (7, 2), (1, 0), (10, 3)]


def test_six_two_gpu_jobs_on_four_gpus(herd_server):
    # Submitted while the scheduler is stopped, so that the order is decided by priority alone.
    server = herd_server("--gpus", "4", "--stopped").start()
    ids = [
        server.submit(
            command=f"echo gpus=$CUDA_VISIBLE_DEVICES; sleep 0.5; exit {code}",
            gpu_count=2, priority=priority, max_retries=0, run_id=f"e2e-{priority}",
        )["job_id"]
        for priority, code in JOBS
    ]
    assert server.http.get("/gpu/status").json()["detected"] is False
    server.http.post("/orchestrator/start")

    jobs = [server.wait_for(i, "completed", "failed", timeout_s=30) for i in ids]

    for job, (priority, code) in zip(jobs, JOBS):
        assert job["priority"] == priority
        assert job["exit_code"] == code
        assert job["status"] == ("completed" if code == 0 else "failed")
        assert job["attempts"] == 1
        gpus = job["allocation"]["gpus"]
        assert len(gpus) == 2
        log = Path(job["log_path"]).read_text()
        assert log.strip() == f"gpus={','.join(map(str, gpus))}", "CUDA_VISIBLE_DEVICES matches the allocation"

    # Never more than two at once, and those on disjoint GPUs.
    for a, b in itertools.combinations(jobs, 2):
        overlap = a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]
        if overlap:
            assert not set(a["allocation"]["gpus"]) & set(b["allocation"]["gpus"]), (a["id"], b["id"])
    for job in jobs:
        at_once = [j for j in jobs if j["start_time"] <= job["start_time"] < j["end_time"]]
        assert len(at_once) <= 2, [j["id"] for j in at_once]

    # Priority order: a higher-priority job never starts after a lower-priority one.
    for a, b in itertools.combinations(jobs, 2):
        if a["priority"] > b["priority"]:
            assert a["start_time"] <= b["start_time"], (a["id"], b["id"])
        else:
            assert b["start_time"] <= a["start_time"], (a["id"], b["id"])
