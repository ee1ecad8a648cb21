"""Typed tools: every operation a front door may perform, one pydantic argument model each.

REST, the CLI (through REST), the LLM agent and the eval harness all call these functions, so a
request means the same thing whichever door it came through. Each argument model has a docstring
and a description per field; the LLM's JSON schemas are generated from them. Fields are all required
(OpenAI strict mode); where ``None`` is allowed its meaning is documented. Fields added to a tool
later default to ``None``, so that earlier callers keep working; the model's strict schema still
requires every one of them.

Times (``begin_at``, a reservation's window) are written as people write them (``22:00``, ``+3h``,
``2026-11-30 22:00``, ``now``; see ``timespec``) or given as Unix seconds, and read here on the
orchestrator's clock.

The acting user is bound by the caller in ``ToolContext``, never taken from the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field

from policies.multifactor import MultifactorPolicy
from policies.plan import estimate_starts
from policies.snapshot import Layout, Proposal, Snapshot
from policies.validator import Accepted, validate
from tools.gpus import ResourceManager
from tools.models import HOLDS_GPUS, InventorySource, Job, JobSpec, JobStatus, Reservation, UserName
from tools.orchestrator import InvalidReservation, Orchestrator
from tools.queue import QueueStats, local_time
from tools.timespec import parse_end, parse_time


class PermissionDenied(PermissionError):
    """The acting user may not do this to another user's job."""


class ReservationNotFound(LookupError):
    """No reservation has this id."""


@dataclass(frozen=True)
class ToolContext:
    orchestrator: Orchestrator
    resources: ResourceManager
    actor: str | None = None  # who is acting; None only for an operator acting for anyone
    own_jobs_only: bool = False  # chat: a user may change only their own jobs
    multifactor: MultifactorPolicy = field(default_factory=MultifactorPolicy)  # as configured: explains priorities

    def check_owner(self, job: Job) -> None:
        if self.own_jobs_only and job.user != self.actor:
            raise PermissionDenied(f"job {job.id} belongs to {job.user}; {self.actor} may change only their own jobs")


def _snapshot(ctx: ToolContext | ProposalSession) -> Snapshot:
    """The state a read tool answers from: now (chat, REST), or the scheduling decision's snapshot."""
    if isinstance(ctx, ProposalSession):
        return ctx.snapshot
    with ctx.orchestrator.lock:
        return ctx.orchestrator.snapshot()


@dataclass(frozen=True)
class Outlook:
    """The queue as the scheduler sees it now: the policy's order and each waiting job's estimated start."""

    snapshot: Snapshot
    policy: str
    order: list[Job]
    starts: Mapping[int, float]  # job id -> estimated start (Unix seconds); absent when it cannot be planned

    def position(self, job_id: int) -> int | None:
        return next((i for i, j in enumerate(self.order, start=1) if j.id == job_id), None)


def outlook(ctx: ToolContext) -> Outlook:
    """The plan of every waiting job in the policy's order, else the last pass's backfill plan. A stopped
    scheduler starts nothing, so then nothing has an estimated start. The planning reads only the
    (immutable) snapshot, so it runs outside the lock, as a tick's decision does."""
    orch = ctx.orchestrator
    with orch.lock:
        snapshot, policy, planned, enabled = orch.snapshot(), orch.policy, orch.planned, orch.enabled
    order = policy.order(snapshot)
    starts = {**planned, **estimate_starts(snapshot, order)} if enabled else {}
    return Outlook(snapshot, policy.name, order, starts)


def _when(name: str, value: str | float, now: float, *, start: float | None = None) -> float:
    """A time argument in Unix seconds (the end of a window counts from its ``start``); a ValueError
    names the argument."""
    try:
        return parse_time(value, now) if start is None else parse_end(value, start, now)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


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
    estimated_start: float | None = None  # a waiting job's planned start (Unix seconds); None: cannot plan it


class QueueView(BaseModel):
    policy: str
    jobs: list[QueueEntry]
    stats: QueueStats


