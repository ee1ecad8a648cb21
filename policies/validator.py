"""The validator: hard constraints every proposed allocation must meet, whoever proposed it.

Proposals are checked in order against the snapshot plus what earlier proposals in the same batch
already took, so a batch can never double-book a GPU either. A rejection carries machine-readable
codes (``Violation``) and a sentence for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tools.models import Allocation, Job, JobStatus, PendingReason

from policies.admission import (
    Wait,
    array_limit_wait,
    begin_time_wait,
    dependency_wait,
    quota_wait,
    reservations_against,
    size_wait,
)
from policies.snapshot import Preemption, Proposal, Snapshot
from policies.watch import describe_foreign


class Violation(StrEnum):
    UNKNOWN_JOB = "unknown_job"
    JOB_NOT_QUEUED = "job_not_queued"
    DUPLICATE_JOB = "duplicate_job"  # the same job twice in one batch
    NOT_YET = "not_yet"  # the job may not start before its begin time
    WRONG_GPU_COUNT = "wrong_gpu_count"
    SPLIT_ACROSS_NODES = "split_across_nodes"
    NOT_WHOLE_NODES = "not_whole_nodes"  # a multi-node job takes whole free nodes only
    DUPLICATE_GPU = "duplicate_gpu"
    UNKNOWN_GPU = "unknown_gpu"
    GPU_UNHEALTHY = "gpu_unhealthy"
    GPU_DRAINED = "gpu_drained"
    GPU_FOREIGN = "gpu_foreign"  # processes outside gpuherd use it
    GPU_BUSY = "gpu_busy"
    TOO_MANY_GPUS = "too_many_gpus"  # over the per-job limit
    QUOTA_EXCEEDED = "quota_exceeded"  # would take its user or group over a GPU quota
    RESERVED = "reserved"  # a GPU is reserved for someone else while the job would run
    DEPENDENCY = "dependency"  # a job it runs after has not ended as required
    ARRAY_TASK_LIMIT = "array_task_limit"  # its array already runs as many tasks as its %N allows


@dataclass(frozen=True)
class Problem:
    code: Violation
    message: str


@dataclass(frozen=True)
class Rejection:
    proposal: Proposal
    problems: tuple[Problem, ...]

    @property
    def codes(self) -> tuple[Violation, ...]:
        return tuple(p.code for p in self.problems)

    def explain(self) -> str:
        return "; ".join(p.message for p in self.problems)


@dataclass(frozen=True, init=False)
class Accepted:
    proposal: Proposal
    allocation: Allocation

    def __init__(self, proposal: Proposal, allocation: Allocation) -> None:
        # Both fields in one write (a frozen dataclass's ``__init__`` makes a call per field): one a start.
        object.__setattr__(self, "__dict__", {"proposal": proposal, "allocation": allocation})


@dataclass(frozen=True, init=False)
class Verdict:
    accepted: tuple[Accepted, ...]
    rejected: tuple[Rejection, ...]

    def __init__(self, accepted: tuple[Accepted, ...], rejected: tuple[Rejection, ...]) -> None:
        object.__setattr__(self, "__dict__", {"accepted": accepted, "rejected": rejected})  # (as ``Accepted``'s)


_NOTHING = Verdict((), ())


def validate(snapshot: Snapshot, proposals: tuple[Proposal, ...] | list[Proposal]) -> Verdict:
    if not proposals:
        return _NOTHING  # most passes start nothing
    taken: dict[tuple[str, int], int] = {}  # GPUs given to earlier proposals of this batch
    seen_jobs: set[int] = set()
    # GPUs in use per user and group, and array id -> its tasks holding GPUs; this batch's accepted jobs
    # are added to copies, made only when a later proposal is checked against them
    user_use, group_use = snapshot.in_use
    array_use = snapshot.array_tasks
    copied = False
    last = len(proposals) - 1
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    for i, proposal in enumerate(proposals):
        problems = _check(snapshot, proposal, taken, seen_jobs)
        job = snapshot.jobs_by_id.get(proposal.job_id)
        if job is not None:
            problems += _rule_problems(snapshot, job, proposal, user_use, group_use, array_use)
        if problems:
            rejected.append(Rejection(proposal, tuple(problems)))
            continue
        accepted.append(Accepted(proposal, _allocation(proposal)))
        if i == last:
            break
        seen_jobs.add(proposal.job_id)
        for ref in proposal.gpus:
            taken[ref] = proposal.job_id
        if not copied:
            user_use, group_use, array_use = dict(user_use), dict(group_use), dict(array_use)
            copied = True
        _count(snapshot, job, user_use, group_use, array_use)
    return Verdict(tuple(accepted), tuple(rejected))


def _count(snapshot: Snapshot, job: Job, user_use: dict[str, int], group_use: dict[str, int],
           array_use: dict[int, int]) -> None:
    """Add an accepted job to the GPUs in use its batch's later proposals are checked against."""
    user_use[job.user] = user_use.get(job.user, 0) + job.gpu_count
    if job.array_id is not None:
        array_use[job.array_id] = array_use.get(job.array_id, 0) + 1
    group = snapshot.rules.group_of(job.user)
    if group is not None:
        group_use[group] = group_use.get(group, 0) + job.gpu_count


