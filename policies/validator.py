"""The validator: hard constraints every proposed allocation must meet, whoever proposed it.

Proposals are checked in order against the snapshot plus what earlier proposals in the same batch
already took, so a batch can never double-book a GPU either. A rejection carries machine-readable
codes (``Violation``) and a sentence for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tools.models import Allocation, Gpu, JobStatus

from policies.snapshot import Proposal, Snapshot


class Violation(StrEnum):
    UNKNOWN_JOB = "unknown_job"
    JOB_NOT_QUEUED = "job_not_queued"
    DUPLICATE_JOB = "duplicate_job"  # the same job twice in one batch
    NOT_YET = "not_yet"  # the job may not start before its begin time
    WRONG_GPU_COUNT = "wrong_gpu_count"
    SPLIT_ACROSS_NODES = "split_across_nodes"
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
    gpus: dict[tuple[str, int], Gpu] = {(g.node, g.index): g for n in snapshot.nodes for g in n.gpus}
    taken: dict[tuple[str, int], int] = dict(snapshot.holders)
    seen_jobs: set[int] = set()
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    for proposal in proposals:
        problems = _check(snapshot, proposal, gpus, taken, seen_jobs)
        if problems:
            rejected.append(Rejection(proposal, tuple(problems)))
            continue
        seen_jobs.add(proposal.job_id)
        for ref in proposal.gpus:
            taken[ref] = proposal.job_id
        node = proposal.gpus[0][0]
        accepted.append(Accepted(proposal, Allocation(node=node, gpus=tuple(sorted(i for _, i in proposal.gpus)))))
    return Verdict(tuple(accepted), tuple(rejected))


def _check(
    snapshot: Snapshot,
    proposal: Proposal,
    gpus: dict[tuple[str, int], Gpu],
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
        problems.append(
            Problem(Violation.SPLIT_ACROSS_NODES, f"the GPUs span nodes {', '.join(nodes)}; a job runs on one node")
        )
    if len(set(proposal.gpus)) != len(proposal.gpus):
        problems.append(Problem(Violation.DUPLICATE_GPU, "the proposal names a GPU twice"))
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
        holder = taken.get(ref)
        if holder is not None and holder != job.id:
            problems.append(Problem(Violation.GPU_BUSY, f"{name} is held by job {holder}"))
    return problems
