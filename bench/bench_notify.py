"""Benchmark of notifications beside the scheduler: passes with the notifier following the log and a slow
webhook, against passes with no notifier.

    .venv/bin/python bench/bench_notify.py [--pairs 5] [--jobs 400] [--json figures.json]

In process: the core as the service builds it (``build_core``) on a SQLite store in a fresh directory,
16 declared GPUs, the simulated executor (each job runs 1 simulated second) and a simulated clock moved
one second a pass, so every pass records ends and starts (events) as a busy lab's does. ``--jobs`` jobs
of 1 GPU are queued, then passes run until all have ended; the figure is each pass's duration
(``time.perf_counter``), as a median per run.

Run in pairs, side by side in one run: without a notifier, then with one (every event notifies the lab's
webhook: a loopback receiver that answers after 0.2 s, so the queue fills and notifications are dropped,
as when Slack is slow). Reported: each run's median pass, the medians over runs, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.build import build_core  # noqa: E402
from agent.notifier import Notifier  # noqa: E402
from agent.settings import Settings  # noqa: E402
from tools.clock import SimClock  # noqa: E402
from tools.door.context import OPERATOR, ToolContext  # noqa: E402
from tools.door.jobs import queue_job  # noqa: E402
from tools.inventory import NodeDeclaration  # noqa: E402
from tools.models import JobRequest  # noqa: E402
from tools.notify import NotifyConfig  # noqa: E402
from tools.nvml import UnavailableProbe  # noqa: E402
from tools.sim_executor import SimExecutor  # noqa: E402
from tools.store import SqliteStore  # noqa: E402
from tests.helpers import WebhookReceiver  # noqa: E402

RECEIVER_DELAY_S = 0.2


def run(jobs: int, receiver: WebhookReceiver | None) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        store = SqliteStore(Path(workdir) / "herd.db")
        clock = SimClock(1_700_000_000.0)
        core = build_core(Settings.plain(policy="priority", max_queue_size=100_000), clock=clock, store=store,
                          executor=SimExecutor(duration_of=lambda job: 1.0),
                          probe=UnavailableProbe("declared"), nodes=[NodeDeclaration(name="a", gpus=16)])
        ctx = ToolContext(core, OPERATOR)
        for i in range(jobs):
            queue_job(ctx, JobRequest(command="true", gpu_count=1, name=f"j{i}"), user=f"user{i % 15}")
        notifier = None
        if receiver is not None:
            config = NotifyConfig(default=receiver.url("/hook"), timeout_s=2.0, retries=0, queue_size=100, senders=2)
            notifier = Notifier(core, config, poll_s=0.05)
            notifier.start()
        passes = []
        try:
            while core.store.count_by_status().get("completed", 0) < jobs:
                clock.advance(1.0)
                began = time.perf_counter()
                core.orchestrator.tick()
                passes.append(time.perf_counter() - began)
                time.sleep(0.01)  # the service's loop leaves a gap too: the notifier reads meanwhile
        finally:
            if notifier is not None:
                notifier.stop()
            events = core.store.events(limit=1_000_000)
            store.close()
        return {"passes": len(passes), "median_pass_ms": statistics.median(passes) * 1000,
                "p90_pass_ms": statistics.quantiles(passes, n=10)[-1] * 1000,
                "dropped_events": sum(1 for e in events if e.kind == "notify_dropped"),
                "events": len(events)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    receiver = WebhookReceiver(delay_s=RECEIVER_DELAY_S)
    without, with_ = [], []
    try:
        for i in range(args.pairs):
            without.append(run(args.jobs, None))
            posts_before = receiver.hits
            with_.append(run(args.jobs, receiver) | {"posts": 0})
            with_[-1]["posts"] = receiver.hits - posts_before
            print(f"pair {i + 1}: without {without[-1]['median_pass_ms']:.2f} ms, with {with_[-1]['median_pass_ms']:.2f} ms "
                  f"(posts {with_[-1]['posts']}, drop events {with_[-1]['dropped_events']})", flush=True)
    finally:
        receiver.close()
    m_without = statistics.median(r["median_pass_ms"] for r in without)
    m_with = statistics.median(r["median_pass_ms"] for r in with_)
    figures = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "jobs": args.jobs, "without": without, "with": with_,
        "median_pass_ms_without": m_without, "median_pass_ms_with": m_with, "ratio": m_with / m_without,
        "per_pair_ratio": [w["median_pass_ms"] / o["median_pass_ms"] for o, w in zip(without, with_)],
    }
    print(f"median pass: without {m_without:.2f} ms, with the notifier {m_with:.2f} ms; ratio {m_with / m_without:.2f} "
          f"(per pair {', '.join(f'{r:.2f}' for r in figures['per_pair_ratio'])})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
