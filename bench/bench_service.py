"""Benchmark of the service over HTTP: submission latency and throughput, submit-to-start, turnover.

    .venv/bin/python bench/bench_service.py [--quick] [--parts ...] [--compare TREE] [--repeat N] [--json FILE]

Each part starts its own ``herd serve`` (the installed console script) on a fresh work directory with 8
declared GPUs and a private tmux socket, and kills it and its tmux server afterwards. The work directories
are removed when the benchmark ends, not in between (``kept_workdirs``).

1. Submission: C clients (1, 10, 50), each with one keep-alive connection, send ``POST /queue/submit``
   back to back (closed loop) with the scheduler stopped, so only the submission path is measured.
   Latency is per request, measured by the client; throughput is requests / wall time.
2. Submit-to-start: on an idle GPU, one job at a time whose command is ``date +%s.%N``; the time it
   prints minus the server's ``submit_time`` is the time from acknowledgement to the job's first
   instruction (same machine, same clock).
3. Turnover: 200 jobs of ``true`` (1 GPU each) queued on 8 GPUs with the scheduler stopped; then
   ``POST /orchestrator/start``, and the time until the last one has ended. The ideal is 25 rounds of
   ``true`` (each GPU runs 25 jobs back to back); the overhead per job is what each round costs beyond
   that, i.e. (total - ideal) / 25. It starts once creating a file in the work directory is cheap
   (``settled_create_us``), and reports what that cost.

4. Stop: a job that ignores SIGTERM is cancelled, and another reaches its time limit (1 s), with a
   grace of 1 s (``HERD_GRACE_S``); the figure is the time from the request (or the limit) to the end
   the server records, minus the grace.

``--compare TREE`` runs each part on another checkout too (``git worktree add TREE <commit>``), right
after this tree's; ``--repeat N`` takes N turns; a table of medians and ratios (this tree / TREE) ends
the run.

The client is a minimal asyncio HTTP/1.1 client, so that the benchmark measures the server, not httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from uuid import uuid4

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ is not installed
from tests.helpers import free_port, herd_command  # noqa: E402  (shared with the tests' ``herd serve``)


# -- a server for one part of the benchmark ----------------------------------------------------------
class Server:
    """``herd serve`` of this tree, or, with ``tree``, of another checkout of gpuherd (``git worktree
    add``): its own code, run as ``python -m agent.cli`` with that tree first on the path."""

    tree: Path | None = None  # set by --compare for the other side's servers
    scratch: Path | None = None  # set by ``kept_workdirs``: where work directories stay until the benchmark ends

    def __init__(self, *args: str, env_extra: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="herd-bench-", dir=self.scratch))
        self.socket = f"herd-bench-{uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HERD_", "RESEARCH_AGENT_"))}
        env["HERD_TMUX_SOCKET"] = self.socket
        env.update(env_extra or {})
        command, cwd = herd_command(), None
        if self.tree is not None:
            command, cwd = [sys.executable, "-m", "agent.cli"], str(self.tree)
            env["PYTHONPATH"] = str(self.tree)
        self.log = (self.dir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [*command, "serve", "--single-user", "--port", str(self.port), "--workdir", str(self.dir / "herd"),
             "--gpus", "8", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"the server did not start; see {self.dir / 'server.log'}")
                time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()
        self.log.close()
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        tmux_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (tmux_dir / self.socket).unlink(missing_ok=True)  # tmux leaves its socket file behind
        if self.scratch is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ext4 without a journal (this VM's root file system): allocating an inode, the kernel steps over every
# inode of the group freed in the last 60 s, or 360 s while its inode table block is dirty, one buffer
# lookup each (``recently_deleted`` in fs/ext4/ialloc.c). Creating ~2,000 files, as a turnover run
# does, dirties those blocks, so it is the 360 s that counts after a large removal.
RECENTLY_FREED_S = 360.0
# When a benchmark last removed its work directories: the file's time, for the next benchmark to wait.
REMOVED_MARK = Path(tempfile.gettempdir()) / "gpuherd-bench-removed"


@contextlib.contextmanager
def kept_workdirs() -> Iterator[Path]:
    """Every ``Server``'s work directory stays until the benchmark ends, and is removed then (and the
    time noted in ``REMOVED_MARK``). Removed after each run, a turnover run's ~2,000 files made each
    file the next run created cost up to 0.6 ms instead of ~20 µs (ten per job; turnover 37 -> 69 ms):
    a cost of the benchmark's clean-up, which a service, removing nothing, never pays."""
    Server.scratch = Path(tempfile.mkdtemp(prefix="herd-bench-"))
    try:
        yield Server.scratch
    finally:
        shutil.rmtree(Server.scratch, ignore_errors=True)
        Server.scratch = None
        REMOVED_MARK.touch()


