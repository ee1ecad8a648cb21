"""Multifactor priority, after Slurm's priority/multifactor plugin.

A waiting job's score is a weighted sum of factors that each lie in [0, 1]:
- priority:   the user's own priority, (p - 1) / 9
- age:        time waited, saturating at ``max_age_s`` (so nothing starves behind newer work)
- fair_share: 2^(-usage / entitlement) for the user, averaged with the same for the user's group;
              usage is decayed GPU-seconds (half-life in the queue), entitlement an equal share
- size:       GPUs asked for over the largest node, so big jobs are not passed over for ever
              (backfill fills the gaps they leave with small ones)
``explain`` returns every factor, like ``sprio``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pydantic import BaseModel, Field

from tools.models import Job

from policies.snapshot import Snapshot


class Weights(BaseModel):
    """How much each factor counts; set in configuration (``HERD_WEIGHTS`` as JSON)."""

    priority: float = Field(1000, ge=0)
    age: float = Field(500, ge=0)
    fair_share: float = Field(1000, ge=0)
    size: float = Field(100, ge=0)
    max_age_s: float = Field(24 * 3600, gt=0)


@dataclass(frozen=True)
class Factors:
    """Each factor in [0, 1] and the weighted total."""

    priority: float
    age: float
    fair_share: float
    size: float
    score: float


def _share_factors(usage: Mapping[str, float]) -> dict[str, float]:
    """2^(-u / e): u the party's fraction of all usage, e its entitled fraction (equal shares)."""
    total = sum(usage.values())
    if total <= 0:
        return {party: 1.0 for party in usage}
    entitled = 1.0 / len(usage)
    return {party: 2.0 ** (-(used / total) / entitled) for party, used in usage.items()}


@dataclass
class FairShare:
    """Fair-share factors for everyone in a snapshot, computed once per pass."""

    snapshot: Snapshot
    groups: Mapping[str, str] = field(default_factory=dict)  # user -> group

    def __post_init__(self) -> None:
        users = set(self.snapshot.usage) | {j.user for j in self.snapshot.jobs}
        by_user = {u: self.snapshot.usage_now(u) for u in users}
        self._users = _share_factors(by_user)
        by_group: dict[str, float] = {}
        for user, used in by_user.items():
            if user in self.groups:
                by_group[self.groups[user]] = by_group.get(self.groups[user], 0.0) + used
        self._groups = _share_factors(by_group)

    def factor(self, user: str) -> float:
        mine = self._users.get(user, 1.0)
        group = self.groups.get(user)
        return mine if group is None else (mine + self._groups.get(group, 1.0)) / 2


def factors(job: Job, snapshot: Snapshot, weights: Weights, fair_share: FairShare) -> Factors:
    largest = max(snapshot.largest_usable_node, 1)
    f_priority = (job.priority - 1) / 9
    f_age = min(1.0, max(0.0, snapshot.now - job.submit_time) / weights.max_age_s)
    f_share = fair_share.factor(job.user)
    f_size = min(1.0, job.gpu_count / largest)
    score = (
        weights.priority * f_priority + weights.age * f_age + weights.fair_share * f_share + weights.size * f_size
    )
    return Factors(priority=f_priority, age=f_age, fair_share=f_share, size=f_size, score=score)
