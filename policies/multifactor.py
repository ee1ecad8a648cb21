"""Multifactor priority (the default policy), in the manner of Slurm's, with EASY backfill.

A waiting job's priority is a weighted sum of four factors (``rules.Weights`` has the formulas):
the priority its user gave it, how long it has waited, its user's and group's fair share of recent
GPU-time, and its size in GPU-hours. ``explain`` lists them, as ``sprio`` does.

The sum changes with time (age) and with usage (fair share), yet the queue is never re-sorted: age
grows at the same rate for every job, so ranking by ``priority + size - age_weight * submit_time``
is the same ranking at every moment, and fair share is one number per user. The queue index keeps
each (user, GPU count) group sorted by that fixed part; a pass merges the groups, each shifted by its
user's fair-share term, and offers the jobs in that order to the backfill placer.
"""

from __future__ import annotations

import heapq
import math
import threading
from dataclasses import dataclass, field
from itertools import chain, compress
from typing import Iterator, Mapping

from tools.index import BY_ID, Ordering
from tools.models import Job

from policies.placement import Entries, Placer, offer_in_order
from policies.rules import Weights, expected_runtime
from policies.snapshot import Decisions, Snapshot

DEFAULT_RUNTIME_S = 3600.0
STARVING_READ = 16  # the oldest waiting jobs read for the starvation guard, at most, in one pass


@dataclass(frozen=True)
class Factor:
    name: str
    value: float  # the factor, before weighting
    weight: float
    detail: str

    @property
    def points(self) -> float:
        return self.value * self.weight


@dataclass(frozen=True)
class Explanation:
    job_id: int
    factors: tuple[Factor, ...]

    @property
    def total(self) -> float:
        return sum(f.points for f in self.factors)


def fair_share_factors(snapshot: Snapshot, users) -> dict[str, float]:
    """Per user of ``users`` (those waiting), of recent usage or running, ``(F_user + F_group) / 2`` with ``F = 2 ** -(share of recent GPU-time / fair share)``:
    1 for no recent use, 1/2 at exactly a fair share, 1/4 at twice it. A user without a group counts
    as a group of one."""
    everyone = set(users) | set(snapshot.usage) | snapshot.in_use[0].keys()  # holders, from the index's totals
    # ``snapshot.usage_now`` for each, with its two maps read once rather than once per user
    past, running = snapshot.usage, running_usage(snapshot)
    usage = {u: past.get(u, 0.0) + running.get(u, 0.0) for u in everyone}
    total = sum(usage.values())
    if total <= 0:
        return dict.fromkeys(everyone, 1.0)
    if not snapshot.rules.groups:  # every user a group of one: F_group is F_user, to the last bit
        n_users = len(usage)
        return {u: 2.0 ** -(used / total * n_users) for u, used in usage.items()}
    group_of = snapshot.rules.group_of
    group_usage: dict[str, float] = {}
    for u, used in usage.items():
        g = group_of(u) or f"user:{u}"
        group_usage[g] = group_usage.get(g, 0.0) + used
    n_users, n_groups = len(usage), len(group_usage)
    out = {}
    for u, used in usage.items():
        f_user = 2.0 ** -(used / total * n_users)
        f_group = 2.0 ** -(group_usage[group_of(u) or f"user:{u}"] / total * n_groups)
        out[u] = (f_user + f_group) / 2
    return out


def running_usage(snapshot: Snapshot) -> Mapping[str, float]:
    """``snapshot.running_usage``, from the sums kept since the last pass of the same queue where
    there is one (the same figures, rounded differently)."""
    carried = snapshot.carried
    if carried is not None:
        kept = carried.get(_RunningUsage)
        if not isinstance(kept, _RunningUsage):
            kept = carried[_RunningUsage] = _RunningUsage()
        used = kept.usage(snapshot)
        if used is not None:
            return used
    return snapshot.running_usage


_UNITS = 2 ** 60  # of a second: the kept sums of starts are whole numbers of these