def file_create_us(directory: Path, files: int = 100) -> float:
    """What creating an empty file costs in ``directory``'s file system now, in µs (the files stay, so
    that the probe frees nothing)."""
    probe = Path(tempfile.mkdtemp(prefix="probe-", dir=directory))
    t = time.perf_counter()
    for i in range(files):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.perf_counter() - t) / files * 1e6


# Creating a file on this VM's ext4 costs 16-34 µs when nothing was removed nearby in the last six
# minutes, and 80-310 µs in the six minutes after 8,000 files were (one probe every 20 s).
SETTLED_CREATE_US = 40.0


def settled_create_us(directory: Path, limit_s: float = RECENTLY_FREED_S + 60) -> float:
    """What creating a file costs in ``directory``, once ``RECENTLY_FREED_S`` have passed since an
    earlier benchmark removed its work directories and the cost is under ``SETTLED_CREATE_US`` (other
    removals: a test run), waiting up to ``limit_s`` in all and saying so. Reported beside turnover."""
    deadline = time.monotonic() + limit_s
    with contextlib.suppress(OSError):
        if (wait := REMOVED_MARK.stat().st_mtime + RECENTLY_FREED_S - time.time()) > 0:
            print(f"  an earlier benchmark removed its work directories {RECENTLY_FREED_S - wait:.0f} s ago; "
                  f"waiting {wait:.0f} s until new files no longer step over theirs ...", flush=True)
            time.sleep(min(wait, limit_s))
    while (cost := file_create_us(directory)) > SETTLED_CREATE_US and time.monotonic() < deadline:
        print(f"  creating a file in the work directory costs {cost:.0f} µs (files were removed there lately); "
              f"waiting for it to fall under {SETTLED_CREATE_US:.0f} µs ...", flush=True)
        time.sleep(20)
    return cost


