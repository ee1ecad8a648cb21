"""``herd serve`` as a real process for the CLI, restart and end-to-end tests.

Each server gets a free port, its own work directory and its own tmux socket; the ``herd_server``
fixture (``conftest.py``) kills every server it made and its tmux server (and so every job), whatever
the test did.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from tests.helpers import free_port, herd_command, wait_until


START_TIMEOUT_S = 30.0  # a cold start imports FastAPI and pydantic; a loaded 2-core runner is slow


class HerdServer:
    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None, single_user: bool = True) -> None:
        """``single_user``: loopback requests act as the server's user, as under `make run` (identity's own
        tests start a shared server instead)."""
        self.workdir = workdir
        self.args = [*(["--single-user"] if single_user else []), *args]
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

        def healthy() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"herd serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, START_TIMEOUT_S, 0.05, what=lambda: f"herd serve to answer /healthz:\n{self.output()}")
        return self

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

    def close(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop the server (``sig``), its HTTP client and its tmux server with the jobs in it."""
        self.stop(sig)
        self.http.close()
        self.kill_tmux()

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
        last: dict = {}

        def reached() -> dict | None:
            last.update(self.job(job_id))
            return dict(last) if last["status"] in statuses else None

        return wait_until(reached, timeout_s, 0.05, what=lambda: (
            f"job {job_id} to be {' or '.join(statuses)}; it is {last.get('status')}:\n{self.output()}"))
