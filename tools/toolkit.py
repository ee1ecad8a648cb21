"""Typed tools: every operation a front door may perform, one pydantic argument model each.

REST, the CLI (through REST), the LLM agent and the eval harness all call these functions, so a
request means the same thing whichever door it came through. Each argument model has a docstring
and a description per field; the LLM's JSON schemas are generated from them. Fields are all required
(OpenAI strict mode); where ``None`` is allowed its meaning is documented.

The acting user is bound by the caller in ``ToolContext``, never taken from the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from policies.snapshot import Proposal, Snapshot
from policies.validator import Accepted, validate
from tools.gpus import ResourceManager
from tools.models import HOLDS_GPUS, InventorySource, Job, JobSpec, JobStatus
from tools.orchestrator import Orchestrator
from tools.queue import QueueStats


class PermissionDenied(PermissionError):
    """The acting user may not do this to another user's job."""


@dataclass(frozen=True)
class ToolContext:
    orchestrator: Orchestrator
    resources: ResourceManager
    actor: str | None = None  # who is acting; None only for an operator acting for anyone
    own_jobs_only: bool = False  # chat: a user may change only their own jobs

    def check_owner(self, job: Job) -> None:
        if self.own_jobs_only and job.user != self.actor:
            raise PermissionDenied(f"job {job.id} belongs to {job.user}; {self.actor} may change only their own jobs")


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- reading ------------------------------------------------------------------------------------
class GetClusterState(Args):
    """Nodes and GPUs: which are free, allocated (to which job) or drained, with live readings."""


class GpuState(StrEnum):
    FREE = "free"
    ALLOCATED = "allocated"
    DRAINED = "drained"
    UNHEALTHY = "unhealthy"


class GpuView(BaseModel):
    index: int
    uuid: str
    model: str | None
    memory_total_mib: int | None
    state: GpuState
    job_id: int | None
    user: str | None
    utilization_pct: int | None
    memory_used_mib: int | None
    temperature_c: int | None
    power_w: float | None


class NodeView(BaseModel):
    name: str
    source: InventorySource
    gpus: list[GpuView]


class ClusterState(BaseModel):
    detected: bool  # False: the inventory was declared, nothing is measured
    nodes: list[NodeView]
    total_gpus: int
    free_gpus: int
    drained_gpus: int


def get_cluster_state(ctx: ToolContext, args: GetClusterState) -> ClusterState:
    holders = {
        ref: j
        for j in ctx.orchestrator.queue.active()
        if j.status in HOLDS_GPUS and j.allocation is not None
        for ref in j.allocation.pairs()
    }
    nodes = []
    for node in ctx.resources.nodes():
        views = []
        for gpu in node.gpus:
            job = holders.get((node.name, gpu.index))
            state = (
                GpuState.ALLOCATED if job else
                GpuState.UNHEALTHY if not gpu.healthy else
                GpuState.DRAINED if gpu.drained else GpuState.FREE
            )
            m = gpu.metrics
            views.append(GpuView(
                index=gpu.index, uuid=gpu.uuid, model=gpu.model, memory_total_mib=gpu.memory_total_mib,
                state=state, job_id=job.id if job else None, user=job.user if job else None,
                utilization_pct=m.utilization_pct if m else None, memory_used_mib=m.memory_used_mib if m else None,
                temperature_c=m.temperature_c if m else None, power_w=m.power_w if m else None,
            ))
        nodes.append(NodeView(name=node.name, source=node.source, gpus=views))
    states = [g.state for n in nodes for g in n.gpus]
    return ClusterState(
        detected=ctx.resources.source == InventorySource.NVML,
        nodes=nodes,
        total_gpus=len(states),
        free_gpus=states.count(GpuState.FREE),
        drained_gpus=states.count(GpuState.DRAINED),
    )


class ListQueue(Args):
    """The waiting and running jobs in scheduling order, each waiting job with its reason."""

    user: str | None = Field(description="Only this user's jobs; null for everyone's.")


class QueueEntry(BaseModel):
    position: int | None  # 1 = considered first; None for jobs that already hold GPUs
    job: Job


class QueueView(BaseModel):
    policy: str
    jobs: list[QueueEntry]
    stats: QueueStats


def list_queue(ctx: ToolContext, args: ListQueue) -> QueueView:
    orch = ctx.orchestrator
    with orch.lock:
        snapshot = orch.snapshot()
        order = orch.policy.order(snapshot)
        stats = orch.queue.stats(snapshot.now)
    entries = [QueueEntry(position=None, job=j) for j in snapshot.holding]
    entries += [QueueEntry(position=i, job=j) for i, j in enumerate(order, start=1)]
    if args.user is not None:
        entries = [e for e in entries if e.job.user == args.user]
    return QueueView(policy=orch.policy.name, jobs=entries, stats=stats)


class GetJob(Args):
    """One job's whole record: status, allocation, exit code, attempts, times and pending reason."""

    job_id: int = Field(description="The job's id.")


def get_job(ctx: ToolContext, args: GetJob) -> Job:
    return ctx.orchestrator.queue.get(args.job_id)


# -- changing -----------------------------------------------------------------------------------
class EnvVar(Args):
    """One environment variable for a job."""

    name: str = Field(description="The variable's name.")
    value: str = Field(description="Its value.")


