"""Benchmark of the dashboard: the page's load time with 1,000 waiting jobs, and the scheduler's
turnover with and without 50 clients following the event stream.

    .venv/bin/python bench/bench_dashboard.py [--loads 7] [--pairs 3] [--json figures.json]

Each part starts its own ``herd serve --single-user`` (the installed console script, 8 declared GPUs, a
fresh work directory, its own tmux socket; ``bench_service.Server``) and kills it and its tmux server
afterwards.

1. Page load: the 8 GPUs held by long jobs, then 1,000 jobs submitted, all waiting (reasons and
   estimated starts planned for each). Headless chromium (Debian's, through Playwright) opens
   ``/#/queue`` in a fresh browser context each time (empty cache) and the time is the page's own mark
   when the queue is drawn (``performance.mark('herd:queue')``, from the start of navigation): the HTML,
   scripts, styles, who-am-I, the queue of 1,008 jobs and drawing every row.
2. Turnover (bench_service.py's): 200 jobs of ``true`` (1 GPU each) queued on 8 GPUs with the scheduler
   stopped; ``POST /orchestrator/start``; the time until the last one ended. Run in pairs, side by
   side in one run: without stream clients, then with 50 clients (another process, one connection
   each, reading every event) connected before the start. Reported: each run, the medians, and the
   ratio with/without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_service import Server, kept_workdirs, settled_create_us, time_of_true  # noqa: E402

TURNOVER_JOBS = 200
WAITING_JOBS = 1000


# -- 1. the page with 1,000 waiting jobs -------------------------------------------------------------
def busy_server() -> Server:
    """A server whose 8 GPUs are all held by long jobs, so that every job submitted next waits."""
    server = Server("--single-user", "--max-queue-size", "100000")
    ids = [server.http.post("/queue/submit", json={"user": "sleeper", "command": "sleep 3600", "gpu_count": 1,
                                                   "cwd": "/tmp"}).json()["job_id"] for _ in range(8)]
    while any(server.http.get(f"/jobs/{i}").json()["status"] != "running" for i in ids):
        time.sleep(0.05)
    return server


def bench_page_load(loads: int) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

    with busy_server() as server:
        body = {"user": "bench", "command": "true", "gpu_count": 1, "cwd": "/tmp"}
        for i in range(WAITING_JOBS):
            server.http.post("/queue/submit", json={**body, "priority": 1 + i % 10, "gpu_count": 1 + i % 4})
        t = time.perf_counter()
        queue = server.http.get("/queue", params={"limit": 1000}).json()
        api_ms = (time.perf_counter() - t) * 1000
        waiting = queue["stats"]["counts"]["queued"]
        times = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for _ in range(loads):
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{server.url}/#/queue")
                page.wait_for_selector("body[data-ready='queue']", timeout=30_000)
                rows = page.locator("#waiting tr.job").count()
                times.append(page.evaluate("performance.getEntriesByName('herd:queue')[0].startTime"))
                context.close()
            browser.close()
    result = {"waiting_jobs": waiting, "rows_drawn": rows, "loads_ms": times, "median_ms": statistics.median(times),
              "max_ms": max(times), "get_queue_ms": api_ms}
    print(f"page load, /#/queue with {waiting} waiting jobs ({rows} rows drawn): median {result['median_ms']:.0f} ms, "
          f"max {result['max_ms']:.0f} ms over {loads} cold loads (GET /queue?limit=1000 alone: {api_ms:.0f} ms)",
          flush=True)
    return result


# -- 2. turnover, with and without stream clients ---------------------------------------------------------
async def follow_streams(port: int, clients: int) -> None:
    """``clients`` connections to /events/stream, each reading every event (split, counted, not parsed: the
    clients share the server's two cores, where a browser's would not), until SIGTERM; then print how many
    events each received (one JSON line)."""
    counts = [0] * clients
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def client(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        buffer = b""
        while True:  # chunked transfer encoding: a size line, the data, CRLF
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            *messages, buffer = buffer.split(b"\n\n")
            counts[k] += sum(m.startswith(b"id: ") for m in messages)

    tasks = [asyncio.create_task(client(k)) for k in range(clients)]
    print("connected", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    print(json.dumps(counts), flush=True)


def stream_clients(port: int, clients: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--follow", str(port), "--clients", str(clients)],
                            stdout=subprocess.PIPE, text=True)


def turnover(clients: int) -> dict:
    with Server("--single-user", "--stopped", "--max-queue-size", str(TURNOVER_JOBS * 2)) as server:
        create_us = settled_create_us(server.dir)
        for _ in range(TURNOVER_JOBS):
            server.http.post("/queue/submit", json={"user": "bench", "command": "true", "gpu_count": 1, "cwd": "/tmp"})
        followers = None
        if clients:
            followers = stream_clients(server.port, clients)
            assert followers.stdout is not None and followers.stdout.readline().strip() == "connected"
            deadline = time.monotonic() + 30
            while f"gpuherd_event_stream_clients {clients}.0" not in server.http.get("/metrics").text:
                if time.monotonic() > deadline:
                    raise SystemExit("the stream clients did not connect")
                time.sleep(0.05)
        t0 = time.time()
        server.http.post("/orchestrator/start")
        while True:
            counts = server.http.get("/orchestrator/status").json()["counts"]
            if counts["completed"] + counts["failed"] == TURNOVER_JOBS:
                break
            time.sleep(0.05)
        records = server.http.get("/jobs", params={"limit": 1000}).json()["jobs"]
        received = None
        if followers is not None:
            time.sleep(0.5)  # the last events reach the clients
            followers.send_signal(signal.SIGTERM)
            out, _ = followers.communicate(timeout=30)
            received = json.loads(out.strip().splitlines()[-1])
    total = max(j["end_time"] for j in records) - t0
    result = {"clients": clients, "total_s": total, "jobs_per_s": TURNOVER_JOBS / total,
              "failed": sum(j["status"] != "completed" for j in records), "file_create_us": create_us}
    if received is not None:
        result["events_per_client"] = {"min": min(received), "median": statistics.median(received), "max": max(received)}
    print(f"turnover with {clients:>2} stream clients: {total:.2f} s ({result['jobs_per_s']:.1f} jobs/s, "
          f"{result['failed']} failed; creating a file: {create_us:.0f} µs)"
          + (f"; each client received {min(received)}-{max(received)} events" if received else ""), flush=True)
    return result


def bench_turnover(pairs: int, clients: int) -> dict:
    runs = []
    for _ in range(pairs):
        runs.append(turnover(0))
        runs.append(turnover(clients))
    without = [r["total_s"] for r in runs if not r["clients"]]
    with_ = [r["total_s"] for r in runs if r["clients"]]
    ideal = TURNOVER_JOBS / 8 * time_of_true()
    result = {"runs": runs, "median_without_s": statistics.median(without), "median_with_s": statistics.median(with_),
              "ratio": statistics.median(with_) / statistics.median(without),
              "pair_ratios": [b / a for a, b in zip(without, with_)], "ideal_s": ideal}
    print(f"turnover: median {result['median_without_s']:.2f} s without, {result['median_with_s']:.2f} s with {clients} "
          f"stream clients: ratio {result['ratio']:.2f} (pairs: {', '.join(f'{r:.2f}' for r in result['pair_ratios'])})",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=7, help="cold page loads")
    parser.add_argument("--pairs", type=int, default=3, help="turnover runs without and with stream clients")
    parser.add_argument("--clients", type=int, default=50, help="stream clients during the turnover")
    parser.add_argument("--parts", default="page,turnover")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--follow", type=int, help=argparse.SUPPRESS)  # the stream clients' process
    args = parser.parse_args()
    if args.follow:
        asyncio.run(follow_streams(args.follow, args.clients))
        return
    print(f"gpuherd dashboard benchmark on {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}",
          flush=True)
    figures: dict[str, object] = {}
    parts = set(args.parts.split(","))
    with kept_workdirs():  # removed at the end: see there why
        if "page" in parts:
            figures["page_load"] = bench_page_load(args.loads)
        if "turnover" in parts:
            figures["turnover"] = bench_turnover(args.pairs, args.clients)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
