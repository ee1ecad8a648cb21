"""A real HTTP server on loopback for the dashboard's browser tests and screenshots: the app under
uvicorn in a thread, its service ticking with the real clock and the simulated executor (a job runs
for its ``durations`` entry, or until it is cancelled), samples every ``metrics_interval_s``.

``shared=True`` makes the server take callers as a lab's head node does (shared mode: owners own their
jobs, root is the administrator) whatever user runs the tests, and gives ``token(user)``.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import uvicorn

from agent.api import create_app
from agent.identity import Identities, Mode
from agent.llm import Model
from agent.service import Service
from agent.settings import Settings
from tests.helpers import free_port, wait_until
from tools.clock import Clock
from tools.nvml import GpuProbe, UnavailableProbe
from tools.sim_executor import SimExecutor


class DashboardServer:
    def __init__(self, workdir: Path, *, gpus: int | None = 4, shared: bool = False, durations: dict[int, float] | None = None,
                 probe: GpuProbe | None = None, clock: Clock | None = None, model: Model | None = None,
                 metrics_interval_s: float = 0.25, **settings) -> None:
        self.durations = dict(durations or {})
        self.settings = Settings.plain(workdir=workdir, gpus=gpus, single_user=not shared, tick_interval_s=0.1,
                                       metrics_interval_s=metrics_interval_s, **settings)
        self.service = Service(self.settings, executor=SimExecutor(duration_of=lambda job: self.durations.get(job.id)),
                               probe=probe or UnavailableProbe("no NVML in tests"), clock=clock, model=model)
        if shared:
            self.service.identities = Identities(mode=Mode.SHARED, server_user="root", admins=frozenset({"root"}),
                                                 tokens=self.service.core.tokens)
            self.service.core.owners_must_exist = False  # the simulated executor runs no process as anyone
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service), host="127.0.0.1", port=self.port,
                                                    log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="dashboard-server", daemon=True)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> DashboardServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, what="the dashboard's server to start")
        return self

    def stop(self) -> None:
        self.server.handle_exit(signal.SIGTERM, None)  # as the signal would: open event streams end
        self.thread.join(15)
        self.http.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- conveniences -------------------------------------------------------------------------------
    def token(self, user: str) -> str:
        """A bearer token for ``user``, as `herd token` would mint it."""
        assert self.service.core.tokens is not None
        _, token = self.service.core.tokens.mint(user, now=self.service.clock.now(), note="test")
        return token

    def submit(self, token: str | None = None, **body) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.http.post("/queue/submit", json={"command": "train", "gpu_count": 1, **body}, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def status(self, job_id: int) -> str:
        return self.http.get(f"/jobs/{job_id}").json()["status"]

    def wait_for(self, job_id: int, status: str, timeout_s: float = 5.0) -> None:
        wait_until(lambda: self.status(job_id) == status, timeout_s, 0.02, what=f"job {job_id} to be {status}")
