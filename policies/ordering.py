"""The deterministic policies. Each is a queue order plus the shared placement loop.

- ``priority``: higher priority first, then submission order; a job that does not fit is skipped
  and later ones may start. The fallback that must always work.
- ``fcfs``: strict submission order; the first job that does not fit blocks the rest (head-of-line).
- ``sjf``: shortest ``est_duration_s`` first; jobs without an estimate after all with one.
- ``fair_share``: the user with the least recent GPU-time first; among one user's jobs, priority then
  submission order. Users are re-ranked after every start in the pass, so one user's burst cannot take
  every free GPU while another user with equal usage waits.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from tools.models import Job

from policies.placement import Placer
from policies.snapshot import Decisions, Snapshot


class Policy(Protocol):
    name: str

    def decide(self, snapshot: Snapshot) -> Decisions:
        """Which queued jobs start now and where, and why each other queued job waits."""
        ...

    def order(self, snapshot: Snapshot) -> list[Job]:
        """The queued jobs in the order this policy considers them (positions for people)."""
        ...


def priority_key(job: Job) -> tuple:
    return (-job.priority, job.submit_time, job.id)


def fcfs_key(job: Job) -> tuple:
    return (job.submit_time, job.id)


def sjf_key(job: Job) -> tuple:
    has_estimate = job.est_duration_s is not None
    return (not has_estimate, job.est_duration_s or 0.0, job.submit_time, job.id)


@dataclass(frozen=True)
class OrderedPolicy:
    """Offer queued jobs to the placer in the order of ``key``."""

    name: str
    key: Callable[[Job], tuple]
    head_of_line: bool = False

    def order(self, snapshot: Snapshot) -> list[Job]:
        return sorted(snapshot.queued, key=self.key)

    def decide(self, snapshot: Snapshot) -> Decisions:
        placer = Placer(snapshot, head_of_line=self.head_of_line)
        for job in self.order(snapshot):
            placer.offer(job)
        return placer.decisions()


@dataclass(frozen=True)
class FairSharePolicy:
    name: str = "fair_share"

    def order(self, snapshot: Snapshot) -> list[Job]:
        """As ``decide`` would offer them if every job started."""
        return list(self._turns(snapshot, started=lambda job: True))

    def decide(self, snapshot: Snapshot) -> Decisions:
        placer = Placer(snapshot)
        for _ in self._turns(snapshot, started=placer.offer):
            pass
        return placer.decisions()

    def _turns(self, snapshot: Snapshot, started: Callable[[Job], bool]) -> Iterator[Job]:
        per_user: dict[str, list[Job]] = {}
        for job in sorted(snapshot.queued, key=priority_key, reverse=True):
            per_user.setdefault(job.user, []).append(job)  # each list's best job is at its end
        held: dict[str, int] = {}
        for job in snapshot.holding:
            held[job.user] = held.get(job.user, 0) + job.gpu_count
        # Rank: recent GPU-seconds, then GPUs held right now (so equals take turns), then name.
        heap = [(snapshot.usage_now(u), held.get(u, 0), u) for u in per_user]
        heapq.heapify(heap)
        while heap:
            usage, holding, user = heapq.heappop(heap)
            job = per_user[user].pop()
            yield job
            if started(job):
                holding += job.gpu_count
            if per_user[user]:
                heapq.heappush(heap, (usage, holding, user))


POLICIES: dict[str, Policy] = {
    "priority": OrderedPolicy("priority", priority_key),
    "fcfs": OrderedPolicy("fcfs", fcfs_key, head_of_line=True),
    "sjf": OrderedPolicy("sjf", sjf_key),
    "fair_share": FairSharePolicy(),
}
FALLBACK_POLICY = "priority"


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}") from None