# The admission rules a proposal must also meet, and the violation each reason is reported as.
RULE_VIOLATIONS = {
    PendingReason.BEGIN_TIME: Violation.NOT_YET,
    PendingReason.INFEASIBLE: Violation.TOO_MANY_GPUS,
    PendingReason.QUOTA_EXCEEDED: Violation.QUOTA_EXCEEDED,
    PendingReason.DEPENDENCY: Violation.DEPENDENCY,
    PendingReason.DEPENDENCY_NEVER: Violation.DEPENDENCY,
    PendingReason.RESERVATION: Violation.RESERVED,
    PendingReason.ARRAY_TASK_LIMIT: Violation.ARRAY_TASK_LIMIT,
}


def _rule_problems(snapshot: Snapshot, job: Job, proposal: Proposal, user_use: dict[str, int],
                   group_use: dict[str, int], array_use: dict[int, int]) -> list[Problem]:
    """The admission rules that depend on the rest of the cluster: quotas, dependencies, reservations,
    an array's limit of tasks at once."""
    rules, now = snapshot.rules, snapshot.now
    waits = [
        quota_wait(rules, job.user, job.gpu_count, user_use, group_use),
        dependency_wait(job, lambda dep: _status_of(snapshot, dep)),
        array_limit_wait(job, array_use),
    ]
    reservations = snapshot.reservations
    if reservations:  # (most passes have none: nor is the run time then worked out)
        group = rules.group_of(job.user)
        for r in reservations_against(reservations, job.user, group, now, now + rules.runtime(job),
                                      preemptible=job.preemptible):
            kept = sorted(i for n, i in proposal.gpus if n == r.node and i in r.gpus)
            if kept:
                waits.append(Wait(PendingReason.RESERVATION, f"GPU(s) {','.join(map(str, kept))} on {r.node} are "
                                  f"reserved for {r.holder()} (reservation {r.id}) while job {job.id} would run"))
    return [Problem(RULE_VIOLATIONS[w.reason], f"job {job.id}: {w.message}") for w in waits if w is not None]


def _status_of(snapshot: Snapshot, job_id: int) -> JobStatus | None:
    active = snapshot.jobs_by_id.get(job_id)
    return active.status if active is not None else snapshot.ended.get(job_id)


def check_preemption(snapshot: Snapshot, preemption: Preemption) -> str | None:
    """Why ``preemption`` may not go ahead, or None: the victim must be running and not already
    stopping; for a waiting job, the victim must be preemptible, have run its minimum time, and be
    far enough below that job in priority."""
    job = snapshot.jobs_by_id.get(preemption.job_id)
    if job is None or job.status != JobStatus.RUNNING:
        return f"job {preemption.job_id} is not running"
    if job.stop_reason is not None:
        return f"job {job.id} is already being stopped ({job.stop_reason.value})"
    if preemption.for_job is None:
        return None  # a reservation's window began on its GPUs
    rules, waiting = snapshot.rules, snapshot.jobs_by_id.get(preemption.for_job)
    if waiting is None or waiting.status != JobStatus.QUEUED:
        return f"job {preemption.for_job}, which it would make room for, is not waiting"
    if not job.preemptible:
        return f"job {job.id} is not preemptible"
    if rules.preempt_priority_gap is None or waiting.priority - job.priority < rules.preempt_priority_gap:
        return f"job {job.id}'s priority {job.priority} is not far enough below job {waiting.id}'s {waiting.priority}"
    if job.start_time is None or snapshot.now - job.start_time < rules.preempt_min_runtime_s:
        return f"job {job.id} has run less than the minimum {rules.preempt_min_runtime_s:g} s"
    return None


def _allocation(proposal: Proposal) -> Allocation:
    by_node: dict[str, list[int]] = {}
    for node, index in proposal.gpus:
        by_node.setdefault(node, []).append(index)
    (node, gpus), *more = ((n, tuple(sorted(g))) for n, g in by_node.items())
    made = proposal.allocation
    if made is not None and made.node == node and made.gpus == gpus and made.more == tuple(more):
        return made  # the placer's own, already checked
    return Allocation(node=node, gpus=gpus, more=tuple(more))


def _holder(snapshot: Snapshot, taken: dict[tuple[str, int], int], ref: tuple[str, int]) -> int | None:
    if ref in taken:
        return taken[ref]
    return snapshot.holders.get(ref) if ref[1] in snapshot.held.get(ref[0], ()) else None


