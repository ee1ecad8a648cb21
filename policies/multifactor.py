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
from dataclasses import dataclass, field
from itertools import chain
from typing import Iterator

from tools.index import BY_ID, Ordering
from tools.models import Job

from policies.placement import Entries, Placer, offer_in_order
from policies.rules import Weights, expected_runtime
from policies.running_usage import running_usage
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
    """Per user of ``users`` (those waiting), ``(F_user + F_group) / 2`` with ``F = 2 ** -(share of
    recent GPU-time / fair share)``, the shares taken among every user of recent usage, running or
    waiting: 1 for no recent use, 1/2 at exactly a fair share, 1/4 at twice it. A user without a
    group counts as a group of one."""
    everyone = set(users) | set(snapshot.usage) | snapshot.in_use[0].keys()  # holders, from the index's totals
    # ``snapshot.usage_now`` for each, with its two maps read once rather than once per user
    past, running = snapshot.usage, running_usage(snapshot)
    usage = {u: past.get(u, 0.0) + running.get(u, 0.0) for u in everyone}
    total = sum(usage.values())
    if total <= 0:
        return dict.fromkeys(users, 1.0)
    if not snapshot.rules.groups:  # every user a group of one: F_group is F_user, to the last bit
        n_users = len(usage)
        return {u: 2.0 ** -(usage[u] / total * n_users) for u in users}
    group_of = snapshot.rules.group_of
    group_usage: dict[str, float] = {}
    for u, used in usage.items():
        g = group_of(u) or f"user:{u}"
        group_usage[g] = group_usage.get(g, 0.0) + used
    n_users, n_groups = len(usage), len(group_usage)
    out = {}
    for u in users:
        used = usage[u]
        f_user = 2.0 ** -(used / total * n_users)
        f_group = 2.0 ** -(group_usage[group_of(u) or f"user:{u}"] / total * n_groups)
        out[u] = (f_user + f_group) / 2
    return out


@dataclass(frozen=True)
class MultifactorPolicy:
    name: str = "multifactor"
    weights: Weights = field(default_factory=Weights)
    default_runtime_s: float = DEFAULT_RUNTIME_S  # the size of a job with no time limit nor estimate

    # Its order of the waiting jobs, made once (a pass reads it, and the index finds it by equality).
    ordering: Ordering = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ordering", Ordering(self._fixed_key, _by_user_and_gpus))

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
        users = {user for user, _ in groups}
        # One user's jobs keep their order whatever that user's share: most passes of a busy queue
        # are of one user's new job, and fair share reads every recent user.
        shares = fair_share_factors(snapshot, users) if len(users) > 1 else dict.fromkeys(users, 0.0)
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
        if not snapshot.queued_count:  # fair share is not read
            return placer.decisions()
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
    for (first, submit, tie), job_id in entries:  # ``_fixed_key``'s three parts, unpacked by name (read per job offered)
        yield ((first - bonus, submit, tie), job_id)

