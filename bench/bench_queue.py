"""Benchmark of the queue's read path and the server's memory, optionally side by side with another checkout.

    .venv/bin/python bench/bench_queue.py [--quick] [--compare TREE] [--repeat N] [--parts queue,submit,memory]

Each side's server is ``herd serve`` of that side's code (``bench_service.Server``), on a work directory whose
database was filled by that side's own store before the server started:

1. queue: 10,008 jobs of ``sleep 3600`` (1 GPU, 7 users, priorities 1-10) on 8 GPUs: 8 run, 10,000 wait.
   ``GET /queue`` (the first page, 500 jobs, as the dashboard and ``herd queue`` ask) N times one after
   another, and once more while a client submits back to back; latency as the client sees it.
2. submit: on that server (10,000 waiting, the scheduler running), 1 client and 50 clients (closed loop,
   keep-alive) send ``POST /queue/submit``.
3. memory: 100,000 finished jobs (completed, 1 GPU, 30 s each, over the last 6 days) and the server started
   on them (scheduler running); then it serves: ``GET /queue``, 20 pages of ``GET /jobs``, ``GET /jobs/report``
   (accounting over the last 7 days: every job), 200 submissions, ``/orchestrator/status``. VmRSS (now) and
   VmHWM (peak) of the server's process from ``/proc/<pid>/status``.

``--compare TREE`` runs each part on TREE (``git worktree add TREE <commit>``) too, taking turns; a table of
medians and ratios (this tree / TREE) ends the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import Server, percentile, submit_load, summarize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Run with the side's own code: fills <workdir>/herd.db through that side's SqliteStore.
FILL = textwrap.dedent("""
    import sys, time
    from tools.models import Job, JobStatus
    from tools.store import SqliteStore
    path, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = SqliteStore(path)
    now = time.time()
    if kind == "waiting":
        for i in range(n):
            store.add_job(Job(id=0, user=f"user{i % 7}", command="sleep 3600", gpu_count=1, priority=1 + i % 10,
                              submit_time=now - n + i, cwd="/tmp"), max_queued=None)
    else:
        store.add_job(Job(id=0, user="user0", command="true", gpu_count=1, submit_time=now), max_queued=None)
        rows = []
        for i in range(2, n + 2):
            end = now - 6 * 86400 + i * (6 * 86400 / n)
            job = Job(id=i, user=f"user{i % 15}", command=f"python train.py --seed {i}", gpu_count=1,
                      submit_time=end - 60, status=JobStatus.COMPLETED, start_time=end - 30, end_time=end,
                      first_start_time=end - 30, exit_code=0, attempts=1, cwd="/tmp", pending_reason=None,
                      pending_message=None)
            rows.append((job.user, job.status.value, job.priority, job.submit_time, job.model_dump_json()))
        with store._lock:
            store._db.execute("BEGIN")
            store._db.execute("UPDATE jobs SET status = 'completed', data = json_set(data, '$.status', 'completed',"
                              " '$.start_time', ?, '$.end_time', ?, '$.exit_code', 0) WHERE id = 1", (now - 30, now))
            store._db.executemany("INSERT INTO jobs (user, status, priority, submit_time, data) VALUES (?, ?, ?, ?, ?)",
                                  rows)
            store._db.execute("COMMIT")
    store.close()
""")


def filled(tree: Path | None, kind: str, n: int) -> Path:
    """A work directory whose database holds ``n`` jobs of ``kind``, written by ``tree``'s own store."""
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"herd-bench-fill-{os.getpid()}-{kind}-{time.monotonic_ns()}"
    workdir.mkdir(parents=True)
    code = tree if tree is not None else REPO
    env = {**os.environ, "PYTHONPATH": str(code)}
    subprocess.run([sys.executable, "-c", FILL, str(workdir / "herd.db"), kind, str(n)], check=True, env=env, cwd=code)
    return workdir


def server_on(workdir: Path, *args: str) -> Server:
    """``Server`` on an existing work directory (its own is replaced by ``workdir``)."""
    return Server("--workdir", str(workdir), "--max-queue-size", "100000", *args)


def timed_get(http: httpx.Client, path: str, **params) -> float:
    t = time.perf_counter()
    r = http.get(path, params=params)
    elapsed = (time.perf_counter() - t) * 1000
    r.raise_for_status()
    return elapsed


