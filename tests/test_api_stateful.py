"""A stateful property test of the service through its HTTP API: submissions (some with an
Idempotency-Key, and retries of them), cancels, priority changes, completions by hand, scheduler
passes, time passing, and restarts of the service on the same work directory (the simulated executor
goes on running its jobs across them, as tmux does). After every step, as REST reports it:

- no GPU is held by two jobs, and each holder holds what it asked for;
- every acknowledged (201) submission exists, and a retried key names the same job;
- a job in a terminal state never changes again.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.api import create_app
from agent.service import Service
from agent.settings import Settings
from tests.rest import T0
from tools.clock import SimClock
from tools.nvml import UnavailableProbe
from tools.sim_executor import SimExecutor

pytestmark = pytest.mark.slow

TERMINAL = ("completed", "failed", "cancelled")
USERS = ("ana", "bo")


class ApiMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="herd-stateful-"))
        self.clock = SimClock(T0)
        self.durations: dict[int, float | None] = {}
        self.codes: dict[int, int] = {}
        self.sim = SimExecutor(duration_of=lambda job: self.durations.get(job.id),
                               exit_code_of=lambda job: self.codes.get(job.id, 0))
        self.acknowledged: set[int] = set()
        self.keys: dict[str, tuple[dict, int]] = {}  # Idempotency-Key -> (body, job id)
        self.final: dict[int, dict] = {}  # terminal jobs as first seen
        self.restarts = 0
        self.http = self._open()

    def _open(self) -> TestClient:
        values = {"workdir": self.dir / "herd", "gpus": 4, "max_queue_size": 20}
        if "single_user" in Settings.model_fields:  # a loopback request acts as the server's user
            values["single_user"] = True
        self.service = Service(Settings.plain(**values), clock=self.clock, executor=self.sim,
                               probe=UnavailableProbe("no NVML in tests"), run_loop=False)
        http = TestClient(create_app(self.service), base_url="http://localhost", client=("127.0.0.1", 50000))
        http.__enter__()
        return http

    def teardown(self) -> None:
        self.http.__exit__(None, None, None)
        shutil.rmtree(self.dir, ignore_errors=True)

    def jobs(self) -> list[dict]:
        found, cursor = [], None
        while True:
            page = self.http.get("/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            found += page.json()["jobs"]
            cursor = page.json()["next"]
            if cursor is None:
                return found

    def pick(self, data, statuses: tuple[str, ...] | None = None) -> dict | None:
        jobs = [j for j in self.jobs() if statuses is None or j["status"] in statuses]
        return data.draw(st.sampled_from(jobs)) if jobs else None

    # -- rules ------------------------------------------------------------------------------------------
    @rule(user=st.sampled_from(USERS), gpus=st.sampled_from([1, 1, 2, 3, 4, 5]), priority=st.integers(1, 10),
          duration=st.one_of(st.none(), st.floats(1, 100)), code=st.sampled_from([0, 0, 0, 1]),
          keyed=st.booleans())
    def submit(self, user, gpus, priority, duration, code, keyed):
        body = {"user": user, "command": "train", "gpu_count": gpus, "priority": priority, "max_retries": 0}
        key = str(uuid.uuid4()) if keyed else None
        response = self.http.post("/queue/submit", json=body, headers={"Idempotency-Key": key} if key else {})
        if gpus > 4:  # fits no node
            assert response.status_code == 422, response.text
            return
        if response.status_code == 429:
            return
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]
        assert job_id not in self.acknowledged
        self.acknowledged.add(job_id)
        self.durations[job_id], self.codes[job_id] = duration, code
        if key:
            self.keys[key] = (body, job_id)

    @precondition(lambda self: self.keys)
    @rule(data=st.data(), changed=st.booleans())
    def retry(self, data, changed):
        """The answer was lost: the client sends the same request with the same key."""
        key = data.draw(st.sampled_from(sorted(self.keys)))
        body, job_id = self.keys[key]
        if changed:
            body = body | {"priority": body["priority"] % 10 + 1}
        response = self.http.post("/queue/submit", json=body, headers={"Idempotency-Key": key})
        if changed:
            assert response.status_code == 422 and "Idempotency-Key" in response.json()["detail"]
        else:
            assert (response.status_code, response.json()["job_id"]) == (201, job_id), response.text

    @rule(data=st.data())
    def cancel(self, data):
        job = self.pick(data)
        if job is not None:
            response = self.http.delete(f"/queue/{job['id']}")
            assert response.status_code == (409 if job["status"] in TERMINAL else 200), response.text

    @rule(data=st.data(), priority=st.integers(1, 10))
    def change_priority(self, data, priority):
        job = self.pick(data)
        if job is not None:
            response = self.http.patch(f"/queue/{job['id']}/priority", json={"priority": priority})
            assert response.status_code == (200 if job["status"] == "queued" else 409), response.text

    @rule(data=st.data(), code=st.sampled_from([0, 3]))
    def complete(self, data, code):
        job = self.pick(data, ("running",))
        if job is not None:
            response = self.http.post(f"/jobs/{job['id']}/complete", json={"exit_code": code})
            assert response.status_code == 200, response.text

    @rule()
    def tick(self):
        self.service.orchestrator.tick()

    @rule(dt=st.floats(1, 60))
    def time_passes(self, dt):
        self.clock.advance(dt)
        self.service.orchestrator.tick()

    @rule()
    def restart(self):
        """Stop the service and start a new one on the same work directory; the jobs go on running."""
        self.http.__exit__(None, None, None)
        self.restarts += 1
        self.http = self._open()

    # -- invariants -------------------------------------------------------------------------------------
    @invariant()
    def no_gpu_is_held_twice(self):
        held: dict[tuple[str, int], int] = {}
        for entry in self.http.get("/queue").json()["jobs"]:
            job = entry["job"]
            if job["status"] in ("scheduled", "running"):
                allocation = job["allocation"]
                assert len(allocation["gpus"]) == job["gpu_count"]
                for gpu in allocation["gpus"]:
                    assert (allocation["node"], gpu) not in held, f"GPU {gpu} held twice"
                    held[allocation["node"], gpu] = job["id"]
        allocated = {(node["name"], gpu["index"]): gpu["job_id"]
                     for node in self.http.get("/gpu/status").json()["nodes"]
                     for gpu in node["gpus"] if gpu["state"] == "allocated"}
        assert allocated == held

    @invariant()
    def acknowledged_jobs_exist_and_terminal_states_stay(self):
        jobs = {j["id"]: j for j in self.jobs()}
        assert self.acknowledged <= set(jobs)
        assert len(jobs) == len(self.acknowledged)  # no job that was not acknowledged, no duplicate
        for job_id, first in self.final.items():
            assert {k: jobs[job_id][k] for k in ("status", "exit_code", "end_time")} == first
        for job in jobs.values():
            if job["status"] in TERMINAL and job["id"] not in self.final:
                self.final[job["id"]] = {k: job[k] for k in ("status", "exit_code", "end_time")}


TestApiMachine = ApiMachine.TestCase
TestApiMachine.settings = settings(max_examples=12, stateful_step_count=25, deadline=None, derandomize=True,
                                   database=None, suppress_health_check=[HealthCheck.too_slow])
