"""Plain helpers shared by the tests and the benchmarks: a free port, the ``herd`` command, and the one
polling helper. Nothing here is a fixture (those are in ``conftest.py``); ``bench/`` imports this
module after putting the repository root on ``sys.path``."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

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
