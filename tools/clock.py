"""One clock for the whole core.

Nothing in ``tools/`` or ``policies/`` reads the wall clock: "now" comes from a ``Clock`` that the
service builds as ``RealClock`` and the tests and the eval harness build as ``SimClock``.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (real) or since the simulation began (simulated)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass: block on a real clock, jump forward on a simulated one."""
        ...


class RealClock:
    """Wall-clock time; epoch seconds so that timestamps survive a restart of the service."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class SimClock:
    """A clock that only moves when told to. Time never goes backwards."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a simulated clock cannot go back ({seconds} s)")
        self._now += seconds
        return self._now

    def advance_to(self, t: float) -> float:
        if t < self._now:
            raise ValueError(f"a simulated clock cannot go back from {self._now} to {t}")
        self._now = float(t)
        return self._now