class _RunningUsage:
    """Per user, the GPU-seconds used so far by its jobs holding GPUs, kept from one pass to the next
    (in the queue's ``carried``) as two sums over its started jobs: GPUs, and GPUs x start. At ``now``
    they have used ``now x GPUs - sum(GPUs x start)``, so a pass reads only the jobs that started or
    ended since the last one instead of every running job (the sum over running jobs was a fifth of
    a multifactor pass). The second sum is kept exact, in integer units of 2 ** -60 s (``_UNITS``), and
    rounded once, so it does not drift however many jobs come and go.

    Jobs are known by ``id()`` (each version of a job is another object: a start time set is seen);
    the kept jobs are held, so no other job takes their id while they are known. Time may only go
    forward; a snapshot older than the last pass, or one read while another thread reads, is counted
    afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = -math.inf
        self._holding: tuple[Job, ...] = ()  # the holding jobs of the last pass
        self._ids: set[int] = set()  # their id()s
        self._jobs: dict[int, Job] = {}  # id() -> the holding job, counted or not yet started
        self._gpus: dict[str, int] = {}  # user -> GPUs of its counted jobs
        self._since: dict[str, int] = {}  # user -> sum of GPUs x start of its counted jobs, in units
        self._since_f: dict[str, float] = {}  # the same, rounded
        self._later: dict[int, Job] = {}  # id() -> holding job whose start is still after now

    def usage(self, snapshot: Snapshot) -> Mapping[str, float] | None:
        if not self._lock.acquire(blocking=False):
            return None
        try:
            now = snapshot.now
            if now < self._now:
                return None
            self._now = now
            holding = snapshot.holding
            if holding != self._holding:  # the same jobs: compared by identity, in C
                self._follow(holding, now)
            if self._later:
                for key, job in tuple(self._later.items()):
                    if job.start_time <= now:  # type: ignore[operator]  # only started jobs wait here
                        del self._later[key]
                        self._count(job, +1)
            since = self._since_f
            return {user: now * gpus - since[user] for user, gpus in self._gpus.items()}
        finally:
            self._lock.release()

    def _follow(self, holding: tuple[Job, ...], now: float) -> None:
        ids = set(map(id, holding))
        for key in self._ids - ids:
            job = self._jobs.pop(key)
            if self._later.pop(key, None) is None and job.start_time is not None:
                self._count(job, -1)
        came = ids - self._ids
        if came:
            for job in compress(holding, map(came.__contains__, map(id, holding))):
                self._jobs[id(job)] = job
                start = job.start_time
                if start is None:
                    continue  # scheduled, not started: it has used nothing yet
                if start > now:
                    self._later[id(job)] = job
                else:
                    self._count(job, +1)
        self._ids, self._holding = ids, holding

    def _count(self, job: Job, sign: int) -> None:
        user, gpus = job.user, job.gpu_count
        left = self._gpus.get(user, 0) + sign * gpus
        if left:
            # Scaling by a power of two is exact, and so is the integer of any start from 2 ** -8 s on;
            # an earlier one is rounded, alike when it is added and taken off.
            since = self._since.get(user, 0) + sign * gpus * round(job.start_time * _UNITS)  # type: ignore[operator]
            self._gpus[user], self._since[user], self._since_f[user] = left, since, since / _UNITS
        else:  # the user's last running job: the sums start again from nothing
            del self._gpus[user], self._since[user], self._since_f[user]


@dataclass(frozen=True)
class MultifactorPolicy:
    name: str = "multifactor"
    weights: Weights = field(default_factory=Weights)
    default_runtime_s: float = DEFAULT_RUNTIME_S  # the size of a job with no time limit nor estimate

    @property
    def ordering(self) -> Ordering:
        return Ordering(self._fixed_key, _by_user_and_gpus)

    @property
    def orderings(self) -> tuple[Ordering, ...]:
        return (self.ordering,)

    def priority_factor(self, job: Job) -> float:
        return (job.priority - 1) / 9

    def size_factor(self, job: Job) -> float:
        runtime = expected_runtime(job, self.default_runtime_s)
        return 1.0 / (1.0 + job.gpu_count * runtime / 3600.0 / self.weights.size_unit_gpu_hours)

    def _fixed_key(self, job: Job) -> tuple:
        """The part of the (negated) priority that never changes, plus the age term's fixed part."""
        w = self.weights
        fixed = w.priority * self.priority_factor(job) + w.size * self.size_factor(job)
        return (w.age * job.submit_time / w.age_unit_s - fixed, job.submit_time, job.id)

    def _streams(self, snapshot: Snapshot, placer: Placer | None) -> list:
        groups = snapshot.queued_groups(self.ordering)
        shares = fair_share_factors(snapshot, {user for user, _ in groups})
        jobs = snapshot.jobs_by_id
        heap = []
        for (user, gpus), entries in groups.items():
            if placer is not None and gpus > placer.limit:
                for _, job_id in entries:
                    placer.offer(jobs[job_id])  # each says why it can never start
                continue
            stream = _shifted(entries, self.weights.fair_share * shares[user])
            first = next(stream, None)
            if first is not None:
                heap.append((first, gpus, stream))
        heapq.heapify(heap)
        return heap

    def order(self, snapshot: Snapshot) -> list[Job]:
        return list(self.walk(snapshot))

    def walk(self, snapshot: Snapshot) -> Iterator[Job]:
        """``order``, merged only as far as it is read (a page of the queue reads its first jobs)."""
        jobs = snapshot.jobs_by_id
        merged = heapq.merge(*(chain([first], rest) for first, _, rest in self._streams(snapshot, None)))
        return (jobs[job_id] for _, job_id in merged)

    def position(self, snapshot: Snapshot, job: Job) -> int:
        """A waiting job's place in ``order`` (1 = first), counted in each sorted group by a search: the
        queue is not merged. The job's key is shifted into each group's terms (its fair share against
        theirs), so the count is the merge's."""
        groups = snapshot.queued_groups(self.ordering)
        shares = fair_share_factors(snapshot, {user for user, _ in groups} | {job.user})
        weight = self.weights.fair_share
        (first, *rest), job_id = self.ordering.entry(job)
        ahead = 0
        for (user, _), entries in groups.items():
            shift = 0.0 if user == job.user else weight * (shares[user] - shares[job.user])
            ahead += entries.rank(((first + shift, *rest), job_id))
        return ahead + 1

    def decide(self, snapshot: Snapshot) -> Decisions:
        placer = Placer(snapshot, backfill=True)
        self._offer_starving(snapshot, placer)
        offer_in_order(placer, self._streams(snapshot, placer), per_user=True)
        return placer.decisions()

    def _offer_starving(self, snapshot: Snapshot, placer: Placer) -> None:
        """Jobs that have waited ``rules.starve_after_s`` or longer go first, oldest first, until one
        must wait and is planned. The age factor alone would take a wide, long job days to outrank
        each newly queued small one, and the plan protects a job only from the jobs after it."""
        after = snapshot.rules.starve_after_s
        if after is None:
            return
        jobs, oldest = snapshot.jobs_by_id, snapshot.now - after
        for i, (_, job_id) in enumerate(snapshot.queued_groups(BY_ID).get(None, ())):
            job = jobs[job_id]
            if i >= STARVING_READ or job.submit_time > oldest or placer.head is not None:
                return
            placer.offer_ahead(job)

    def explain(self, snapshot: Snapshot, job: Job) -> Explanation:
        w = self.weights
        waited = max(0.0, snapshot.now - job.submit_time)
        share = fair_share_factors(snapshot, {j.user for j in snapshot.queued} | {job.user})[job.user]
        used = snapshot.usage_now(job.user)
        runtime = expected_runtime(job, self.default_runtime_s)
        return Explanation(job.id, (
            Factor("priority", self.priority_factor(job), w.priority, f"priority {job.priority} of 10"),
            Factor("age", waited / w.age_unit_s, w.age, f"waited {waited / 3600:.1f} h; +1 every {w.age_unit_s / 3600:g} h"),
            Factor("fair_share", share, w.fair_share, f"{job.user} used {used / 3600:.1f} GPU-hours lately (decayed)"),
            Factor("size", self.size_factor(job), w.size,
                   f"{job.gpu_count} GPU(s) x {runtime / 3600:.2f} h = {job.gpu_count * runtime / 3600:.1f} GPU-hours"),
        ))


def _by_user_and_gpus(job: Job) -> tuple[str, int]:
    return (job.user, job.gpu_count)


def _shifted(entries: Entries, bonus: float) -> Iterator[tuple[tuple, int]]:
    """The entries with the user's fair-share points taken off the first part of their key."""
    if not bonus:
        yield from entries
        return
    for (first, *rest), job_id in entries:
        yield ((first - bonus, *rest), job_id)

