"""The admission rules, each written once: whether a job may start (or could ever), and why not.

Each rule is one function returning a ``Wait`` (a pending reason code and a sentence) or None. The
placer asks them when it decides, the validator asks them of every proposal (mapping the reason to a
violation code), and the typed tool ``submit_job`` asks them before a job is queued, refusing a job
that could never start. So a person reads the same sentence from every door.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from tools.models import TERMINAL, Job, JobSpec, JobStatus, PendingReason, Reservation

if TYPE_CHECKING:
    from policies.rules import Rules
    from policies.snapshot import Layout


@dataclass(frozen=True, init=False)
class Wait:
    reason: PendingReason
    message: str

    def __init__(self, reason: PendingReason, message: str) -> None:
        # Both fields in one write (a frozen dataclass's ``__init__`` makes a call per field): a pass
        # makes one for most jobs it reads.
        object.__setattr__(self, "__dict__", {"reason": reason, "message": message})


def begin_time_wait(job: Job, now: float) -> Wait | None:
    """Not before its begin time or a retry's backoff."""
    if job.not_before is None or job.not_before <= now:
        return None
    if job.pending_reason == PendingReason.BEGIN_TIME and job.pending_message:
        return Wait(PendingReason.BEGIN_TIME, job.pending_message)
    return Wait(PendingReason.BEGIN_TIME, f"not before t={job.not_before:.0f} ({job.not_before - now:.0f} s from now)")


def size_wait(count: int, layout: Layout, *, max_gpus_per_job: int | None, multi_node: bool,
              usable: bool) -> Wait | None:
    """More GPUs than a job may have, or than the cluster could ever give it. ``usable``: count only
    healthy, undrained GPUs (when deciding now) rather than every GPU (when it is submitted, since a
    drained GPU comes back)."""
    if max_gpus_per_job is not None and count > max_gpus_per_job:
        return Wait(PendingReason.INFEASIBLE, f"asks for {count} GPUs; a job may have at most {max_gpus_per_job}")
    if not usable:
        if count > layout.width and not multi_node:
            return Wait(PendingReason.INFEASIBLE, f"asks for {count} GPUs but the largest node has {layout.width}")
        if count > layout.total_gpus:
            return Wait(PendingReason.INFEASIBLE, f"asks for {count} GPUs but the cluster has {layout.total_gpus}")
        return None
    largest = layout.largest_usable_node
    if count <= largest or (multi_node and count <= layout.whole_gpus):
        return None
    if multi_node:
        return Wait(PendingReason.INFEASIBLE, f"asks for {count} GPUs; the largest node has {largest} usable "
                                              f"and the whole usable nodes together {layout.whole_gpus}")
    return Wait(PendingReason.INFEASIBLE, f"asks for {count} GPUs; the largest node has {largest} usable (healthy, not drained, not used outside gpuherd)")


def has_quotas(rules: Rules) -> bool:
    """Whether any user or group has a quota of GPUs at once (without, as in most labs' rules and every
    replay's, ``quota_wait`` is never anything but None and the GPUs in use need not be counted)."""
    return bool(rules.user_quota or rules.group_quota) or rules.default_user_quota is not None


def quota_wait(rules: Rules, user: str, count: int, users_in_use: Mapping[str, int],
               groups_in_use: Mapping[str, int]) -> Wait | None:
    """Starting ``count`` more GPUs would take ``user`` or its group over a quota of GPUs held at once."""
    if not has_quotas(rules):
        return None
    group = rules.group_of(user)
    for who, quota, using in (
        (f"user {user}", rules.quota_of_user(user), users_in_use.get(user, 0)),
        (f"group {group}", rules.group_quota.get(group) if group is not None else None, groups_in_use.get(group, 0)),
    ):
        if quota is None:
            continue
        if count > quota:
            return Wait(PendingReason.QUOTA_EXCEEDED, f"asks for {count} GPUs but {who}'s quota is {quota} GPUs at once")
        if using + count > quota:
            return Wait(PendingReason.QUOTA_EXCEEDED, f"{who} uses {using} of a quota of {quota} GPUs; this job's "
                                                      f"{count} would be {using + count - quota} over")
    return None


def dependency_wait(job: JobSpec, status_of: Callable[[int], JobStatus | None]) -> Wait | None:
    """Waits for the jobs it runs after (``Dependency``), or never can start (``DependencyNeverSatisfied``):
    one of them does not exist, or one it must follow ended other than completed. ``status_of`` says
    how a job stands (None: no such job)."""
    waiting_for = []
    for dep in job.depends_on:
        status = status_of(dep)
        if status is None:
            return Wait(PendingReason.DEPENDENCY_NEVER, f"runs after job {dep}, which does not exist")
        if status not in TERMINAL:
            waiting_for.append(f"{dep} ({status.value})")
        elif dep in job.after and status != JobStatus.COMPLETED:
            return Wait(PendingReason.DEPENDENCY_NEVER,
                        f"runs after job {dep} completes, but it {status.value}; it would never start")
    if waiting_for:
        return Wait(PendingReason.DEPENDENCY, "waits for job(s) " + ", ".join(waiting_for))
    return None


def array_limit_wait(job: Job, running: Mapping[int, int]) -> Wait | None:
    """A task of an array with a limit of tasks at once (``0-109%8``) waits while that many of its array's
    tasks hold GPUs (``running``: array id -> its tasks holding GPUs, see ``tasks_holding``)."""
    if job.array_id is None or job.array_limit is None or running.get(job.array_id, 0) < job.array_limit:
        return None
    return Wait(PendingReason.ARRAY_TASK_LIMIT, f"array {job.array_id} already runs {job.array_limit} task(s) at once, "
                                                f"the most its %{job.array_limit} allows")


def tasks_holding(jobs: Iterable[Job]) -> dict[int, int]:
    """Array id -> how many of ``jobs`` (those holding GPUs) are its tasks."""
    counts: dict[int, int] = {}
    for job in jobs:
        if job.array_id is not None:
            counts[job.array_id] = counts.get(job.array_id, 0) + 1
    return counts


def reservations_against(reservations: tuple[Reservation, ...], user: str, group: str | None, start: float,
                         end: float, *, preemptible: bool = False) -> tuple[Reservation, ...]:
    """The reservations that do not admit ``user`` (or its group) whose window overlaps ``[start, end)``:
    their GPUs are not the job's while it would run. A ``preemptible`` job may use them until the window
    begins (it is stopped then), so for it only the windows begun by ``start`` count."""
    return tuple(r for r in reservations if r.covers(start, end) and not r.admits(user, group)
                 and (not preemptible or r.start <= start))


def reserved_for(reservations: tuple[Reservation, ...], user: str, group: str | None,
                 now: float) -> dict[str, frozenset[int]]:
    """Per node, the GPUs of the reservations admitting ``user`` (or its group) whose window is open now."""
    mine: dict[str, frozenset[int]] = {}
    for r in reservations:
        if r.start <= now < r.end and r.admits(user, group):
            mine[r.node] = mine.get(r.node, frozenset()) | frozenset(r.gpus)
    return mine
