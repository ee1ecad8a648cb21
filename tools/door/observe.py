"""Typed tools for watching the cluster: the event log as it grows, the charts' history, the figures
``/metrics`` exports, and the topology. The dashboard, the event stream and Prometheus read here.

The event log is an open view, like ``GET /jobs/{id}/events``: its messages name jobs, users and GPUs,
never a command, working directory or environment. So are the figures (like ``GET /queue``).

``sample`` is the service's: every ``metrics_interval_s`` it records the cluster's state in the core's
``Observer`` (``tools/door/samples.py``) and lets it read the events written since the last sample.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from pydantic import BaseModel, Field

from tools.door.cluster import GetClusterState, GpuState, get_cluster_state
from tools.door.context import Args, ToolContext
from tools.door.samples import HOUR_S, Histogram, Sample
from tools.models import HOLDS_GPUS, MAX_ID, Event, InventorySource, JobStatus

MAX_EVENTS = 1000  # events in one answer


# -- the event log ----------------------------------------------------------------------------------
class EventsAfter(Args):
    """Events after a given one, oldest first: to follow the log, pass the last id seen."""

    after_id: int = Field(0, ge=0, le=MAX_ID, description="Only events after this id (0: from the first).")
    limit: int = Field(MAX_EVENTS, ge=1, le=MAX_EVENTS, description="At most this many.")


def events_after(ctx: ToolContext, args: EventsAfter) -> list[Event]:
    return ctx.core.store.events(after_id=args.after_id, limit=args.limit)


def _has_after(ctx: ToolContext, event_id: int) -> Event | None:
    found = ctx.core.store.events(after_id=event_id, limit=1)
    return found[0] if found else None


def latest_event_id(ctx: ToolContext) -> int:
    """The id of the newest event (0: none yet), found by galloping and bisecting over ``events(after_id)``:
    a few dozen lookups by primary key, whatever the log's length."""
    return _first_id_where(ctx, lambda e: False)


def _first_id_where(ctx: ToolContext, reached: Callable[[Event], bool]) -> int:
    """The id after which the first event for which ``reached`` holds comes (the latest id if none does).
    ``reached`` must stay true once it is (event ids grow with time, so ``time >= t`` finds where the
    events of time ``t`` begin)."""

    def beyond(x: int) -> bool:  # some event after x exists, and the next one is not yet `reached`
        event = _has_after(ctx, x)
        return event is not None and not reached(event)

    lo, hi = 0, 1
    while beyond(hi) and hi < MAX_ID:
        lo, hi = hi, min(MAX_ID, hi * 2)
    if not beyond(lo):
        return lo
    while hi - lo > 1:  # beyond(lo) holds, beyond(hi) does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if beyond(mid) else (lo, mid)
    return hi


# -- sampling (the service's) -------------------------------------------------------------------------
def sample(ctx: ToolContext) -> Sample:
    """Record the cluster's state now and read the events written since the last sample."""
    core = ctx.core
    now = core.clock.now()
    state = get_cluster_state(ctx, GetClusterState())
    states = Counter(g.state for n in state.nodes for g in n.gpus)
    active = core.queue.active()
    queued = [j for j in active if j.status == JobStatus.QUEUED]
    taken = Sample(
        time=now, busy=states[GpuState.ALLOCATED], free=states[GpuState.FREE], drained=states[GpuState.DRAINED],
        unhealthy=states[GpuState.UNHEALTHY], queued=len(queued), queued_gpus=sum(j.gpu_count for j in queued),
        utilization={f"{n.name}:{g.index}": g.utilization_pct for n in state.nodes for g in n.gpus
                     if g.utilization_pct is not None},
    )
    core.observer.add_sample(taken)
    store = core.store
    core.observer.follow(
        lambda after, limit: store.events(after_id=after, limit=limit), store.get_job, now,
        start=lambda since: (_first_id_where(ctx, lambda e: e.time >= since), latest_event_id(ctx)),
        running=lambda: [j for j in core.queue.active() if j.status in HOLDS_GPUS],
    )
    return taken


# -- the charts' history -------------------------------------------------------------------------------
class GetHistory(Args):
    """The charts' data: the recent samples, and per hour the jobs started and finished, waits and GPU-hours."""

    hours: int = Field(24, ge=1, le=168, description="How many hours of hourly figures.")


