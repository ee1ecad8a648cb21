"""Typed tools on the cluster: GPUs and the inventory; the scheduler's state, start/stop and policy."""

from __future__ import annotations

import logging
from enum import StrEnum

from pydantic import BaseModel, Field

from policies.watch import describe_process
from tools.door.context import ENABLED_KEY, POLICY_KEY, Args, ToolContext
from tools.inventory import NodeDeclaration
from tools.models import HOLDS_GPUS, GpuProcess, InventorySource
from tools.queue import QueueStats

log = logging.getLogger("gpuherd")


class GetClusterState(Args):
    """Nodes and GPUs: which are free, allocated (to which job) or drained, with live readings."""


class GpuState(StrEnum):
    FREE = "free"
    ALLOCATED = "allocated"
    DRAINED = "drained"
    UNHEALTHY = "unhealthy"
    FOREIGN = "foreign"  # no job holds it, but processes outside gpuherd use it: it takes no job


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
    ecc_uncorrected: int | None = Field(None, description="Uncorrectable ECC errors since the driver loaded.")
    processes: list[GpuProcess] = Field(default_factory=list, description="Its compute processes: a job's "
                                        "(job_id) or foreign (used outside gpuherd, with the process's user).")
    in_use_by: list[str] = Field(default_factory=list, description="Who uses it outside gpuherd: user (command pid).")
    reason: str | None = Field(None, description="Why it is drained or unhealthy, where known.")


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
    resources = ctx.core.resources
    holders = {
        ref: j
        for j in ctx.core.queue.active()
        if j.status in HOLDS_GPUS and j.allocation is not None
        for ref in j.allocation.pairs()
    }
    nodes = []
    for node in resources.nodes():
        views = []
        for gpu in node.gpus:
            job = holders.get((node.name, gpu.index))
            state = (
                GpuState.ALLOCATED if job else
                GpuState.UNHEALTHY if not gpu.healthy else
                GpuState.DRAINED if gpu.drained else GpuState.FOREIGN if gpu.foreign else GpuState.FREE
            )
            m = gpu.metrics
            views.append(GpuView(
                index=gpu.index, uuid=gpu.uuid, model=gpu.model, memory_total_mib=gpu.memory_total_mib,
                state=state, job_id=job.id if job else None, user=job.user if job else None,
                utilization_pct=m.utilization_pct if m else None, memory_used_mib=m.memory_used_mib if m else None,
                temperature_c=m.temperature_c if m else None, power_w=m.power_w if m else None,
                ecc_uncorrected=m.ecc_uncorrected if m else None, processes=list(m.processes) if m else [],
                in_use_by=[describe_process(p) for p in gpu.foreign], reason=gpu.reason,
            ))
        nodes.append(NodeView(name=node.name, source=node.source, gpus=views))
    states = [g.state for n in nodes for g in n.gpus]
    return ClusterState(
        detected=resources.source == InventorySource.NVML,
        nodes=nodes,
        total_gpus=len(states),
        free_gpus=states.count(GpuState.FREE),
        drained_gpus=states.count(GpuState.DRAINED),
    )


class GpuStatus(ClusterState):
    notice: str = Field(description="Where the inventory came from; says so when it is declared, not detected.")
    metrics_error: str | None = Field(description="Why the last live reading failed; null when it worked.")


def gpu_status(ctx: ToolContext) -> GpuStatus:
    """The cluster state, with where the inventory came from and whether live readings work."""
    state = get_cluster_state(ctx, GetClusterState())
    return GpuStatus(**state.model_dump(), notice=ctx.core.inventory_notice,
                     metrics_error=ctx.core.resources.metrics_error)


class SetInventory(Args):
    """Declare the inventory, or re-detect it through NVML (``nodes`` null)."""

    nodes: list[NodeDeclaration] | None = Field(
        None, description="The inventory to declare; leave out (or send no body) to re-detect through NVML.")


