"""The REST app over a ``Service`` on a simulated clock and executor, as the ``make_api`` fixture
(``conftest.py``) builds it: every scheduler pass is the test's own ``tick()``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.testclient import TestClient

from agent.service import Service
from tools.clock import SimClock
from tools.sim_executor import SimExecutor

T0 = 1_700_000_000.0  # the simulated clock's start


@dataclass
class Api:
    http: TestClient
    service: Service
    clock: SimClock
    sim: SimExecutor

    def submit(self, **body):
        return self.http.post("/queue/submit", json={"user": "alice", "command": "true", "gpu_count": 1, **body})

    def submit_ok(self, **body) -> int:
        response = self.submit(**body)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def tick(self):
        return self.service.orchestrator.tick()

    def job(self, job_id: int) -> dict:
        return self.http.get(f"/jobs/{job_id}").json()

    def all_jobs(self) -> list[dict]:
        """Every job, oldest first, following ``GET /jobs``'s pages (newest first) to the end."""
        found, cursor = [], None
        while True:
            page = self.http.get("/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
            found += page["jobs"]
            cursor = page["next"]
            if cursor is None:
                return found[::-1]
