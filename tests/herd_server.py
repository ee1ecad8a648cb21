"""``herd serve`` as a real process for the CLI, restart and end-to-end tests.

Each server gets a free port, its own work directory and its own tmux socket; the ``herd_server``
fixture kills every server it made and its tmux server (and so every job), whatever the test did.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

START_TIMEOUT_S = 30.0  # a cold start imports FastAPI and pydantic; a loaded 2-core runner is slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def herd_command() -> list[str]:
    """The installed console script when there is one (that is what people run), else the module."""
    script = Path(sys.executable).parent / "herd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


class HerdServer:
    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.socket = f"herd-test-{uuid4().hex[:8]}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HERD_", "RESEARCH_AGENT_", "OPENAI_"))},
            "HERD_TMUX_SOCKET": self.socket,
            "HERD_GRACE_S": "2",
            **(env or {}),
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10.0)
        self._log = workdir.parent / f"server-{self.socket}.log"

    def start(self) -> HerdServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self._log.open("ab")
        self.proc = subprocess.Popen(
            [*herd_command(), "serve", "--port", str(self.port), "--workdir", str(self.workdir), *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"herd serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"herd serve did not answer /healthz in {START_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill_tmux(self) -> None:
        """Kill this server's tmux server, and so its jobs; remove the socket file tmux leaves behind."""
        tmux = shutil.which("tmux")
        if tmux:
            subprocess.run([tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
        tmux_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (tmux_dir / self.socket).unlink(missing_ok=True)

    # -- small conveniences for tests --------------------------------------------------------------
    def submit(self, **body) -> dict:
        body = {"user": "tester", "gpu_count": 1, **body}
        response = self.http.post("/queue/submit", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: int) -> dict:
        return self.http.get(f"/jobs/{job_id}").json()

    def wait_for(self, job_id: int, *statuses: str, timeout_s: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} is {job['status']}, not {statuses}, after {timeout_s} s:\n{self.output()}")
            time.sleep(0.05)


@pytest.fixture
def herd_server(tmp_path: Path):
    """``make(*args, env=...)`` builds a (not yet started) server on a fresh work directory."""
    made: list[HerdServer] = []

    def make(*args: str, env: dict[str, str] | None = None, workdir: Path | None = None) -> HerdServer:
        server = HerdServer(workdir or tmp_path / f"herd-{len(made)}", *args, env=env)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop(signal.SIGKILL)
        server.http.close()
        server.kill_tmux()
