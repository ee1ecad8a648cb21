"""Plain helpers shared by the tests and the benchmarks: a free port, the ``herd`` command, the one
polling helper and a maker of tmux executors. Nothing here is a fixture (those are in ``conftest.py``);
``bench/`` imports this module after putting the repository root on ``sys.path``."""

from __future__ import annotations

import socket
import sys
import time
from contextlib import contextmanager
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
