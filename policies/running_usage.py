"""The GPU-seconds used so far by each user's jobs holding GPUs (fair share's recent use), kept from
one pass to the next of the same queue so that a pass costs what changed, not the running jobs.

Per user, two sums over its started jobs: GPUs, and GPUs x start. At ``now`` they have used
``now x GPUs - sum(GPUs x start)``; the second sum is kept exact, in whole units of 2 ** -60 s, and
rounded once, so it does not drift however many jobs come and go. It is the same figure as
``Snapshot.running_usage`` (a sum over every running job each pass, which was a fifth of a
multifactor pass on the whole Philly trace), rounded differently.

What changed since the last read is found without reading every running job: the queue index logs
the nodes where a job took or freed GPUs (``ActiveJobs.held_since``), and gives each node's held GPUs
as a set replaced whenever that happens (the nodes whose set is another object, where the log was
begun anew), so those nodes are the only ones to look at. There the jobs known to hold GPUs are looked
up again (ended, requeued or another version), and GPUs held by no known job must be those of the jobs
the policy proposed to start since the last read (``expect``); anything else (a job started by someone
else, two jobs on one GPU, a snapshot not from the index) is counted afresh from every running job. A job
holding GPUs changes its start only when it begins to run (``JobQueue.transition``), on the GPUs it
was scheduled on, so the scheduled jobs, and those not counted yet, are looked up every read.
"""

from __future__ import annotations

import math
import threading
from typing import Iterable, Mapping

from tools.models import HOLDS_GPUS, Job, JobStatus

from policies.snapshot import Snapshot

UNITS = 2 ** 60  # of a second: the kept sums of starts are whole numbers of these
MOST_EXPECTED = 10_000  # proposed starts kept for the next read of the usage, at most


def running_usage(snapshot: Snapshot) -> Mapping[str, float]:
    """``snapshot.running_usage``, from the sums kept since the last pass where there are some."""
    kept = _kept(snapshot)
    used = kept.usage(snapshot) if kept is not None else None
    return used if used is not None else snapshot.running_usage


def expect(snapshot: Snapshot, job_ids: Iterable[int]) -> None:
    """The jobs a pass on ``snapshot`` proposed to start: the next pass that reads the usage finds
    them holding GPUs."""
    kept = _kept(snapshot)
    if kept is not None:
        kept.expect(job_ids)


def _kept(snapshot: Snapshot) -> RunningUsage | None:
    carried = snapshot.carried
    if carried is None:
        return None
    kept = carried.get(RunningUsage)
    if not isinstance(kept, RunningUsage):
        kept = carried[RunningUsage] = RunningUsage()
    return kept


class _Unexplained(Exception):
    """GPUs held by no job this account knows of: it counts afresh."""


