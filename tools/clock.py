"""One clock for the whole core.

Nothing in ``tools/`` or ``policies/`` reads the wall clock: "now" comes from a ``Clock`` that the
service builds as ``RealClock`` and the tests and the eval harness build as ``SimClock``.

Two readings: ``now()`` is wall-clock time, for what people see and what must survive a restart
(submit, start and end times, begin times, reservations, a retry's ``not_before``); ``monotonic()``
never jumps, for deadlines measured from a moment this process saw (time limits, the grace between
SIGTERM and SIGKILL), so that a step of the system clock (NTP, a person) neither shortens nor extends
them.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (real) or since the simulation began (simulated)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never go back or jump; only differences mean anything."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass: block on a real clock, jump forward on a simulated one."""
        ...


class RealClock:
    """Wall-clock time; epoch seconds so that timestamps survive a restart of the service."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class SimClock:
    """A clock that only moves when told to. Time passing (``advance``) moves both readings; a step of
    the wall clock (``step_wall``, as NTP or a person makes one) moves ``now`` alone, either way."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._monotonic = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a simulated clock cannot go back ({seconds} s)")
        self._now += seconds
        self._monotonic += seconds
        return self._now

    def advance_to(self, t: float) -> float:
        if t < self._now:
            raise ValueError(f"a simulated clock cannot go back from {self._now} to {t}")
        self._monotonic += t - self._now
        self._now = float(t)
        return self._now

    def step_wall(self, seconds: float) -> float:
        """Set the wall clock ``seconds`` forward (or back, if negative) without time passing."""
        self._now += seconds
        return self._now
