"""Plain helpers shared by the tests and the benchmarks: a free port, the ``herd`` command, the one
polling helper, a maker of tmux executors, a webhook receiver and a request over the socket as some user.
Nothing here is a fixture (those are in ``conftest.py``); ``bench/`` imports this module after putting the
repository root on ``sys.path``."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from uuid import uuid4

from tools.tmux_executor import TmuxExecutor

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def herd_command() -> list[str]:
    """The installed console script when there is one (that is what people run), else the module."""
    script = Path(sys.executable).parent / "herd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 5.0,
    interval_s: float = 0.01,
    *,
    what: str | Callable[[], str] | None = None,
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; ``pause(interval_s)``
    between calls (``time.sleep``, or e.g. an executor's ``wait``, which returns early when a job ends).
    After ``timeout_s`` an AssertionError says ``what`` was awaited (a callable is asked only then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {text or 'the condition'}")
        pause(interval_s)


@contextmanager
def tmux_executors(workdir: Path, socket_name: str | None = None) -> Iterator[Callable[..., TmuxExecutor]]:
    """A maker of tmux executors sharing ``workdir`` and one tmux socket; on leaving, each is closed and
    their tmux server killed."""
    socket_name = socket_name or f"herd-test-{uuid4().hex[:8]}"
    made: list[TmuxExecutor] = []

    def make(**kw) -> TmuxExecutor:
        ex = TmuxExecutor(workdir, socket_name=socket_name, **kw)
        made.append(ex)
        return ex

    try:
        yield make
    finally:
        for ex in made:
            ex.close()
        if made:
            made[-1].shutdown_server()


@dataclass
class Received:
    path: str
    key: str | None
    body: dict


@dataclass
class WebhookReceiver:
    """A webhook receiver on loopback: answers ``statuses`` in turn (then 200), each after ``delay_s``;
    keeps what it was sent."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    got: list[Received] = field(default_factory=list)
    hits: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.hits += 1
                time.sleep(receiver.delay_s)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.got.append(Received(self.path, self.headers.get("Idempotency-Key"), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_over_socket(sock: Path, method: str, path: str, body: dict | None = None, *, as_user: str | None = None
                ) -> tuple[int, object]:
    """(status, JSON) of a request over gpuherd's Unix socket, made by ``as_user`` (root if None) with curl,
    so that another user needs no Python of ours: the server learns who asks from the peer credentials."""
    command = ["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", str(sock), "-X", method, f"http://localhost{path}"]
    if body is not None:
        command += ["-H", "content-type: application/json", "-d", json.dumps(body)]
    if as_user is not None:
        command = ["runuser", "-u", as_user, "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text) if text else None
