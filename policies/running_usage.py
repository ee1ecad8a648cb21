"""The GPU-seconds used so far by each user's jobs holding GPUs (fair share's recent use), kept from
one pass to the next of the same queue so that a pass costs what changed, not the running jobs.

Per user, two sums over its started jobs: GPUs, and GPUs x start. At ``now`` they have used
``now x GPUs - sum(GPUs x start)``; the second sum is kept exact, in whole units of 2 ** -60 s, and
rounded once, so it does not drift however many jobs come and go. It is the same figure as
``Snapshot.running_usage`` (a sum over every running job each pass, which was a fifth of a
multifactor pass on the whole Philly trace), rounded differently.

What changed since the last read is what the queue index logged: the jobs put while holding GPUs or
after holding them (``ActiveJobs.holders_changed``: started, ended, requeued, or another version). Only
those are looked up again; where the log cannot tell (it was begun anew, or this is the first read),
every running job is counted afresh. A job counts from its start, so one whose start is still to come
(set by another clock) is looked at again at each read until it has begun.
"""

from __future__ import annotations

import math
import threading
from typing import Mapping

from tools.index import ActiveJobs
from tools.models import HOLDS_GPUS, Job

from policies.snapshot import Snapshot

UNITS = 2 ** 60  # of a second: the kept sums of starts are whole numbers of these


def running_usage(snapshot: Snapshot) -> Mapping[str, float]:
    """``snapshot.running_usage``, from the sums kept since the last pass where there are some."""
    kept = _kept(snapshot)
    used = kept.usage(snapshot) if kept is not None else None
    return used if used is not None else snapshot.running_usage


def _kept(snapshot: Snapshot) -> RunningUsage | None:
    carried = snapshot.carried
    if carried is None:
        return None
    kept = carried.get(RunningUsage)
    if not isinstance(kept, RunningUsage):
        kept = carried[RunningUsage] = RunningUsage()
    return kept


class RunningUsage:
    """The kept sums; see the module. A snapshot older than the last pass (in time or in the index's
    versions), or one read while another thread reads, gets None (the caller sums every running job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = -math.inf
        self._version = -1  # the queue index's version at the last pass
        self._mark: tuple[list[int], int] | None = None  # the index's log of holders then; None: count afresh
        self._jobs: dict[int, Job] = {}  # job id -> the version known to hold GPUs
        self._later: dict[int, Job] = {}  # those of them not counted yet: their start is unknown or to come
        self._gpus: dict[str, int] = {}  # user -> GPUs of its counted jobs
        self._since: dict[str, int] = {}  # user -> sum of GPUs x start of its counted jobs, in units
        self._since_s: dict[str, float] = {}  # the same, in seconds, rounded

    def usage(self, snapshot: Snapshot) -> dict[str, float] | None:
        if not self._lock.acquire(blocking=False):
            return None
        try:
            now, view = snapshot.now, snapshot.jobs
            assert isinstance(view, ActiveJobs)  # (a snapshot carries work only from the index's view)
            if now < self._now or view.version < self._version:
                return None
            self._now, self._version = now, view.version
            changed = view.holders_changed(self._mark)
            if changed is None:
                self._recount(snapshot.holding, now)
            else:
                for job_id, job in changed.items():
                    if job is not self._jobs.get(job_id):  # ended, requeued, or another version
                        self._drop(job_id)
                        if job is not None and job.status in HOLDS_GPUS:
                            self._add(job, now)
            self._mark = view.holders_mark
            for job_id, job in tuple(self._later.items()):
                if job.start_time is not None and job.start_time <= now:
                    del self._later[job_id]
                    self._count(job, +1)
            since = self._since_s
            return {user: now * gpus - since[user] for user, gpus in self._gpus.items()}
        finally:
            self._lock.release()

    def _recount(self, holding: tuple[Job, ...], now: float) -> None:
        self._jobs, self._later, self._gpus, self._since, self._since_s = {}, {}, {}, {}, {}
        for job in holding:
            self._add(job, now)

    def _add(self, job: Job, now: float) -> None:
        self._jobs[job.id] = job
        if job.start_time is not None and job.start_time <= now:
            self._count(job, +1)
        else:
            self._later[job.id] = job

    def _drop(self, job_id: int) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None and self._later.pop(job_id, None) is None:
            self._count(job, -1)

    def _count(self, job: Job, sign: int) -> None:
        user, gpus = job.user, job.gpu_count
        left = self._gpus.get(user, 0) + sign * gpus
        if left:
            # Scaling by a power of two is exact, and so is the integer of any start from 2 ** -8 s on;
            # an earlier one is rounded, alike when it is added and taken off.
            since = self._since.get(user, 0) + sign * gpus * round(job.start_time * UNITS)  # type: ignore[operator]
            self._gpus[user], self._since[user], self._since_s[user] = left, since, since / UNITS
        else:  # the user's last running job: the sums start again from nothing
            del self._gpus[user], self._since[user], self._since_s[user]
