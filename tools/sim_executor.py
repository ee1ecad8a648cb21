"""``SimExecutor``: the executor's twin for tests and the eval harness.

A simulated job runs for ``duration_of(job)`` seconds of simulated time (``None``: until the test
ends it with ``finish``) and exits with ``exit_code_of(job)``. A stopped job honours SIGTERM at once
and reports 143, as bash does for a job killed by SIGTERM. Like every executor, it reports an end on
each ``poll`` until the orchestrator ``forget``s it.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Iterable

from tools.executor import JobExit, StartError
from tools.models import Allocation, Job

SIGTERM_EXIT = 143


class SimExecutor:
    def __init__(
        self,
        duration_of: Callable[[Job], float | None] = lambda job: None,
        exit_code_of: Callable[[Job], int] = lambda job: 0,
    ) -> None:
        self._duration_of = duration_of
        self._exit_code_of = exit_code_of
        self._running: dict[int, Allocation] = {}
        self._ends: list[tuple[float, int, int, int]] = []  # (time, seq, job_id, exit code)
        self._planned: dict[int, int] = {}  # job_id -> seq of its live entry in _ends
        self._seq = itertools.count()  # deterministic order for jobs that end at the same time
        self._ended: dict[int, JobExit] = {}  # ends reported and not yet forgotten, in the order they came
        self.fail_next_start: str | None = None  # set by a test: the next start raises StartError

    @property
    def running(self) -> dict[int, Allocation]:
        return dict(self._running)

    def start(self, job: Job, allocation: Allocation, now: float) -> str:
        if self.fail_next_start is not None:
            message, self.fail_next_start = self.fail_next_start, None
            raise StartError(message)
        if job.id in self._running:
            raise StartError(f"job {job.id} is already running")
        self._ended.pop(job.id, None)  # a new attempt: the last one's end is the store's now
        self._running[job.id] = allocation
        duration = self._duration_of(job)
        if duration is not None:
            self._schedule_end(job.id, now + duration, self._exit_code_of(job))
        return f"sim://job-{job.id}.log"

    def finish(self, job_id: int, exit_code: int, now: float) -> None:
        """End a running job now (tests)."""
        if job_id in self._running:
            self._schedule_end(job_id, now, exit_code)

    def stop(self, job_id: int, now: float, grace_s: float) -> None:
        self.finish(job_id, SIGTERM_EXIT, now)

    def next_end(self) -> float | None:
        """When the next running job ends, for a harness that jumps the clock from event to event."""
        while self._ends and self._planned.get(self._ends[0][2]) != self._ends[0][1]:
            heapq.heappop(self._ends)  # superseded by a later finish/stop of the same job
        return self._ends[0][0] if self._ends else None

    def poll(self, now: float) -> list[JobExit]:
        ends, planned = self._ends, self._planned
        while ends and ends[0][0] <= now:
            t, seq, job_id, code = heapq.heappop(ends)
            if planned.get(job_id) != seq:
                continue  # superseded by a later finish/stop of the same job
            del planned[job_id]
            del self._running[job_id]
            self._ended[job_id] = JobExit(job_id=job_id, exit_code=code, end_time=t)
        return list(self._ended.values()) if self._ended else []

    def forget(self, job_id: int) -> None:
        self._ended.pop(job_id, None)

    def recover(self, job_ids: Iterable[int], now: float) -> list[JobExit]:
        """A job this executor does not run is lost (as if its tmux server had gone with it)."""
        job_ids = list(job_ids)
        for i in job_ids:
            if i not in self._running and i not in self._ended:
                self._ended[i] = JobExit(job_id=i, exit_code=None, end_time=now, lost=True)
        return [self._ended[i] for i in job_ids if i in self._ended]

    def wait(self, timeout_s: float) -> None:
        pass

    def close(self) -> None:
        pass

    def _schedule_end(self, job_id: int, t: float, exit_code: int) -> None:
        seq = next(self._seq)
        self._planned[job_id] = seq
        heapq.heappush(self._ends, (t, seq, job_id, exit_code))