def bench_queue(waiting: int, reads: int) -> dict:
    workdir = filled(Server.tree, "waiting", waiting + 8)
    with server_on(workdir) as server:
        deadline = time.monotonic() + 60
        while server.http.get("/queue", params={"limit": 1}).json()["stats"]["running_gpus"] < 8:
            if time.monotonic() > deadline:
                raise SystemExit("the 8 first jobs did not start")
            time.sleep(0.1)
        timed_get(server.http, "/queue")  # warm-up
        quiet = [timed_get(server.http, "/queue") for _ in range(reads)]
        stop = threading.Event()

        def submitting() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    http.post("/queue/submit", json={"user": "bench", "command": "true", "gpu_count": 1, "cwd": "/tmp"})

        writer = threading.Thread(target=submitting)
        writer.start()
        time.sleep(0.2)
        busy = [timed_get(server.http, "/queue") for _ in range(reads)]
        stop.set()
        writer.join()
        shown = server.http.get("/queue").json()
        submit = {}
        for clients, per_client in ((1, 200), (50, 20)):
            r = asyncio.run(submit_load(server.port, clients, max(2, per_client * reads // 20)))
            submit[str(clients)] = r.__dict__
    shutil.rmtree(workdir, ignore_errors=True)
    result = {"waiting": waiting, "quiet_p50_ms": statistics.median(quiet), "quiet_p90_ms": percentile(quiet, 90),
              "busy_p50_ms": statistics.median(busy), "busy_p90_ms": percentile(busy, 90),
              "page": len(shown["jobs"]), "submit": submit}
    print(f"GET /queue, {waiting} waiting: p50 {result['quiet_p50_ms']:.1f} ms (p90 {result['quiet_p90_ms']:.1f}); "
          f"while a client submits: p50 {result['busy_p50_ms']:.1f} ms (p90 {result['busy_p90_ms']:.1f}); "
          f"{result['page']} jobs in the page", flush=True)
    for clients, r in submit.items():
        print(f"submit with {waiting}+ waiting, {clients:>2} client(s): p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
              f"{r['throughput']:.0f} per s ({r['errors']} errors)", flush=True)
    return result


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def bench_memory(finished: int) -> dict:
    workdir = filled(Server.tree, "finished", finished)
    with server_on(workdir) as server:
        started, _ = rss_kib(server.proc.pid)
        http = server.http
        http.get("/queue").raise_for_status()
        cursor = None
        for _ in range(20):
            page = http.get("/jobs", params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
            cursor = page["next"]
        http.get("/jobs/report", params={"since": "7d"}).raise_for_status()
        for _ in range(200):
            http.post("/queue/submit", json={"user": "bench", "command": "true", "gpu_count": 1, "cwd": "/tmp"})
        counts = http.get("/orchestrator/status").json()["counts"]
        now, peak = rss_kib(server.proc.pid)
    shutil.rmtree(workdir, ignore_errors=True)
    result = {"finished": finished, "rss_at_start_mb": started / 1024, "rss_mb": now / 1024, "peak_mb": peak / 1024,
              "completed": counts.get("completed")}
    print(f"memory with {finished} finished jobs ({result['completed']} completed counted): "
          f"{result['rss_at_start_mb']:.0f} MB at start, {result['rss_mb']:.0f} MB after serving, "
          f"peak {result['peak_mb']:.0f} MB", flush=True)
    return result


SUMMARY = (
    ("GET /queue p50, 10,000 waiting, ms", ("queue", "quiet_p50_ms")),
    ("GET /queue p50 while a client submits, ms", ("queue", "busy_p50_ms")),
    ("submit p50, 1 client, 10,000 waiting, ms", ("queue", "submit", "1", "p50_ms")),
    ("submit p50, 50 clients, ms", ("queue", "submit", "50", "p50_ms")),
    ("submit throughput, 50 clients, per s", ("queue", "submit", "50", "throughput")),
    ("RSS after serving, 100,000 finished, MB", ("memory", "rss_mb")),
    ("peak RSS, 100,000 finished, MB", ("memory", "peak_mb")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer reads and jobs (a smoke run)")
    parser.add_argument("--parts", default="queue,memory")
    parser.add_argument("--compare", type=Path, metavar="TREE", help="another checkout (git worktree add TREE <commit>)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    sides: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare is not None:
        sides.append((str(args.compare), args.compare.resolve()))
    runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
    for repeat in range(args.repeat):
        for name, tree in sides:  # taking turns, so that the machine's load falls on both alike
            print(f"-- run {repeat + 1} of {args.repeat}: {name}", flush=True)
            Server.tree = tree
            figures = {}
            if "queue" in parts:
                figures["queue"] = bench_queue(1_000 if args.quick else 10_000, 5 if args.quick else 20)
            if "memory" in parts:
                figures["memory"] = bench_memory(10_000 if args.quick else 100_000)
            runs[name].append(figures)
    Server.tree = None
    summarize(runs, SUMMARY)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
