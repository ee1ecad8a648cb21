"""The deterministic policies. Each is a queue order plus the shared placement loop.

- ``priority``: higher priority first, then submission order; a job that does not fit is skipped
  and later ones may start. The fallback that must always work.
- ``fcfs``: strict submission order; the first job that does not fit blocks the rest (head-of-line).
- ``sjf``: shortest ``est_duration_s`` first; jobs without an estimate after all with one.
- ``backfill``: submission order with EASY backfill: the first job that does not fit is planned
  from the running jobs' expected ends, and a later job starts now only if it does not delay that plan.
- ``multifactor`` (the default, ``policies/multifactor.py``): Slurm-like weighted priority with backfill.
- ``fair_share``: the user with the least recent GPU-time first; among one user's jobs, priority then
  submission order. Users are re-ranked after every start in the pass, so one user's burst cannot take
  every free GPU while another user with equal usage waits. With EASY backfill: without it, a light
  user's job of a whole node never found one free, since each GPU that came free went at once to the
  next user's small job, and fair share was less fair than multifactor (docs/evals.md).

A policy reads the waiting jobs through the queue index's ``Ordering`` (its sort key, split by GPU
count), never by sorting the queue; ``orderings`` names the ones the orchestrator should keep ready.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from tools.index import Ordering
from tools.models import Job

from policies.multifactor import MultifactorPolicy
from policies.placement import Offer, Placer
from policies.snapshot import Decisions, Snapshot


class Policy(Protocol):
    """A policy may also have ``orderings``: the queue orders it reads, which the orchestrator then
    asks the queue index to keep up to date (a policy works without, only slower); and ``pending()``,
    true while it has something to hand over even in a pass where no job waits (an answer that came
    in, notes for the log): without, such a pass does not ask it (``has_pending``)."""

    name: str

    def decide(self, snapshot: Snapshot) -> Decisions:
        """Which queued jobs start now and where, and why each other queued job waits."""
        ...

    def order(self, snapshot: Snapshot) -> list[Job]:
        """The queued jobs in the order this policy considers them (positions for people)."""
        ...


def has_pending(policy: Policy) -> bool:
    """Whether ``policy`` must be asked even in a pass with nothing to decide (see ``Policy``)."""
    pending = getattr(policy, "pending", None)
    return pending is not None and pending()


def priority_key(job: Job) -> tuple:
    return (-job.priority, job.submit_time, job.id)


def fcfs_key(job: Job) -> tuple:
    return (job.submit_time, job.id)


def sjf_key(job: Job) -> tuple:
    has_estimate = job.est_duration_s is not None
    return (not has_estimate, job.est_duration_s or 0.0, job.submit_time, job.id)


def by_gpus(job: Job) -> int:
    return job.gpu_count


def by_user_and_gpus(job: Job) -> tuple[str, int]:
    return (job.user, job.gpu_count)


@dataclass(frozen=True)
class OrderedPolicy:
    """Offer queued jobs to the placer in the order of ``key``."""

    name: str
    key: Callable[[Job], tuple]
    head_of_line: bool = False
    backfill: bool = False

    # Its order of the waiting jobs, made once, so that each pass finds it in the index by identity.
    ordering: Ordering = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ordering", Ordering(self.key, by_gpus))

    @property
    def orderings(self) -> tuple[Ordering, ...]:
        return (self.ordering,)

    def order(self, snapshot: Snapshot) -> list[Job]:
        return list(self.walk(snapshot))

    def walk(self, snapshot: Snapshot) -> Iterator[Job]:
        """``order``, merged only as far as it is read (a page of the queue reads its first jobs)."""
        jobs = snapshot.jobs_by_id
        groups = snapshot.queued_groups(self.ordering).values()
        return (jobs[job_id] for _, job_id in heapq.merge(*groups))  # already sorted: merge, never sort

    def position(self, snapshot: Snapshot, job: Job) -> int:
        """A waiting job's place in ``order`` (1 = first), counted in each sorted group by a search."""
        ordering = self.ordering
        entry = ordering.entry(job)
        return 1 + sum(entries.rank(entry) for entries in snapshot.queued_groups(ordering).values())

    def decide(self, snapshot: Snapshot) -> Decisions:
        placer = Placer(snapshot, head_of_line=self.head_of_line, backfill=self.backfill)
        placer.offer_groups(snapshot.queued_groups(self.ordering))
        return placer.decisions()