def set_inventory(ctx: ToolContext, args: SetInventory) -> GpuStatus:
    """Refused (``InventoryConflict``) if it would drop GPUs that running jobs hold."""
    ctx.check_admin("changing the inventory")
    core = ctx.core
    # Under the orchestrator's lock, so that no pass starts a job on a GPU being dropped.
    with core.orchestrator.lock:
        held = {ref for j in core.queue.active() if j.status in HOLDS_GPUS and j.allocation is not None
                for ref in j.allocation.pairs()}
        if args.nodes is None:
            core.resources.detect(now=core.clock.now(), held=held)
        else:
            core.resources.declare(args.nodes, now=core.clock.now(), held=held)
    ctx.record("re-detect the inventory" if args.nodes is None else
               "declare the inventory: " + ", ".join(f"{n.name} ({n.gpus} GPUs)" for n in args.nodes))
    nodes = core.resources.nodes()
    if args.nodes is None:
        core.inventory_notice = (
            f"Detected {sum(len(n.gpus) for n in nodes)} GPU(s) through NVML on {', '.join(n.name for n in nodes)}.")
        core.resources.refresh_metrics(core.clock.now())
    else:
        core.inventory_notice = (
            f"{sum(n.gpus for n in args.nodes)} GPU(s) declared through /gpu/initialize on "
            f"{', '.join(n.name for n in args.nodes)}; declared, not detected.")
    core.changed()
    return gpu_status(ctx)


# -- the scheduler ------------------------------------------------------------------------------
class LastPass(BaseModel):
    time: float
    duration_s: float
    started: list[int]
    finished: list[int]
    rejected: int
    waiting: int
    phases_s: dict[str, float]


class SchedulerState(BaseModel):
    state: str = Field(description="running: jobs start; stopped: nothing new starts, running jobs go on.")
    running: bool
    policy: str
    policies: list[str]
    last_tick: LastPass | None
    counts: dict[str, int] = Field(description="Jobs by status.")
    queued_gpus: int
    running_gpus: int
    max_queued: int


def scheduler_state(ctx: ToolContext) -> SchedulerState:
    core = ctx.core
    orch = core.orchestrator
    stats: QueueStats = core.queue.stats(core.clock.now())
    tick = orch.last_tick
    return SchedulerState(
        state="running" if orch.enabled else "stopped",
        running=orch.enabled,
        policy=orch.policy.name,
        policies=list(core.policy_names),
        last_tick=None if tick is None else LastPass(
            time=tick.time, duration_s=tick.duration_s, started=list(tick.started), finished=list(tick.finished),
            rejected=len(tick.rejected), waiting=tick.waiting, phases_s=tick.phases_s,
        ),
        counts=stats.counts,
        queued_gpus=stats.queued_gpus,
        running_gpus=stats.running_gpus,
        max_queued=stats.max_queued,
    )


class SetScheduling(Args):
    """Start or stop the scheduler: stopped, nothing new starts and running jobs go on."""

    enabled: bool = Field(description="True: queued jobs start again; false: none starts.")


def set_scheduling(ctx: ToolContext, args: SetScheduling) -> SchedulerState:
    ctx.check_admin("starting or stopping the scheduler")
    core = ctx.core
    with core.orchestrator.lock:  # saved first: a setting that could not be saved is not taken either
        core.store.set_setting(ENABLED_KEY, str(args.enabled).lower())
        core.orchestrator.enabled = args.enabled
    log.info("scheduler %s", "started" if args.enabled else "stopped")
    ctx.record("start the scheduler" if args.enabled else "stop the scheduler")
    core.changed()
    return scheduler_state(ctx)


class SetPolicy(Args):
    """Choose the scheduling policy by name."""

    policy: str = Field(description="The policy's name.")


def set_policy(ctx: ToolContext, args: SetPolicy) -> SchedulerState:
    ctx.check_admin("changing the policy")
    core = ctx.core
    policy = core.make_policy(args.policy)  # ValueError naming the choices
    with core.orchestrator.lock:  # saved first, as above
        core.store.set_setting(POLICY_KEY, args.policy)
        core.orchestrator.policy = policy
    log.info("policy set to %s", args.policy)
    ctx.record(f"policy {args.policy}")
    core.changed()
    return scheduler_state(ctx)