class Series(BaseModel):
    time: list[float] = Field(description="When each sample was taken (Unix seconds).")
    busy: list[int] = Field(description="GPUs held by jobs.")
    free: list[int]
    drained: list[int]
    unhealthy: list[int]
    queued: list[int] = Field(description="Waiting jobs.")
    queued_gpus: list[int] = Field(description="GPUs the waiting jobs ask for.")
    node_utilization: dict[str, list[float | None]] = Field(
        description="Mean utilization (percent) of each node's measured GPUs; null where none was measured.")
    gpu_utilization: dict[str, list[int | None]] = Field(description="Per GPU (node:index), where measured.")


class Hour(BaseModel):
    start: float = Field(description="The hour's start (Unix seconds).")
    started: int
    finished: dict[str, int] = Field(description="Jobs that ended in this hour, by final status.")
    mean_wait_s: float | None = Field(description="Mean wait of the jobs started in this hour.")
    gpu_hours: dict[str, float] = Field(description="GPU-hours used in this hour, per user.")


class History(BaseModel):
    now: float
    sample_interval_s: float | None = Field(description="Seconds between samples (null: fewer than two yet).")
    detected: bool = Field(description="False: the inventory is declared, so no utilization is measured.")
    samples: Series
    hours: list[Hour] = Field(description="Oldest first, the current hour last.")
    waits: list[tuple[float, float]] = Field(description="The latest starts: (start time, wait in seconds).")
    gpu_hours_by_user: dict[str, float] = Field(description="GPU-hours per user over these hours, running jobs included.")


