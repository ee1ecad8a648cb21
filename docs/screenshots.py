"""Screenshots of the dashboard's views for the README, taken with Debian's chromium, headless.

    .venv/bin/python docs/screenshots.py [--out docs/screenshots]

A real server on loopback (``tests/dashboard_server.py``: the app under uvicorn, the scheduler ticking,
jobs simulated) with 8 H100s "detected" through the NVML twin of the tests, whose readings follow
what runs on them, and a clock that runs 720 times faster than the wall's, so that 30 seconds make 6
hours of a small lab's day: four people submitting jobs of 1 to 4 GPUs lasting 20 minutes to 3 hours.
Then one PNG per view: GPUs, queue, a job's page, topology, charts.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ is not installed

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.dashboard_server import DashboardServer  # noqa: E402
from tests.fake_nvml import FakeNvml, FakeProcess, h100s  # noqa: E402
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tools.nvml import NvmlProbe  # noqa: E402

SPEED = 720.0  # simulated seconds per real second
HOURS = 6.0
USERS = {"ana": 3.0, "ben": 2.0, "chen": 1.5, "dana": 1.0}  # how often each submits, relative


class FastClock:
    """Wall time from ``HOURS`` ago, running ``SPEED`` times faster until it has caught up with now (after
    HOURS * 3600 / SPEED s), then at the wall's pace, so that the page's "waiting for" matches."""

    def __init__(self) -> None:
        self.origin = time.time() - HOURS * 3600
        self.started = time.monotonic()

    def monotonic(self) -> float:
        real = time.monotonic() - self.started
        catch_up = HOURS * 3600 / SPEED
        return min(real, catch_up) * SPEED + max(0.0, real - catch_up)

    def now(self) -> float:
        return self.origin + self.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / SPEED)


def readings(server: DashboardServer, gpus, stop: threading.Event) -> None:
    """The twin's GPUs read as busy as the jobs on them."""
    rng = random.Random(7)
    while not stop.wait(0.2):
        held = {}
        for node in server.http.get("/gpu/status").json()["nodes"]:
            for g in node["gpus"]:
                held[g["index"]] = g["job_id"]
        for index, gpu in enumerate(gpus):
            if held.get(index):
                gpu.utilization_pct = min(100, max(35, int(rng.gauss(84, 10))))
                gpu.memory_used_mib = int(rng.uniform(0.35, 0.92) * gpu.memory_total_mib)
                gpu.temperature_c, gpu.power_mw = int(rng.uniform(58, 74)), int(rng.uniform(420, 690) * 1000)
                gpu.processes = [FakeProcess(pid=40_000 + held[index], used_mib=gpu.memory_used_mib - 600)]
            else:
                gpu.utilization_pct, gpu.memory_used_mib, gpu.processes = 0, 4, []
                gpu.temperature_c, gpu.power_mw = int(rng.uniform(31, 36)), int(rng.uniform(68, 75) * 1000)


def busy_day(server: DashboardServer, until: float) -> None:
    rng = random.Random(1)
    names = ["sweep-lr", "ft-llama", "eval-mmlu", "pretrain", "ablation", "distill", "rlhf-ppo"]
    users = list(USERS)
    while time.monotonic() < until:
        user = rng.choices(users, weights=list(USERS.values()))[0]
        gpus = rng.choice([1, 1, 1, 2, 2, 4])
        minutes = rng.choice([20, 30, 45, 60, 90, 120, 180])
        job_id = server.submit(user=user, gpu_count=gpus, name=f"{rng.choice(names)}-{rng.randint(1, 99)}",
                               priority=rng.choice([3, 5, 5, 5, 7, 8]), est_duration_s=minutes * 60.0)
        server.durations[job_id] = minutes * 60.0 * rng.uniform(0.6, 1.1)
        time.sleep(rng.expovariate(1 / 0.9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = h100s(8)
    workdir = Path(tempfile.mkdtemp(prefix="herd-shots-"))
    probe = NvmlProbe("gpu01", FakeNvml(gpus), proc_root=workdir)
    stop = threading.Event()
    with DashboardServer(workdir / "herd", gpus=None, probe=probe, clock=FastClock(), metrics_interval_s=0.25,
                         max_queue_size=1000) as server:
        threading.Thread(target=readings, args=(server, gpus, stop), daemon=True).start()
        busy_day(server, time.monotonic() + HOURS * 3600 / SPEED)
        for user, name in (("ben", "pretrain-7b"), ("chen", "sweep-wd"), ("dana", "eval-long")):  # a queue to show
            server.submit(user=user, gpu_count=4, name=name, est_duration_s=7200.0)
        time.sleep(1.0)
        running = next(e["job"]["id"] for e in server.http.get("/queue").json()["jobs"] if e["position"] is None)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1360, "height": 860}, device_scale_factor=1)
            for name, hash_, ready in (("gpus", "#/gpus", "gpus"), ("queue", "#/queue", "queue"),
                                       ("job", f"#/job/{running}", "job"), ("topology", "#/topology", "topology"),
                                       ("charts", "#/charts", "charts")):
                page.goto(f"{server.url}/{hash_}")
                page.wait_for_selector(f"body[data-ready='{ready}']", timeout=15_000)
                page.wait_for_timeout(400)
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=name != "queue")
                print(f"{args.out / f'{name}.png'}")
            browser.close()
        stop.set()


if __name__ == "__main__":
    main()