def list_queue(ctx: ToolContext, args: ListQueue) -> QueueView:
    plan = outlook(ctx)
    stats = ctx.orchestrator.queue.stats(plan.snapshot.now)
    entries = [QueueEntry(position=None, job=j) for j in plan.snapshot.holding]
    entries += [QueueEntry(position=i, job=j, estimated_start=plan.starts.get(j.id)) for i, j in enumerate(plan.order, start=1)]
    if args.user is not None:
        entries = [e for e in entries if e.job.user == args.user]
    return QueueView(policy=plan.policy, jobs=entries, stats=stats)


class GetJob(Args):
    """One job's whole record: status, allocation, exit code, attempts, times and pending reason; for a
    waiting job also its place in line and estimated start."""

    job_id: int = Field(description="The job's id.")


class JobDetail(Job):
    position: int | None = None  # in the scheduling order, for a queued job
    estimated_start: float | None = None  # a queued job's planned start (Unix seconds); None: cannot plan it


def get_job(ctx: ToolContext, args: GetJob) -> JobDetail:
    job = ctx.orchestrator.queue.get(args.job_id)
    if job.status != JobStatus.QUEUED:
        return JobDetail(**job.model_dump())
    plan = outlook(ctx)
    return JobDetail(**job.model_dump(), position=plan.position(job.id), estimated_start=plan.starts.get(job.id))


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
    begin_at: str | float | None = Field(
        None, description="Not before this time: '22:00' (its next occurrence), '2026-11-30 22:00', '+3h', or "
        "Unix seconds; null to start as soon as GPUs are free.")
    after: list[int] | None = Field(None, description="Start only after these jobs completed successfully; null for none.")
    after_any: list[int] | None = Field(None, description="Start only after these jobs ended, however; null for none.")
    preemptible: bool | None = Field(
        None, description="True if the job may be stopped and requeued for a job of higher priority (it should "
        "checkpoint on SIGTERM); null for no.")


class Submitted(BaseModel):
    job_id: int
    status: JobStatus
    position: int | None
    not_before: float | None = None  # the begin time it waits for (Unix seconds), if any


def submit_job(ctx: ToolContext, args: SubmitJob) -> Submitted:
    if ctx.actor is None:
        raise PermissionDenied("a submission needs a user")
    given = args.model_dump(exclude_none=True, exclude={"env", "begin_at"})
    env = {var.name: var.value for var in args.env or []}
    if args.begin_at is not None:
        given["begin_at"] = _when("begin_at", args.begin_at, ctx.orchestrator.clock.now())
    spec = JobSpec(user=ctx.actor, env=env, **given)  # pydantic.ValidationError names the field at fault
    job = ctx.orchestrator.submit(spec)
    return Submitted(job_id=job.id, status=job.status, position=queue_position(ctx, job.id), not_before=job.not_before)


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
    """Why a job waits (or what it is doing), from the scheduler's own pending reason, never guessed; for a
    waiting job also its place in line, estimated start, priority factors and its user's and group's quota."""

    job_id: int = Field(description="The job's id.")


class FactorView(BaseModel):
    name: str
    value: float  # the factor before weighting
    weight: float
    points: float  # value x weight
    detail: str


class QuotaUse(BaseModel):
    name: str  # the user or the group
    quota: int | None  # GPUs at once; None: no limit
    in_use: int  # GPUs its jobs hold now


class Explanation(BaseModel):
    job_id: int
    user: str
    status: JobStatus
    gpu_count: int
    position: int | None  # in the scheduling order, for a queued job
    reason: str | None  # Slurm-style code: Priority, Resources, BeginTime, Dependency, QuotaExceeded, ...
    message: str  # the scheduler's words, or what the job is doing
    policy: str  # the policy that orders the queue now
    estimated_start: float | None = None  # a queued job's planned start (Unix seconds); None: cannot plan it
    factors: list[FactorView] | None = None  # the multifactor priority of a queued job; None otherwise
    total: float | None = None  # the sum of the factors' points: higher goes first
    note: str | None = None  # says when the factors are not what orders the queue
    user_quota: QuotaUse | None = None
    group_quota: QuotaUse | None = None  # None when the user has no group