FAIR_SHARE_ORDER = Ordering(priority_key, by_user_and_gpus)


@dataclass(frozen=True)
class FairSharePolicy:
    name: str = "fair_share"
    orderings: tuple[Ordering, ...] = (FAIR_SHARE_ORDER,)
    backfill: bool = True  # EASY: the first job that must wait is planned (see above)

    def order(self, snapshot: Snapshot) -> list[Job]:
        """As ``decide`` would offer them if every job started."""
        return list(self.walk(snapshot))

    def walk(self, snapshot: Snapshot) -> Iterator[Job]:
        """``order``, worked out only as far as it is read."""
        return self._turns(snapshot, started=lambda job: True)

    def decide(self, snapshot: Snapshot) -> Decisions:
        """The same turns as ``order``, but reading each user's jobs by size, so that sizes which no
        longer fit are dropped after one job instead of walked."""
        placer = Placer(snapshot, backfill=self.backfill)
        jobs = snapshot.jobs_by_id
        per_user: dict[str, list] = {}  # user -> heap of (entry, gpus, iterator), one per job size
        for (user, gpus), entries in snapshot.queued_groups(FAIR_SHARE_ORDER).items():
            it = iter(entries)
            if gpus > placer.limit:
                for _, job_id in it:
                    placer.offer(jobs[job_id])  # each says why it can never start
                continue
            first = next(it, None)
            if first is not None:
                per_user.setdefault(user, []).append((first, gpus, it))
        for sizes in per_user.values():
            heapq.heapify(sizes)
        users = _user_ranks(snapshot, per_user)
        while users and not placer.done:
            usage, holding, user = users[0]
            started = self._next_start(placer, jobs, per_user[user])
            if started is None:
                heapq.heappop(users)
            else:
                heapq.heapreplace(users, (usage, holding + started.gpu_count, user))
        return placer.decisions()

    @staticmethod
    def _next_start(placer: Placer, jobs, sizes: list) -> Job | None:
        """Offer one user's jobs in their order until one starts; drop sizes that no longer fit."""
        while sizes:
            (_, job_id), gpus, it = sizes[0]
            job = jobs[job_id]
            offer = placer.offer(job)
            if offer in (Offer.SIZE_FULL, Offer.USER_FULL):
                heapq.heappop(sizes)
                continue
            started = offer == Offer.STARTED
            after = next(it, None)
            if after is None:
                heapq.heappop(sizes)
            else:
                heapq.heapreplace(sizes, (after, gpus, it))
            if started:
                return job
        return None

    def _turns(self, snapshot: Snapshot, started: Callable[[Job], bool]) -> Iterator[Job]:
        per_user: dict[str, list[Job]] = {}
        for job in sorted(snapshot.queued, key=priority_key, reverse=True):
            per_user.setdefault(job.user, []).append(job)  # each list's best job is at its end
        heap = _user_ranks(snapshot, per_user)
        while heap:
            usage, holding, user = heapq.heappop(heap)
            job = per_user[user].pop()
            yield job
            if started(job):
                holding += job.gpu_count
            if per_user[user]:
                heapq.heappush(heap, (usage, holding, user))


def _user_ranks(snapshot: Snapshot, users) -> list[tuple[float, int, str]]:
    """A heap of users by recent GPU-seconds, then GPUs held right now (so equals take turns), then name."""
    held: dict[str, int] = {}
    for job in snapshot.holding:
        held[job.user] = held.get(job.user, 0) + job.gpu_count
    ranks = [(snapshot.usage_now(u), held.get(u, 0), u) for u in users]
    heapq.heapify(ranks)
    return ranks


POLICIES: dict[str, Policy] = {
    "priority": OrderedPolicy("priority", priority_key),
    "fcfs": OrderedPolicy("fcfs", fcfs_key, head_of_line=True),
    "sjf": OrderedPolicy("sjf", sjf_key),
    "fair_share": FairSharePolicy(),
    "backfill": OrderedPolicy("backfill", fcfs_key, backfill=True),
    "multifactor": MultifactorPolicy(),
}
FALLBACK_POLICY = "priority"


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}") from None
