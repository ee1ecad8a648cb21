"""Benchmark: jobs through Ray's node agents against local tmux, side by side (issue 13).

    .venv/bin/python bench/bench_ray.py [--quick]

Two servers, each the real ``Service`` (its tick loop, the typed tools' submit), in this process:

- ``local tmux``: 8 declared GPUs on this machine (``herd serve --gpus 8``);
- ``ray``: a local Ray cluster of 2 nodes x 4 declared GPUs (``herd serve --ray-local-nodes 2 --gpus 4``),
  jobs started, watched and ended by the node agents (an actor call per start, poll and stop).

1. Submit-to-start: on idle GPUs, one job at a time whose command is ``date +%s.%N``; the time it prints
   minus its ``submit_time`` is the time from acknowledgement to the job's first instruction.
2. Turnover: N jobs of ``true`` (1 GPU each) queued with the scheduler stopped, then started; the time
   until the last one has ended, and per round of 8 (N / 8 rounds: each GPU runs its jobs back to back).

Needs tmux and the ``ray`` extra (``pip install 'gpuherd[ray]'``). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import getpass
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.service import Service  # noqa: E402
from agent.settings import Settings  # noqa: E402
from tools.door import jobs  # noqa: E402
from tools.models import TERMINAL, JobRequest, JobStatus  # noqa: E402

USER = getpass.getuser()


def submit(service: Service, command: str) -> int:
    return jobs.submit_job(service.tools(), JobRequest(command=command, gpu_count=1), user=USER).job_id


def wait_ended(service: Service, ids: list[int], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    store = service.store
    left = set(ids)
    while left:
        left = {i for i in left if store.get_job(i).status not in TERMINAL}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} jobs still not ended")
        time.sleep(0.02)


def submit_to_start(service: Service, n: int) -> list[float]:
    delays = []
    for _ in range(n):
        job_id = submit(service, "date +%s.%N")
        wait_ended(service, [job_id])
        job = service.store.get_job(job_id)
        assert job.status == JobStatus.COMPLETED, job
        text = jobs.job_logs(service.tools(), jobs.JobLogs(job_id=job_id)).text
        delays.append(float(text.split()[-1]) - job.submit_time)
    return delays


def turnover(service: Service, n: int) -> float:
    service.orchestrator.enabled = False  # queue them all first, as `herd stop` would
    ids = [submit(service, "true") for _ in range(n)]
    t0 = time.monotonic()
    service.orchestrator.enabled = True
    service.wake()
    wait_ended(service, ids)
    return time.monotonic() - t0


def run(name: str, settings: Settings, quick: bool) -> dict[str, float]:
    service = Service(settings)
    service.start()
    try:
        submit_to_start(service, 2)  # warm: tmux servers, the agents' first calls
        delays = submit_to_start(service, 10 if quick else 30)
        n = 40 if quick else 160
        total = turnover(service, n)
    finally:
        executor = service.executor
        if hasattr(executor, "shutdown_agents"):
            executor.shutdown_agents()
        else:
            executor.shutdown_server()
        service.stop()
    return {"name": name, "p50": statistics.median(delays), "p95": sorted(delays)[int(0.95 * (len(delays) - 1))],
            "jobs": n, "total": total, "round": total / (n / 8)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    base = dict(tick_interval_s=0.5, grace_s=1.0, max_queue_size=1000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="herd-bench-ray-") as tmp:
        local = Settings.plain(workdir=Path(tmp) / "local", gpus=8, tmux_socket=f"herd-bench-{uuid4().hex[:6]}", **base)
        rows.append(run("local tmux, 8 GPUs", local, args.quick))
        t0 = time.monotonic()
        from tools.ray_executor import start_local_cluster

        ray_cluster = start_local_cluster(2, gpus=4)
        started = time.monotonic() - t0
        try:
            on_ray = Settings.plain(workdir=Path(tmp) / "ray", gpus=4, ray=ray_cluster.address,
                                    tmux_socket=f"herd-bench-{uuid4().hex[:6]}", **base)
            rows.append(run("ray, 2 nodes x 4 GPUs", on_ray, args.quick))
        finally:
            import ray

            ray.shutdown()
            ray_cluster.shutdown()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, local Ray cluster "
          f"started in {started:.1f} s\n")
    print("| executor | submit-to-start p50 | p95 | turnover: jobs | total | per round of 8 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms | {r['jobs']} | {r['total']:.1f} s "
              f"| {r['round'] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