def explain_job(ctx: ToolContext, args: ExplainJob) -> Explanation:
    job = ctx.orchestrator.queue.get(args.job_id)
    base = dict(job_id=job.id, user=job.user, status=job.status, gpu_count=job.gpu_count,
                reason=job.pending_reason.value if job.pending_reason else None)
    if job.status != JobStatus.QUEUED:
        if job.status in HOLDS_GPUS and job.allocation is not None:
            message = f"{job.status.value} on {job.allocation.describe()}"
        else:
            message = job.status.value + (f" with exit code {job.exit_code}" if job.exit_code is not None else "")
        return Explanation(**base, position=None, message=message, policy=ctx.orchestrator.policy.name)
    plan = outlook(ctx)
    priority = ctx.multifactor.explain(plan.snapshot, job)
    rules = plan.snapshot.rules
    users, groups = plan.snapshot.in_use
    group = rules.group_of(job.user)
    note = None
    if plan.policy != ctx.multifactor.name:
        note = f"the queue is ordered by the {plan.policy} policy; these factors are how {ctx.multifactor.name} would rank it"
    return Explanation(
        **base, position=plan.position(job.id), message=job.pending_message or "", policy=plan.policy,
        estimated_start=plan.starts.get(job.id),
        factors=[FactorView(name=f.name, value=f.value, weight=f.weight, points=f.points, detail=f.detail)
                 for f in priority.factors],
        total=priority.total, note=note,
        user_quota=QuotaUse(name=job.user, quota=rules.quota_of_user(job.user), in_use=users.get(job.user, 0)),
        group_quota=None if group is None else QuotaUse(name=group, quota=rules.group_quota.get(group),
                                                        in_use=groups.get(group, 0)),
    )


class GetQuotas(Args):
    """GPU quotas (GPUs held at once) per user and per group, with the GPUs each holds now and the GPUs
    its waiting jobs ask for."""


class UserQuota(BaseModel):
    user: str
    group: str | None
    quota: int | None  # None: no limit
    in_use: int
    waiting_gpus: int


class GroupQuota(BaseModel):
    group: str
    members: list[str]
    quota: int | None  # None: no limit
    in_use: int
    waiting_gpus: int


class Quotas(BaseModel):
    default_user_quota: int | None  # the quota of a user without one of their own; None: no limit
    users: list[UserQuota]  # every user with a quota of their own, GPUs in use or waiting jobs
    groups: list[GroupQuota]


def quotas_of(snapshot: Snapshot) -> Quotas:
    rules = snapshot.rules
    users_in_use, groups_in_use = snapshot.in_use
    waiting: dict[str, int] = {}
    for job in snapshot.queued:
        waiting[job.user] = waiting.get(job.user, 0) + job.gpu_count
    group_waiting: dict[str, int] = {}
    for user, gpus in waiting.items():
        group = rules.group_of(user)
        if group is not None:
            group_waiting[group] = group_waiting.get(group, 0) + gpus
    members: dict[str, list[str]] = {}
    for user, group in rules.groups.items():
        members.setdefault(group, []).append(user)
    users = sorted(set(rules.user_quota) | set(users_in_use) | set(waiting))
    groups = sorted(set(members) | set(rules.group_quota) | set(groups_in_use))
    return Quotas(
        default_user_quota=rules.default_user_quota,
        users=[UserQuota(user=u, group=rules.group_of(u), quota=rules.quota_of_user(u), in_use=users_in_use.get(u, 0),
                         waiting_gpus=waiting.get(u, 0)) for u in users],
        groups=[GroupQuota(group=g, members=sorted(members.get(g, [])), quota=rules.group_quota.get(g),
                           in_use=groups_in_use.get(g, 0), waiting_gpus=group_waiting.get(g, 0)) for g in groups],
    )


def get_quotas(ctx: ToolContext | ProposalSession, args: GetQuotas) -> Quotas:
    return quotas_of(_snapshot(ctx))


# -- reservations (an administrator's; the model may only list them) ------------------------------
class ListReservations(Args):
    """GPU reservations not over yet: which GPUs of which node are kept for which user or group, and when."""