def history(ctx: ToolContext, args: GetHistory) -> History:
    core = ctx.core
    now = core.clock.now()
    observer = core.observer
    usage = observer.usage_now(now)
    with observer.lock:
        samples = list(observer.samples)
        tallies = dict(observer.hours)
        waits = list(observer.waits)
    gpus = sorted({k for s in samples for k in s.utilization}, key=_gpu_key)
    nodes = sorted({k.rpartition(":")[0] for k in gpus})
    node_util: dict[str, list[float | None]] = {n: [] for n in nodes}
    for s in samples:
        for n in nodes:
            values = [v for k, v in s.utilization.items() if k.rpartition(":")[0] == n]
            node_util[n].append(round(sum(values) / len(values), 1) if values else None)
    series = Series(
        time=[s.time for s in samples], busy=[s.busy for s in samples], free=[s.free for s in samples],
        drained=[s.drained for s in samples], unhealthy=[s.unhealthy for s in samples],
        queued=[s.queued for s in samples], queued_gpus=[s.queued_gpus for s in samples],
        node_utilization=node_util, gpu_utilization={k: [s.utilization.get(k) for s in samples] for k in gpus},
    )
    current = int(now // HOUR_S)
    hours, by_user = [], Counter()
    for h in range(current - args.hours + 1, current + 1):
        tally = tallies.get(h)
        used = usage.get(h, Counter())
        by_user.update(used)
        hours.append(Hour(
            start=h * HOUR_S, started=tally.started if tally else 0, finished=dict(tally.finished) if tally else {},
            mean_wait_s=tally.wait_sum_s / tally.waits if tally and tally.waits else None,
            gpu_hours={u: round(s / HOUR_S, 4) for u, s in sorted(used.items())},
        ))
    since = (current - args.hours + 1) * HOUR_S
    interval = (samples[-1].time - samples[0].time) / (len(samples) - 1) if len(samples) > 1 else None
    return History(
        now=now, sample_interval_s=interval, detected=core.resources.source == InventorySource.NVML,
        samples=series, hours=hours, waits=[w for w in waits if w[0] >= since],
        gpu_hours_by_user={u: round(s / HOUR_S, 4) for u, s in sorted(by_user.items())},
    )


def _gpu_key(key: str) -> tuple[str, int]:
    node, _, index = key.rpartition(":")
    return node, int(index)


# -- what /metrics exports --------------------------------------------------------------------------------
class GpuReading(BaseModel):
    node: str
    index: int
    uuid: str
    model: str | None
    state: str
    memory_total_mib: int | None
    utilization_pct: int | None
    memory_used_mib: int | None
    temperature_c: int | None
    power_w: float | None
    ecc_uncorrected: int | None = None
    foreign_processes: int = 0
    job_processes: int = 0


class HistogramView(BaseModel):
    buckets: list[tuple[float, int]] = Field(description="(upper bound, observations at or below it), +Inf last.")
    sum: float
    count: int


def _view(h: Histogram) -> HistogramView:
    return HistogramView(buckets=h.cumulative(), sum=h.sum, count=h.count)


class Figures(BaseModel):
    """Everything ``/metrics`` exports, read at one moment."""

    detected: bool
    gpus_by_state: dict[str, dict[str, int]] = Field(description="node -> state -> GPUs (every state, zeros included).")
    gpus: list[GpuReading]
    jobs_by_status: dict[str, int]
    queue_length: int
    queued_gpus: int
    oldest_wait_s: float | None
    gpus_in_use_by_user: dict[str, int]
    scheduler_running: bool
    policy: str
    last_pass_s: float | None
    wait: HistogramView
    passes: dict[str, HistogramView] = Field(description="phase -> durations of the passes since start-up.")
    fallbacks: int = Field(description="Passes where the agent's fallback started jobs (fallback events), since start-up.")
    jobs_started: int = Field(description="Starts since this server started.")
    jobs_finished: dict[str, int] = Field(description="Ends since this server started, by final status.")


def figures(ctx: ToolContext) -> Figures:
    core = ctx.core
    state = get_cluster_state(ctx, GetClusterState())
    by_state = {n.name: {s.value: 0 for s in GpuState} for n in state.nodes}
    readings = []
    for n in state.nodes:
        for g in n.gpus:
            by_state[n.name][g.state.value] = by_state[n.name].get(g.state.value, 0) + 1
            readings.append(GpuReading(
                node=n.name, index=g.index, uuid=g.uuid, model=g.model, state=g.state.value,
                memory_total_mib=g.memory_total_mib, utilization_pct=g.utilization_pct,
                memory_used_mib=g.memory_used_mib, temperature_c=g.temperature_c, power_w=g.power_w,
                ecc_uncorrected=g.ecc_uncorrected, foreign_processes=sum(bool(p.foreign) for p in g.processes),
                job_processes=sum(p.job_id is not None for p in g.processes)))
    now = core.clock.now()
    stats = core.queue.stats(now)
    users: Counter[str] = Counter()
    for j in core.queue.active():
        if j.status in HOLDS_GPUS:
            users[j.user] += j.gpu_count
    tick = core.orchestrator.last_tick
    observer = core.observer
    with observer.lock:
        wait = _view(observer.wait_histogram)
        passes = {phase: _view(h) for phase, h in sorted(observer.pass_histograms.items())}
        fallbacks, started, finished = observer.fallbacks, observer.started, dict(observer.finished)
    return Figures(
        detected=state.detected, gpus_by_state=by_state, gpus=readings, jobs_by_status=stats.counts,
        queue_length=stats.counts.get(JobStatus.QUEUED.value, 0), queued_gpus=stats.queued_gpus,
        oldest_wait_s=stats.oldest_wait_s, gpus_in_use_by_user=dict(sorted(users.items())),
        scheduler_running=core.orchestrator.enabled, policy=core.orchestrator.policy.name,
        last_pass_s=tick.duration_s if tick is not None else None, wait=wait, passes=passes,
        fallbacks=fallbacks, jobs_started=started,
        jobs_finished={s.value: finished.get(s.value, 0) for s in (JobStatus.COMPLETED, JobStatus.FAILED,
                                                                    JobStatus.CANCELLED)},
    )


# -- topology ---------------------------------------------------------------------------------------------
class TopologyGpu(BaseModel):
    index: int
    uuid: str
    model: str | None
    memory_total_mib: int | None
    state: str
    job_id: int | None
    user: str | None


class TopologyNode(BaseModel):
    name: str
    source: InventorySource
    gpus: list[TopologyGpu]


class Link(BaseModel):
    node: str
    a: int = Field(description="One GPU's index.")
    b: int = Field(description="The other's.")
    kind: str = Field(description="How they are connected, as NVML says it (e.g. NVLink, PCIe switch).")


class Topology(BaseModel):
    detected: bool
    nodes: list[TopologyNode]
    links: list[Link] = Field(description="Links between GPUs where NVML reports them; empty where nothing does.")
    links_note: str = Field(description="Where the links come from, or why there are none.")


def topology(ctx: ToolContext) -> Topology:
    state = get_cluster_state(ctx, GetClusterState())
    nodes = [TopologyNode(name=n.name, source=n.source, gpus=[
        TopologyGpu(index=g.index, uuid=g.uuid, model=g.model, memory_total_mib=g.memory_total_mib,
                    state=g.state.value, job_id=g.job_id, user=g.user) for g in n.gpus]) for n in state.nodes]
    note = ("the inventory is declared: nothing measures how its GPUs are linked" if not state.detected else
            "the NVML probe does not read GPU links yet: GPUs are shown without them")
    return Topology(detected=state.detected, nodes=nodes, links=[], links_note=note)