# -- a small keep-alive HTTP client ------------------------------------------------------------------
class Connection:
    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post_json(self, path: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


@dataclass
class SubmitResult:
    clients: int
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    throughput: float
    errors: int


async def submit_load(port: int, clients: int, per_client: int, pace_s: float | None = None) -> SubmitResult:
    """``clients`` connections, each sending ``per_client`` submissions: back to back (closed loop), or
    with exponentially distributed pauses of mean ``pace_s`` between them (people, not a script)."""
    latencies: list[float] = []
    errors = 0
    body = {"user": "bench", "command": "true", "gpu_count": 1, "cwd": "/tmp"}

    async def client(conn: Connection, seed: int) -> None:
        nonlocal errors
        pauses = random.Random(seed)
        for _ in range(per_client):
            if pace_s is not None:
                await asyncio.sleep(pauses.expovariate(1 / pace_s))
            t = time.perf_counter()
            status, _ = await conn.post_json("/queue/submit", body)
            latencies.append(time.perf_counter() - t)
            errors += status != 201

    conns = [Connection(port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    await conns[0].post_json("/queue/submit", body)  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(client(c, i) for i, c in enumerate(conns)))
    wall = time.perf_counter() - start
    for c in conns:
        c.close()
    ms = [x * 1000 for x in latencies]
    return SubmitResult(clients, len(ms), statistics.median(ms), percentile(ms, 99), max(ms), len(ms) / wall, errors)


def busy_server() -> Server:
    """A server whose 8 GPUs are all taken by long jobs, so that every submission waits in the queue
    and every pass of the scheduler has a queue to order: a busy day, not an empty cluster."""
    server = Server("--max-queue-size", "100000")
    ids = [server.http.post("/queue/submit", json={"user": "sleeper", "command": "sleep 3600", "gpu_count": 1,
                                                   "cwd": "/tmp"}).json()["job_id"] for _ in range(8)]
    while any(server.http.get(f"/jobs/{i}").json()["status"] != "running" for i in ids):
        time.sleep(0.05)
    return server


def bench_submit(levels: list[tuple[int, int]], pace_s: float | None = None) -> list[SubmitResult]:
    results = []
    for clients, per_client in levels:
        with busy_server() as server:
            r = asyncio.run(submit_load(server.port, clients, per_client, pace_s))
        results.append(r)
        how = "closed loop" if pace_s is None else f"each client pausing {pace_s:g} s on average"
        print(f"submit  {clients:>2} clients ({how}): p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
              f"max {r.max_ms:6.1f} ms  {r.throughput:6.0f} req/s  ({r.requests} requests, {r.errors} errors)",
              flush=True)
    return results


def bench_submit_to_start(runs: int) -> list[float]:
    delays = []
    with Server() as server:
        for _ in range(runs):
            job_id = server.http.post("/queue/submit", json={
                "user": "bench", "command": "date +%s.%N", "gpu_count": 1, "cwd": "/tmp"}).json()["job_id"]
            while (job := server.http.get(f"/jobs/{job_id}").json())["status"] not in ("completed", "failed"):
                time.sleep(0.01)
            started = float(server.http.get(f"/jobs/{job_id}/logs").json()["text"].strip())
            delays.append((started - job["submit_time"]) * 1000)
    print(f"submit-to-start: p50 {statistics.median(delays):6.1f} ms  p90 {percentile(delays, 90):6.1f} ms  "
          f"max {max(delays):6.1f} ms  ({runs} jobs, one at a time)", flush=True)
    return delays


def time_of_true(runs: int = 50) -> float:
    """What one `true` costs as a job runs it (bash starting a script), in seconds."""
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "command"
        script.write_text("true\n")
        t = time.perf_counter()
        for _ in range(runs):
            subprocess.run(["bash", "--noprofile", "--norc", str(script)], check=True)
        return (time.perf_counter() - t) / runs


def bench_turnover(jobs: int, gpus: int = 8) -> dict:
    with Server("--stopped", "--max-queue-size", str(jobs * 2)) as server:
        create_us = settled_create_us(server.dir)
        for _ in range(jobs):
            server.http.post("/queue/submit", json={"user": "bench", "command": "true", "gpu_count": 1, "cwd": "/tmp"})
        t0 = time.time()
        server.http.post("/orchestrator/start")
        while True:
            counts = server.http.get("/orchestrator/status").json()["counts"]
            if counts["completed"] + counts["failed"] == jobs:
                break
            time.sleep(0.05)
        records = server.http.get("/jobs", params={"limit": 1000}).json()["jobs"]  # one page: jobs <= 1000
    total = max(j["end_time"] for j in records) - t0
    rounds = jobs / gpus
    ideal = rounds * time_of_true()
    result = {
        "jobs": jobs, "gpus": gpus, "total_s": total, "ideal_s": ideal,
        "overhead_per_job_ms": (total - ideal) / rounds * 1000, "jobs_per_s": jobs / total,
        "failed": sum(j["status"] != "completed" for j in records), "file_create_us": create_us,
    }
    print(f"turnover: {jobs} jobs of `true` on {gpus} GPUs in {total:.2f} s (ideal {ideal:.2f} s): "
          f"{result['overhead_per_job_ms']:.0f} ms overhead per job per GPU, {result['jobs_per_s']:.1f} jobs/s, "
          f"{result['failed']} failed; creating a file in the work directory: {create_us:.0f} µs", flush=True)
    return result


STOP_GRACE_S = 1.0
# A job that ignores SIGTERM (it and its sleep), so that every stop takes the whole grace and a SIGKILL.
STUBBORN = "trap '' TERM; echo ready; sleep 300"


def bench_stop(runs: int) -> dict:
    """How long past its grace a stop takes, for a job that ignores SIGTERM: a cancel (from the request)
    and a time limit (from the limit), each to the end the server records, minus the grace."""
    late: dict[str, list[float]] = {"cancel": [], "time limit": []}
    with Server(env_extra={"HERD_GRACE_S": str(STOP_GRACE_S)}) as server:
        for _ in range(runs):
            job_id = server.http.post("/queue/submit", json={
                "user": "bench", "command": STUBBORN, "gpu_count": 1, "cwd": "/tmp"}).json()["job_id"]
            while "ready" not in server.http.get(f"/jobs/{job_id}/logs").json()["text"]:
                time.sleep(0.01)
            asked = time.time()
            server.http.delete(f"/queue/{job_id}")
            while (job := server.http.get(f"/jobs/{job_id}").json())["status"] != "cancelled":
                time.sleep(0.01)
            late["cancel"].append((job["end_time"] - asked - STOP_GRACE_S) * 1000)

            job_id = server.http.post("/queue/submit", json={
                "user": "bench", "command": STUBBORN, "gpu_count": 1, "cwd": "/tmp", "time_limit_s": 1}).json()["job_id"]
            while (job := server.http.get(f"/jobs/{job_id}").json())["status"] not in ("failed", "completed"):
                time.sleep(0.01)
            late["time limit"].append((job["end_time"] - job["start_time"] - 1 - STOP_GRACE_S) * 1000)
    result = {}
    for what, values in late.items():
        result[what] = {"p50": statistics.median(values), "max": max(values), "runs": len(values)}
        print(f"stop ({what}) of a SIGTERM-ignoring job, past its {STOP_GRACE_S:g} s grace: "
              f"p50 {statistics.median(values):6.1f} ms  max {max(values):6.1f} ms  ({len(values)} runs)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--parts", default="submit,paced,start,turnover,stop", help="which parts, comma-separated")
    parser.add_argument("--compare", type=Path, metavar="TREE",
                        help="another checkout of gpuherd (git worktree add TREE <commit>): each part runs on it "
                        "too, right after this tree's, and both are reported")
    parser.add_argument("--repeat", type=int, default=1, help="run the parts this many times (taking turns with --compare)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("the benchmark runs real jobs and needs tmux")
    parts = set(args.parts.split(","))
    scale = 0.1 if args.quick else 1.0
    print(f"gpuherd service benchmark on {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}",
          flush=True)
    sides: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare is not None:
        sides.append((f"{args.compare}", args.compare.resolve()))
    runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
    with kept_workdirs():
        for repeat in range(args.repeat):
            for name, tree in sides:  # taking turns, so that the machine's load falls on both alike
                print(f"-- run {repeat + 1} of {args.repeat}: {name}", flush=True)
                Server.tree = tree
                runs[name].append(run_parts(parts, scale))
    Server.tree = None
    if len(sides) > 1 or args.repeat > 1:
        summarize(runs)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


def run_parts(parts: set[str], scale: float) -> dict:
    figures: dict[str, object] = {}
    if "submit" in parts:
        levels = [(1, int(500 * scale)), (10, int(100 * scale)), (50, int(40 * scale))]
        figures["submit"] = [r.__dict__ for r in bench_submit(levels)]
    if "paced" in parts:
        figures["submit_paced"] = [r.__dict__ for r in bench_submit([(50, int(20 * scale) or 2)], pace_s=0.5)]
    if "start" in parts:
        delays = bench_submit_to_start(int(30 * scale) or 3)
        figures["submit_to_start_ms"] = {"p50": statistics.median(delays), "p90": percentile(delays, 90), "max": max(delays)}
    if "turnover" in parts:
        figures["turnover"] = bench_turnover(200)
    if "stop" in parts:
        figures["stop"] = bench_stop(int(6 * scale) or 2)
    return figures


# The figures the summary compares: (label, path into a run's figures).
SUMMARY = (
    ("submit, 1 client, p50 ms", ("submit", 0, "p50_ms")),
    ("submit, 1 client, p99 ms", ("submit", 0, "p99_ms")),
    ("submit, 1 client, per s", ("submit", 0, "throughput")),
    ("submit, 10 clients, p50 ms", ("submit", 1, "p50_ms")),
    ("submit, 10 clients, per s", ("submit", 1, "throughput")),
    ("submit, 50 clients, p50 ms", ("submit", 2, "p50_ms")),
    ("submit, 50 clients, p99 ms", ("submit", 2, "p99_ms")),
    ("submit, 50 clients, per s", ("submit", 2, "throughput")),
    ("submit, 50 clients paced, p50 ms", ("submit_paced", 0, "p50_ms")),
    ("submit, 50 clients paced, p99 ms", ("submit_paced", 0, "p99_ms")),
    ("submit-to-start p50, ms", ("submit_to_start_ms", "p50")),
    ("turnover, s", ("turnover", "total_s")),
    ("turnover overhead per job per GPU, ms", ("turnover", "overhead_per_job_ms")),
    ("creating a file in the work directory, µs", ("turnover", "file_create_us")),
    ("cancel past grace p50, ms", ("stop", "cancel", "p50")),
    ("cancel past grace max, ms", ("stop", "cancel", "max")),
    ("time limit past grace p50, ms", ("stop", "time limit", "p50")),
    ("time limit past grace max, ms", ("stop", "time limit", "max")),
)


def summarize(runs: dict[str, list[dict]], summary: tuple[tuple[str, tuple[str | int, ...]], ...] = SUMMARY) -> None:
    """Each figure of ``summary`` (label, path in a run's figures): its median over the runs (with its
    range), per side, and this tree's over the other's."""
    names = list(runs)
    print("\n| figure | " + " | ".join(f"{n}: median [range]" for n in names) + (" | ratio |" if len(names) > 1 else " |"))
    print("|---|" + "---|" * len(names) + ("---|" if len(names) > 1 else ""))
    for label, path in summary:
        medians, cells = [], []
        for name in names:
            values = [v for v in (_dig(run, path) for run in runs[name]) if v is not None]
            if not values:
                break
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.1f} [{min(values):.1f}-{max(values):.1f}]")
        else:
            ratio = f" {medians[0] / medians[1]:.2f} |" if len(names) > 1 and medians[1] else ""
            print(f"| {label} | " + " | ".join(cells) + " |" + ratio)


def _dig(figures: dict, path: tuple[str | int, ...]) -> float | None:
    for key in path:  # a name in a dict, or a place in a list (the submit part's levels)
        if isinstance(key, int) and isinstance(figures, list) and key < len(figures):
            figures = figures[key]
        elif isinstance(key, str) and isinstance(figures, dict) and key in figures:
            figures = figures[key]
        else:
            return None
    return figures


if __name__ == "__main__":
    main()