def list_reservations(ctx: ToolContext | ProposalSession, args: ListReservations) -> list[Reservation]:
    return list(_snapshot(ctx).reservations)


class ReserveGpus(Args):
    """Keep GPUs for one user or one group from ``start`` to ``end``: either ``node`` and ``gpus``, or
    ``gpu_count`` (on ``node``, or the first node in inventory order with that many GPUs free of
    overlapping reservations). Never given to the model, so its fields may have defaults."""

    user: UserName | None = Field(None, description="The user the GPUs are kept for.")
    group: str | None = Field(None, description="The group the GPUs are kept for (instead of a user).")
    start: str | float = Field("now", description="'22:00', '2026-11-30 22:00', '+1h', 'now' or Unix seconds.")
    end: str | float = Field(description="As start; '+8h' and '06:00' count from the start.")
    node: str | None = Field(None, description="The node; may be left out with gpus on a one-node cluster.")
    gpus: list[int] | None = Field(None, description="GPU indices on the node.")
    gpu_count: int | None = Field(None, ge=1, description="How many GPUs, when not naming them.")
    note: str = Field("", max_length=200, description="Why, for the people who see it.")


def choose_gpus(layout: Layout, reservations: tuple[Reservation, ...], args: ReserveGpus,
                start: float, end: float) -> tuple[str, tuple[int, ...]]:
    """The node and GPUs a reservation asks for, or the first that fit its count in its window."""
    if args.node is not None and args.node not in layout.usable:
        raise InvalidReservation(f"there is no node {args.node!r}; the nodes are {', '.join(layout.usable)}")
    if args.gpus:
        if len(set(args.gpus)) != len(args.gpus):
            raise InvalidReservation("a GPU is named twice")
        if args.gpu_count is not None and args.gpu_count != len(args.gpus):
            raise InvalidReservation(f"gpu_count is {args.gpu_count} but {len(args.gpus)} GPU(s) are named")
        node = args.node
        if node is None:
            if len(layout.usable) != 1:
                raise InvalidReservation("say which node the GPUs are on")
            (node,) = layout.usable
        return node, tuple(sorted(args.gpus))
    if args.gpu_count is None:
        raise InvalidReservation("say how many GPUs (gpu_count) or which ones (node and gpus)")
    for node in [args.node] if args.node is not None else list(layout.usable):
        kept = {g for r in reservations if r.node == node and r.covers(start, end) for g in r.gpus}
        free = [g for g in layout.usable[node] if g not in kept]
        if len(free) >= args.gpu_count:
            return node, tuple(free[: args.gpu_count])
    where = f"node {args.node}" if args.node is not None else "no node"
    raise InvalidReservation(f"{where} has {args.gpu_count} usable GPU(s) free of other reservations from "
                             f"{local_time(start)} to {local_time(end)}")


def reserve_gpus(ctx: ToolContext, args: ReserveGpus) -> Reservation:
    if (args.user is None) == (args.group is None):
        raise InvalidReservation("a reservation is for exactly one of user or group")
    orch = ctx.orchestrator
    known = sorted(set(orch.rules.groups.values()))
    if args.group is not None and args.group not in known:
        raise InvalidReservation(f"there is no group {args.group!r}; the groups are: {', '.join(known) or 'none'}")
    now = orch.clock.now()
    start = _when("start", args.start, now)
    end = _when("end", args.end, now, start=start)
    with orch.lock:
        node, gpus = choose_gpus(orch.snapshot().layout, orch.reservations, args, start, end)
        return orch.reserve(Reservation(node=node, gpus=gpus, user=args.user, group=args.group,
                                        start=start, end=end, note=args.note))


class Unreserve(Args):
    """Remove a reservation; its GPUs are for everyone again."""

    reservation_id: int = Field(description="The reservation's id.")


def unreserve(ctx: ToolContext, args: Unreserve) -> Reservation:
    try:
        return ctx.orchestrator.unreserve(args.reservation_id)
    except LookupError as exc:
        raise ReservationNotFound(str(exc)) from None


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