class SubmitJob(Args):
    """Queue a job for the acting user. It runs when the scheduler gives it whole GPUs on one node."""

    name: str | None = Field(description="A short label for the job; null for none.")
    command: str = Field(description="The shell command to run, exactly as the user gave it.")
    gpu_count: int = Field(description="Whole GPUs, all on one node.")
    priority: int | None = Field(description="1 (lowest) to 10 (highest); null for the default, 5.")
    est_duration_s: float | None = Field(description="The user's estimate of the run time in seconds; null if unknown.")
    time_limit_s: float | None = Field(description="Stop the job after this many seconds; null for no limit.")
    cwd: str | None = Field(description="Working directory; null for the service's default.")
    env: list[EnvVar] | None = Field(description="Extra environment variables; null for none.")
    max_retries: int | None = Field(description="Retries after a failed attempt; null for the default, 1.")


class Submitted(BaseModel):
    job_id: int
    status: JobStatus
    position: int | None


def submit_job(ctx: ToolContext, args: SubmitJob) -> Submitted:
    if ctx.actor is None:
        raise PermissionDenied("a submission needs a user")
    given = args.model_dump(exclude_none=True, exclude={"env"})
    env = {var.name: var.value for var in args.env or []}
    spec = JobSpec(user=ctx.actor, env=env, **given)  # pydantic.ValidationError names the field at fault
    job = ctx.orchestrator.submit(spec)
    return Submitted(job_id=job.id, status=job.status, position=queue_position(ctx, job.id))


def queue_position(ctx: ToolContext, job_id: int) -> int | None:
    orch = ctx.orchestrator
    with orch.lock:
        order = orch.policy.order(orch.snapshot())
    return next((i for i, j in enumerate(order, start=1) if j.id == job_id), None)


class CancelJob(Args):
    """Cancel a job: a queued one is withdrawn; a running one gets SIGTERM, a grace period, then SIGKILL."""

    job_id: int = Field(description="The job's id.")


def cancel_job(ctx: ToolContext, args: CancelJob) -> Job:
    ctx.check_owner(ctx.orchestrator.queue.get(args.job_id))
    return ctx.orchestrator.cancel(args.job_id)


class SetPriority(Args):
    """Change a queued job's priority (1 lowest to 10 highest)."""

    job_id: int = Field(description="The job's id.")
    priority: int = Field(description="The new priority, 1 to 10.")


def set_priority(ctx: ToolContext, args: SetPriority) -> Job:
    ctx.check_owner(ctx.orchestrator.queue.get(args.job_id))
    return ctx.orchestrator.set_priority(args.job_id, args.priority)


class ToolRefused(Exception):
    """A tool declined the request (e.g. the validator refused a proposal); the message says why."""


class ExplainJob(Args):
    """Why a job waits (or what it is doing), from the scheduler's own pending reason; never guessed."""

    job_id: int = Field(description="The job's id.")


class Explanation(BaseModel):
    job_id: int
    user: str
    status: JobStatus
    gpu_count: int
    position: int | None  # in the scheduling order, for a queued job
    reason: str | None  # Slurm-style code: Priority, Resources, BeginTime, Held, Infeasible
    message: str  # the scheduler's words, or what the job is doing


def explain_job(ctx: ToolContext, args: ExplainJob) -> Explanation:
    job = ctx.orchestrator.queue.get(args.job_id)
    if job.status == JobStatus.QUEUED:
        message = job.pending_message or ""
    elif job.status in HOLDS_GPUS and job.allocation is not None:
        message = f"{job.status.value} on {job.allocation.describe()}"
    else:
        message = f"{job.status.value}" + (f" with exit code {job.exit_code}" if job.exit_code is not None else "")
    return Explanation(
        job_id=job.id, user=job.user, status=job.status, gpu_count=job.gpu_count,
        position=queue_position(ctx, job.id) if job.status == JobStatus.QUEUED else None,
        reason=job.pending_reason.value if job.pending_reason else None, message=message,
    )


class ProposeAllocation(Args):
    """Propose that a queued job start now on the given GPUs of one node. The validator checks it at
    once; the result says whether it was accepted or why not."""

    job_id: int = Field(description="The queued job to start.")
    node: str = Field(description="The node whose GPUs it gets.")
    gpu_indices: list[int] = Field(description="Exactly as many free GPU indices of that node as the job asks for.")
    reason: str = Field(description="One line on why this job and these GPUs.")


@dataclass
class ProposalSession:
    """One scheduling decision: proposals are validated against the snapshot plus those already accepted."""

    snapshot: Snapshot
    proposer: str = "agent"
    accepted: list[Accepted] = field(default_factory=list)

    def propose(self, args: ProposeAllocation) -> dict[str, object]:
        proposal = Proposal(
            job_id=args.job_id, gpus=tuple((args.node, i) for i in args.gpu_indices),
            by=self.proposer, reason=args.reason[:200],
        )
        verdict = validate(self.snapshot, [a.proposal for a in self.accepted] + [proposal])
        refused = [r for r in verdict.rejected if r.proposal is proposal]
        if refused:
            codes = ", ".join(c.value for c in refused[0].codes)
            raise ToolRefused(f"the validator refused it ({codes}): {refused[0].explain()}")
        self.accepted.append(verdict.accepted[-1])
        return {"accepted": True, "job_id": args.job_id, "node": args.node, "gpus": sorted(args.gpu_indices)}


def propose_allocation(session: ProposalSession, args: ProposeAllocation) -> dict[str, object]:
    return session.propose(args)
