"""The validator: hard constraints every proposed allocation must meet, whoever proposed it.

Proposals are checked in order against the snapshot plus what earlier proposals in the same batch
already took, so a batch can never double-book a GPU either. A rejection carries machine-readable
codes (``Violation``) and a sentence for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tools.models import Allocation, Job, JobStatus

from policies.snapshot import Proposal, Snapshot


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
    GPU_BUSY = "gpu_busy"
    TOO_MANY_GPUS = "too_many_gpus"  # over the per-job limit


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


@dataclass(frozen=True)
class Accepted:
    proposal: Proposal
    allocation: Allocation


@dataclass(frozen=True)
class Verdict:
    accepted: tuple[Accepted, ...]
    rejected: tuple[Rejection, ...]


def validate(snapshot: Snapshot, proposals: tuple[Proposal, ...] | list[Proposal]) -> Verdict:
    taken: dict[tuple[str, int], int] = {}  # GPUs given to earlier proposals of this batch
    seen_jobs: set[int] = set()
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    for proposal in proposals:
        problems = _check(snapshot, proposal, taken, seen_jobs)
        if problems:
            rejected.append(Rejection(proposal, tuple(problems)))
            continue
        seen_jobs.add(proposal.job_id)
        for ref in proposal.gpus:
            taken[ref] = proposal.job_id
        accepted.append(Accepted(proposal, _allocation(proposal)))
    return Verdict(tuple(accepted), tuple(rejected))


def _allocation(proposal: Proposal) -> Allocation:
    by_node: dict[str, list[int]] = {}
    for node, index in proposal.gpus:
        by_node.setdefault(node, []).append(index)
    (node, gpus), *more = ((n, tuple(sorted(g))) for n, g in by_node.items())
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
    if job.not_before is not None and job.not_before > snapshot.now:
        problems.append(
            Problem(Violation.NOT_YET, f"job {job.id} may not start for {job.not_before - snapshot.now:.0f} s")
        )
    cap = snapshot.max_gpus_per_job
    if cap is not None and job.gpu_count > cap:
        problems.append(Problem(Violation.TOO_MANY_GPUS, f"job {job.id} asks for {job.gpu_count} GPUs; at most {cap}"))
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
        name = f"GPU {ref[1]} on {ref[0]}"
        gpu = gpus.get(ref)
        if gpu is None:
            problems.append(Problem(Violation.UNKNOWN_GPU, f"there is no {name}"))
            continue
        if not gpu.healthy:
            problems.append(Problem(Violation.GPU_UNHEALTHY, f"{name} is unhealthy"))
        if gpu.drained:
            problems.append(Problem(Violation.GPU_DRAINED, f"{name} is drained"))
        holder = _holder(snapshot, taken, ref)
        if holder is not None and holder != job.id:
            problems.append(Problem(Violation.GPU_BUSY, f"{name} is held by job {holder}"))
    return problems


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
