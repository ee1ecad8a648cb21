"""The cluster's scheduling rules: quotas, groups, backfill and preemption settings, priority weights.

Plain data, set by configuration and handed to every policy inside the ``Snapshot``, so a decision
still depends on nothing but its snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from tools.models import Job


def expected_runtime(job: Job, default_s: float) -> float:
    """How long ``job`` is expected to run: its time limit, else its estimate, else ``default_s``."""
    if job.time_limit_s is not None:
        return job.time_limit_s
    if job.est_duration_s is not None:
        return job.est_duration_s
    return default_s


# A running job past its expected end is expected to run on for this many times as long as it has run
# (0: any moment). Chosen on lab weeks 0-4 (docs/evals.md): 1 gave the best mean JCT on Philly 11cb48
# but let backfill push its 16-GPU jobs back (longest wait 7.1 d), 0.5 kept most of the gain.
OVERRUN_FACTOR = 0.5


@dataclass(frozen=True)
class Weights:
    """The multifactor priority: ``priority * P + age * A + fair_share * F + size * S``.

    P = (priority - 1) / 9, in [0, 1]; A = time waited / ``age_unit_s``, growing without bound so
    that every job eventually outranks any newcomer (nothing starves); F, in (0, 1], is 1 for a user
    and group that used nothing lately and halves each time their share of the recent GPU-time
    exceeds their fair share once more; S = 1 / (1 + GPU-hours asked / ``size_unit_gpu_hours``), so
    a small, short job ranks above a large, long one.
    """

    # Defaults chosen with the replay harness (docs/evals.md): a larger age weight lets big, long jobs
    # climb over the small ones too soon and costs mean JCT; fair share above priority keeps the lab's
    # GPU-time shares even without idling GPUs.
    priority: float = 1000.0
    age: float = 100.0
    fair_share: float = 2000.0
    size: float = 1000.0
    age_unit_s: float = 86_400.0
    size_unit_gpu_hours: float = 8.0


@dataclass(frozen=True)
class Rules:
    groups: Mapping[str, str] = field(default_factory=dict)  # user -> group
    user_quota: Mapping[str, int] = field(default_factory=dict)  # GPUs in use at once, per user
    group_quota: Mapping[str, int] = field(default_factory=dict)  # GPUs in use at once, per group
    default_user_quota: int | None = None  # for users without a quota of their own; None: no limit
    default_runtime_s: float = 3600.0  # expected run time of a job with no time limit and no estimate
    backfill_depth: int = 500  # jobs examined for backfill after the first one that must wait (Slurm's bf_max_job_test)
    backfill_plans: int = 1  # waiting jobs planned, in order, that later jobs may not delay (1: EASY)
    # A job waiting this long goes first (multifactor) and drains the GPUs planned for it: a bound on
    # the longest wait, at a cost in mean JCT (docs/evals.md); None: never.
    starve_after_s: float | None = None
    preempt_priority_gap: int | None = 2  # a job preempts only jobs this much lower in priority; None: never
    preempt_min_runtime_s: float = 600.0  # a job that started less than this ago is not preempted

    def group_of(self, user: str) -> str | None:
        return self.groups.get(user)

    def quota_of_user(self, user: str) -> int | None:
        return self.user_quota.get(user, self.default_user_quota)

    def runtime(self, job: Job) -> float:
        return expected_runtime(job, self.default_runtime_s)

    def expected_end(self, job: Job, now: float) -> float:
        """When a job holding GPUs is expected to free them: at its start plus its expected run time;
        one being stopped, any moment (``now``). One that has already run past that is expected to run
        on for ``OVERRUN_FACTOR`` times as long as it has run so far (never past its time limit): run
        times are heavy-tailed, and a job that overran its estimate is likely a long one, not one about
        to end. (Planned to end "any moment", it made the backfill plan hold GPUs for a job on nodes
        that were not about to free up, while other nodes filled; docs/evals.md has the replays that
        chose the factor.)"""
        if job.stop_reason is not None:
            return now
        if job.start_time is None:
            return now + self.runtime(job)
        end = job.start_time + self.runtime(job)
        return end if end > now else overrun_end(job, job.start_time, now)


def overrun_end(job: Job, start: float, now: float) -> float:
    """``Rules.expected_end`` of a job that started at ``start`` and has run past its expected run time."""
    end = now + OVERRUN_FACTOR * (now - start)
    if job.time_limit_s is not None:
        end = min(end, max(now, start + job.time_limit_s))
    return end


DEFAULT_RULES = Rules()
