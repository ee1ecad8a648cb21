"""What a policy sees and what it returns.

A ``Snapshot`` is immutable and self-contained: the policy needs nothing else, and the same snapshot
always gives the same decisions. "Now" is part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from tools.models import HOLDS_GPUS, Allocation, Job, JobStatus, Node, PendingReason


@dataclass(frozen=True)
class Snapshot:
    now: float
    nodes: tuple[Node, ...]
    jobs: tuple[Job, ...]  # every active job: queued, scheduled, running
    usage: Mapping[str, float] = field(default_factory=dict)  # decayed GPU-seconds per user
    max_gpus_per_job: int | None = None

    @cached_property
    def queued(self) -> tuple[Job, ...]:
        return tuple(j for j in self.jobs if j.status == JobStatus.QUEUED)

    @cached_property
    def holding(self) -> tuple[Job, ...]:
        """Jobs that hold GPUs (scheduled or running)."""
        return tuple(j for j in self.jobs if j.status in HOLDS_GPUS)

    @cached_property
    def jobs_by_id(self) -> Mapping[int, Job]:
        return {j.id: j for j in self.jobs}

    @cached_property
    def holders(self) -> Mapping[tuple[str, int], int]:
        """(node, GPU index) -> the id of the job holding it."""
        return {
            (j.allocation.node, gpu): j.id
            for j in self.holding
            if j.allocation is not None
            for gpu in j.allocation.gpus
        }

    @cached_property
    def free(self) -> Mapping[str, tuple[int, ...]]:
        """Per node, the GPUs a new job may take: healthy, not drained, not held."""
        holders = self.holders
        return {
            node.name: tuple(
                g.index for g in node.gpus if g.healthy and not g.drained and (node.name, g.index) not in holders
            )
            for node in self.nodes
        }

    @cached_property
    def largest_usable_node(self) -> int:
        """The most GPUs one job could ever get here: healthy, undrained GPUs of the biggest node."""
        return max((sum(g.healthy and not g.drained for g in n.gpus) for n in self.nodes), default=0)

    def usage_now(self, user: str) -> float:
        """GPU-seconds of ``user``: decayed finished attempts plus what running jobs used so far."""
        return self.usage.get(user, 0.0) + self._running_usage.get(user, 0.0)

    @cached_property
    def _running_usage(self) -> Mapping[str, float]:
        used: dict[str, float] = {}
        for j in self.holding:
            if j.start_time is not None:
                used[j.user] = used.get(j.user, 0.0) + j.gpu_count * max(0.0, self.now - j.start_time)
        return used


@dataclass(frozen=True)
class Proposal:
    """A claim that ``job_id`` should start now on ``gpus`` ((node, index) pairs), and who says so."""

    job_id: int
    gpus: tuple[tuple[str, int], ...]
    by: str = "policy"
    reason: str = ""

    @classmethod
    def on(cls, job_id: int, allocation: Allocation, *, by: str = "policy", reason: str = "") -> Proposal:
        return cls(job_id, tuple((allocation.node, i) for i in allocation.gpus), by=by, reason=reason)


@dataclass(frozen=True)
class Wait:
    reason: PendingReason
    message: str


@dataclass(frozen=True)
class Decisions:
    starts: tuple[Proposal, ...]
    waiting: Mapping[int, Wait]  # a reason for every queued job that does not start
    notes: tuple[tuple[str, str], ...] = ()  # (event kind, message) for the audit log, e.g. a fallback
