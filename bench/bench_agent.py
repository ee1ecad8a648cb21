"""Benchmark: with a model endpoint that hangs, do jobs still start at once under ``--policy agent``?

    .venv/bin/python bench/bench_agent.py [--jobs 40] [--gap 0.5] [--json figures.json]

A fake OpenAI-compatible endpoint on loopback accepts every request and never answers (it holds the
connection until the benchmark ends). ``herd serve --single-user --gpus 8 --policy agent`` is started
against it (the installed console script, a fresh work directory, its own tmux socket; the default
model timeout, agent budget, wait and breaker). Then ``--jobs`` jobs of ``sleep 0.2`` (1 GPU each, so
every one fits when it arrives) are submitted ``--gap`` seconds apart, and for each the time from its
``submit_time`` to its ``start_time`` (both the server's clock) is read back. Meanwhile
``/orchestrator/status`` is sampled every 0.1 s for the longest scheduler pass and the breaker's
state. The aim (issue 17): p95 submit-to-start under 1 s with the model hung; before, each pass waited
for the model's whole budget (10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import uuid4

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ is not installed
from tests.helpers import free_port, herd_command  # noqa: E402


class HungEndpoint:
    """Accepts chat-completion requests and never answers them."""

    def __init__(self) -> None:
        self.requests = 0
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.requests += 1
                endpoint.release.wait(3600)  # the client times out first

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Server:
    def __init__(self, endpoint: str, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="herd-bench-agent-"))
        self.socket = f"herd-bench-{uuid4().hex[:8]}"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HERD_", "RESEARCH_AGENT_", "OPENAI_"))}
        env.update(HERD_TMUX_SOCKET=self.socket, OPENAI_BASE_URL=endpoint, OPENAI_API_KEY="bench", HERD_MODEL="hung")
        self.log = (self.dir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [*herd_command(), "serve", "--single-user", "--port", str(self.port), "--workdir", str(self.dir / "herd"),
             "--gpus", "8", "--policy", "agent", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
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
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between ranks, as numpy's default."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Sampler(threading.Thread):
    """``/orchestrator/status`` every 0.1 s: the longest pass, and the breaker states seen."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        self.stop = threading.Event()
        self.longest_pass_s = 0.0
        self.states: list[str] = []
        self.last: dict = {}

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status = self.http.get("/orchestrator/status").json()
            except httpx.HTTPError:
                continue
            self.last = status
            if status.get("last_tick"):
                self.longest_pass_s = max(self.longest_pass_s, status["last_tick"]["duration_s"])
            state = (status.get("agent") or {}).get("breaker", {}).get("state")
            if state and (not self.states or self.states[-1] != state):
                self.states.append(state)
            self.stop.wait(0.1)


def bench(jobs: int, gap_s: float) -> dict:
    endpoint = HungEndpoint()
    server = Server(endpoint.base_url)
    sampler = Sampler(server.port)
    sampler.start()
    try:
        ids = []
        t0 = time.monotonic()
        for i in range(jobs):
            response = server.http.post("/queue/submit", json={"command": "sleep 0.2", "gpu_count": 1, "cwd": "/tmp",
                                                               "name": f"bench-{i}"})
            response.raise_for_status()
            ids.append(response.json()["job_id"])
            time.sleep(max(0.0, t0 + (i + 1) * gap_s - time.monotonic()))
        delays = []
        for job_id in ids:
            deadline = time.monotonic() + 60
            while (job := server.http.get(f"/jobs/{job_id}").json())["start_time"] is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job_id} did not start within a minute")
                time.sleep(0.05)
            delays.append(job["start_time"] - job["submit_time"])
        time.sleep(0.3)
        sampler.stop.set()
        sampler.join()
        agent = sampler.last.get("agent") or {}
    finally:
        server.close()
        endpoint.close()
    figures = {
        "jobs": jobs, "gap_s": gap_s,
        "submit_to_start_s": {"p50": statistics.median(delays), "p95": percentile(delays, 95), "max": max(delays)},
        "under_1s": sum(d < 1.0 for d in delays) / len(delays),
        "longest_pass_s": sampler.longest_pass_s,
        "breaker_states_seen": sampler.states,
        "breaker": agent.get("breaker"),
        "consultations": agent.get("consultations"), "failed": agent.get("failed"),
        "fallbacks": agent.get("fallbacks"), "model_requests": endpoint.requests,
    }
    s = figures["submit_to_start_s"]
    print(f"hung model, {jobs} jobs {gap_s:g} s apart: submit-to-start p50 {s['p50'] * 1000:.0f} ms, "
          f"p95 {s['p95'] * 1000:.0f} ms, max {s['max'] * 1000:.0f} ms; {figures['under_1s']:.0%} under 1 s")
    print(f"longest scheduler pass {figures['longest_pass_s'] * 1000:.0f} ms; model requests {endpoint.requests}, "
          f"consultations {figures['consultations']} ({figures['failed']} failed), fallbacks {figures['fallbacks']}; "
          f"breaker {' -> '.join(sampler.states)}, opened {(agent.get('breaker') or {}).get('opened')} time(s), "
          f"backoff now {(agent.get('breaker') or {}).get('backoff_s')} s")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between submissions")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    figures = bench(args.jobs, args.gap)
    figures["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