def _check(
    snapshot: Snapshot,
    proposal: Proposal,
    taken: dict[tuple[str, int], int],
    seen_jobs: set[int],
) -> list[Problem]:
    job = snapshot.jobs_by_id.get(proposal.job_id)
    if job is None:
        return [Problem(Violation.UNKNOWN_JOB, f"there is no active job {proposal.job_id}")]
    problems: list[Problem] = []
    if proposal.job_id in seen_jobs:
        problems.append(Problem(Violation.DUPLICATE_JOB, f"job {job.id} was already placed in this pass"))
    if job.status != JobStatus.QUEUED:
        problems.append(Problem(Violation.JOB_NOT_QUEUED, f"job {job.id} is {job.status.value}, not queued"))
    for wait in (begin_time_wait(job, snapshot.now),
                 size_wait(job.gpu_count, snapshot.layout, max_gpus_per_job=snapshot.max_gpus_per_job, multi_node=True,
                           usable=False)):
        if wait is not None:
            problems.append(Problem(RULE_VIOLATIONS[wait.reason], f"job {job.id}: {wait.message}"))
    if len(proposal.gpus) != job.gpu_count:
        problems.append(
            Problem(
                Violation.WRONG_GPU_COUNT,
                f"job {job.id} asked for {job.gpu_count} GPU(s); the proposal gives {len(proposal.gpus)}",
            )
        )
    nodes = sorted({node for node, _ in proposal.gpus})
    if len(nodes) > 1:
        problems += _multi_node_problems(snapshot, job, proposal, nodes, taken)
    if len(set(proposal.gpus)) != len(proposal.gpus):
        problems.append(Problem(Violation.DUPLICATE_GPU, "the proposal names a GPU twice"))
    gpus = snapshot.layout.gpus
    for ref in dict.fromkeys(proposal.gpus):
        gpu = gpus.get(ref)
        if gpu is None:
            problems.append(Problem(Violation.UNKNOWN_GPU, f"there is no {_gpu_name(ref)}"))
            continue
        if not gpu.healthy:
            problems.append(Problem(Violation.GPU_UNHEALTHY, f"{_gpu_name(ref)} is unhealthy"))
        if gpu.drained:
            problems.append(Problem(Violation.GPU_DRAINED, f"{_gpu_name(ref)} is drained"))
        if gpu.foreign:
            problems.append(Problem(Violation.GPU_FOREIGN, describe_foreign([(ref[0], ref[1], gpu.foreign)])))
        holder = _holder(snapshot, taken, ref)
        if holder is not None and holder != job.id:
            problems.append(Problem(Violation.GPU_BUSY, f"{_gpu_name(ref)} is held by job {holder}"))
    return problems


def _gpu_name(ref: tuple[str, int]) -> str:
    return f"GPU {ref[1]} on {ref[0]}"  # (made only for a problem: most proposals have none)


def _multi_node_problems(
    snapshot: Snapshot, job: Job, proposal: Proposal, nodes: list[str], taken: dict[tuple[str, int], int]
) -> list[Problem]:
    """A job may span nodes only where the snapshot allows it, only if no one node can hold it, and
    only on whole free nodes (every GPU usable, none held), all but one used whole."""
    layout = snapshot.layout
    if not snapshot.multi_node or job.gpu_count <= layout.largest_usable_node:
        return [Problem(Violation.SPLIT_ACROSS_NODES, f"the GPUs span nodes {', '.join(nodes)}; a job runs on one node")]
    problems = []
    used = {node: 0 for node in nodes}
    for node, _ in dict.fromkeys(proposal.gpus):
        used[node] += 1
    for node in nodes:
        if node not in layout.size:
            continue  # reported as unknown GPUs
        busy = snapshot.held.get(node, frozenset()) | {i for (n, i) in taken if n == node}
        if node not in layout.whole or busy:
            problems.append(Problem(Violation.NOT_WHOLE_NODES, f"{node} is not a whole free node"))
    if sum(used[n] < layout.size.get(n, 0) for n in nodes) > 1:
        problems.append(Problem(Violation.NOT_WHOLE_NODES, "more than one of the nodes is only partly used"))
    return problems


@dataclass
class Batch:
    """Proposals made one at a time on one snapshot (the scheduling agent's), each validated against
    the snapshot plus those already accepted."""

    snapshot: Snapshot
    accepted: list[Accepted] = field(default_factory=list)

    def add(self, proposal: Proposal) -> Rejection | None:
        """Accept ``proposal``, or say why not."""
        verdict = validate(self.snapshot, [a.proposal for a in self.accepted] + [proposal])
        refused = [r for r in verdict.rejected if r.proposal is proposal]
        if refused:
            return refused[0]
        self.accepted.append(verdict.accepted[-1])
        return None