class RunningUsage:
    """The kept sums; see the module. A snapshot older than the last pass (in time or in the index's
    versions), or one read while another thread reads, gets None (the caller sums every running job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = -math.inf
        self._version = -1  # the queue index's version at the last pass
        self._held: Mapping[str, frozenset[int]] | None = None  # the held GPUs of the last pass; None: count afresh
        self._mark: tuple[list[str], int] | None = None  # the index's log of changed nodes at the last pass
        self._jobs: dict[int, Job] = {}  # job id -> the version known to hold GPUs
        self._counted: set[int] = set()  # those of them in the sums (started by now)
        self._held_by: dict[str, int] = {}  # user -> GPUs its known jobs hold (the index's ``user_gpus``)
        self._on: dict[str, dict[int, int]] = {}  # node -> GPU -> id of the known job holding it
        # Known jobs looked up every pass: not counted yet (not started, or started after now), or
        # scheduled (its start is set when it runs, on the same GPUs: no node changes).
        self._watched: dict[int, Job] = {}
        self._gpus: dict[str, int] = {}  # user -> GPUs of its counted jobs
        self._since: dict[str, int] = {}  # user -> sum of GPUs x start of its counted jobs, in units
        self._since_s: dict[str, float] = {}  # the same, in seconds, rounded
        # The jobs proposed to start by the passes since the usage was last read (many passes read none).
        self._expected: list[int] = []
        self._tangled = False  # two known jobs on one GPU: the next pass counts afresh too

    def expect(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            self._expected.extend(job_ids)
            if len(self._expected) > MOST_EXPECTED:  # long unread: counting afresh is cheaper than following
                self._held, self._expected = None, []

    def usage(self, snapshot: Snapshot) -> dict[str, float] | None:
        if not self._lock.acquire(blocking=False):
            return None
        try:
            now, version = snapshot.now, snapshot.jobs.version  # type: ignore[attr-defined]  # from the index
            if now < self._now or version < self._version:
                return None
            self._now, self._version = now, version
            held = snapshot.held
            if held is not self._held:
                try:
                    if self._held is None:
                        raise _Unexplained
                    self._follow(snapshot, held)
                    if self._held_by != snapshot.in_use[0]:  # a job missed (one on a GPU another holds)
                        raise _Unexplained
                except _Unexplained:
                    self._recount(snapshot)
                self._held, self._tangled = (None if self._tangled else held), False
                self._mark = snapshot.jobs.held_mark  # type: ignore[attr-defined]
            self._expected = []
            if self._watched:
                self._look_again(snapshot, now)
            since = self._since_s
            return {user: now * gpus - since[user] for user, gpus in self._gpus.items()}
        finally:
            self._lock.release()

    def _follow(self, snapshot: Snapshot, held: Mapping[str, frozenset[int]]) -> None:
        before = self._held
        assert before is not None
        view = snapshot.jobs
        changed = view.held_since(self._mark) if self._mark is not None else None  # type: ignore[attr-defined]
        if changed is None:  # the index's log was begun anew: the sets that are other objects
            changed = {node for node, gpus in held.items() if before.get(node) is not gpus}
            changed |= before.keys() - held.keys()  # no GPU held there any more
        jobs = snapshot.jobs_by_id
        for node in changed:
            for job_id in set(self._on.get(node, {}).values()):
                job = jobs.get(job_id)
                if job is not self._jobs.get(job_id):  # ended, requeued, or another version
                    self._drop(job_id)
                    if job is not None and job.status in HOLDS_GPUS:
                        self._add(job, snapshot.now)
        for job_id in self._expected:
            job = jobs.get(job_id)
            if job is not None and job_id not in self._jobs and job.status in HOLDS_GPUS:
                self._add(job, snapshot.now)
        for node in changed:
            on = self._on.get(node, {})
            if on.keys() != held.get(node, frozenset()):
                raise _Unexplained

    def _look_again(self, snapshot: Snapshot, now: float) -> None:
        jobs = snapshot.jobs_by_id
        for job_id, known in tuple(self._watched.items()):
            job = jobs.get(job_id)
            if job is not known:
                self._drop(job_id)
                if job is not None and job.status in HOLDS_GPUS:
                    self._add(job, now)
            elif job_id not in self._counted and known.start_time is not None and known.start_time <= now:
                self._counted.add(job_id)
                self._count(known, +1)
                if known.status != JobStatus.SCHEDULED:
                    del self._watched[job_id]

    def _recount(self, snapshot: Snapshot) -> None:
        self._jobs, self._counted, self._on, self._watched, self._held_by = {}, set(), {}, {}, {}
        self._gpus, self._since, self._since_s = {}, {}, {}
        for job in snapshot.holding:
            self._add(job, snapshot.now)

    def _add(self, job: Job, now: float) -> None:
        if job.allocation is None:
            return
        pairs = job.allocation.pairs()
        for node, gpu in pairs:
            on = self._on.setdefault(node, {})
            if gpu in on:
                self._tangled = True
            on[gpu] = job.id
        self._jobs[job.id] = job
        self._held_by[job.user] = self._held_by.get(job.user, 0) + job.gpu_count
        if job.start_time is not None and job.start_time <= now:
            self._counted.add(job.id)
            self._count(job, +1)
            if job.status == JobStatus.SCHEDULED:
                self._watched[job.id] = job
        else:
            self._watched[job.id] = job

    def _drop(self, job_id: int) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        assert job.allocation is not None
        for node, gpu in job.allocation.pairs():
            on = self._on.get(node)
            if on is not None and on.get(gpu) == job_id:
                del on[gpu]
        self._watched.pop(job_id, None)
        left = self._held_by[job.user] - job.gpu_count
        if left:
            self._held_by[job.user] = left
        else:
            del self._held_by[job.user]
        if job_id in self._counted:
            self._counted.discard(job_id)
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
