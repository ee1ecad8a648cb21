"""Restart safety: kill ``herd serve`` (SIGTERM, and separately SIGKILL) while jobs run and wait, and
while a client keeps submitting; start it again and check that nothing was lost or held twice."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

pytestmark = [pytest.mark.tmux, pytest.mark.slow]


def held_gpus(server) -> dict[tuple[str, int], int]:
    """(node, GPU) -> job, from the holding jobs' records; fails if two jobs claim one GPU."""
    held: dict[tuple[str, int], int] = {}
    for entry in server.http.get("/queue").json()["jobs"]:
        job = entry["job"]
        if job["status"] in ("scheduled", "running"):
            for gpu in job["allocation"]["gpus"]:
                key = (job["allocation"]["node"], gpu)
                assert key not in held, f"GPU {key} held by jobs {held[key]} and {job['id']}"
                held[key] = job["id"]
    return held


def submit_until_stopped(server, stop: threading.Event, acknowledged: list[int]) -> None:
    """Keep submitting until told to stop; remember every id the server acknowledged with a 201."""
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        while not stop.is_set():
            try:
                r = http.post("/queue/submit", json={"user": "burst", "command": "true", "gpu_count": 4})
            except httpx.TransportError:
                time.sleep(0.01)  # the server is down: a refused or cut request was never acknowledged
                continue
            if r.status_code == 201:
                acknowledged.append(r.json()["job_id"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_keeps_queue_running_jobs_and_exit_codes(herd_server, sig):
    server = herd_server("--gpus", "4", "--max-queue-size", "1000").start()
    long = server.submit(command="sleep 60", run_id="long")["job_id"]
    fails = server.submit(command="sleep 1; exit 3", max_retries=0)["job_id"]
    passes = server.submit(command="sleep 1", max_retries=0)["job_id"]
    for job_id in (long, fails, passes):
        server.wait_for(job_id, "running")
    # Both need all 4 GPUs, so they wait for as long as `long` runs.
    high = server.submit(command="true", gpu_count=4, priority=8)["job_id"]
    low = server.submit(command="true", gpu_count=4, priority=2)["job_id"]
    before = server.job(long)

    stop, acknowledged = threading.Event(), []
    burst = threading.Thread(target=submit_until_stopped, args=(server, stop, acknowledged))
    burst.start()
    time.sleep(0.3)
    server.stop(sig)
    time.sleep(1.5)  # `fails` and `passes` end while the server is down
    server.start()
    stop.set()
    burst.join()

    after = server.job(long)
    assert after["status"] == "running", after
    assert after["allocation"] == before["allocation"] and after["attempts"] == 1
    assert (server.job(fails)["status"], server.job(fails)["exit_code"]) == ("failed", 3)
    assert (server.job(passes)["status"], server.job(passes)["exit_code"]) == ("completed", 0)
    for job_id, priority in ((high, 8), (low, 2)):
        job = server.job(job_id)
        assert (job["status"], job["priority"]) == ("queued", priority)
    assert acknowledged, "the burst should have got some submissions in before the kill"
    for job_id in acknowledged:
        assert server.job(job_id)["status"] == "queued", f"acknowledged job {job_id} lost"

    held = held_gpus(server)
    assert held == {(after["allocation"]["node"], g): long for g in after["allocation"]["gpus"]}
    gpu_states = {
        ("local", gpu["index"]): gpu["job_id"]
        for node in server.http.get("/gpu/status").json()["nodes"]
        for gpu in node["gpus"]
        if gpu["state"] == "allocated"
    }
    assert gpu_states == held

    # The adopted job can still be stopped, and the queue moves on in priority order.
    server.http.delete(f"/queue/{long}")
    assert server.wait_for(long, "cancelled")["exit_code"] == 143
    first = server.wait_for(high, "running", "completed")
    second = server.wait_for(low, "running", "completed")  # each needs all 4 GPUs: one after the other
    assert second["start_time"] >= first["start_time"]


def test_restart_keeps_scheduler_state_and_policy(herd_server):
    server = herd_server("--gpus", "2").start()
    server.http.put("/orchestrator/policy", json={"policy": "fcfs"})
    server.http.post("/orchestrator/stop")
    job = server.submit(command="true")["job_id"]
    server.stop(signal.SIGTERM)
    server.start()
    status = server.http.get("/orchestrator/status").json()
    assert (status["state"], status["policy"]) == ("stopped", "fcfs"), server.output()
    assert server.job(job)["status"] == "queued", server.output()
    server.http.post("/orchestrator/start")
    assert server.wait_for(job, "completed")["exit_code"] == 0
