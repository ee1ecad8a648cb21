"""The GPU watch: what the service does with every sample of the GPUs (``sample_interval_s``), on its
sample thread, never in a scheduler pass.

``watch`` reads the inventory's latest readings (refreshed just before by ``ResourceManager``, or
reported by the Ray node agents) and

- keeps each GPU's series (``Observer.gpus``) for the dashboard and the API;
- adds the sample to each running job's usage (mean and peak utilization and memory), stored, so that
  ``herd show``, ``GET /jobs/{id}`` and the accounting read it after a restart too;
- judges idle jobs (``policies.watch.idle_step``): one ``idle`` event per idle spell, then ``idle_action``;
- judges failing GPUs (``policies.watch.health_problem``, and a GPU that gives no reading): drained with
  the reason, and the job on it requeued without using a retry.

A GPU used by processes outside gpuherd needs nothing here: its reading says so (``Gpu.foreign``), and
the scheduler gives it no job while it does. The verdicts are pure; the effects are here, each through
the orchestrator or the inventory, each leaving an event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from policies.watch import describe_process, health_problem, idle_step
from tools.door.context import Args, ToolContext
from tools.door.samples import GpuPoint
from tools.inventory import NO_READING
from tools.models import Event, Gpu, Job, JobStatus, JobUsage

log = logging.getLogger(__name__)

IdleAction = Literal["notify", "requeue", "stop"]


@dataclass(frozen=True)
class IdleRules:
    threshold_pct: float = 5.0
    after_s: float = 1800.0
    action: IdleAction = "notify"


@dataclass
class WatchReport:
    """What one sample did, for logs and tests."""

    idle: list[int] = field(default_factory=list)  # jobs reported idle
    drained: list[tuple[str, int, str]] = field(default_factory=list)  # (node, index, why)
    requeued: list[int] = field(default_factory=list)


def _key(gpu: Gpu) -> str:
    return f"{gpu.node}:{gpu.index}"


def watch(ctx: ToolContext, rules: IdleRules) -> WatchReport:
    core = ctx.core
    now = core.clock.now()
    observer = core.observer
    gpus = {(g.node, g.index): g for n in core.resources.nodes() for g in n.gpus}
    observer.add_gpu_points({
        _key(g): GpuPoint(now, g.metrics.utilization_pct, g.metrics.memory_used_mib, g.metrics.temperature_c,
                          g.metrics.power_w)
        for g in gpus.values() if g.metrics is not None})
    holding = [j for j in core.queue.active() if j.status == JobStatus.RUNNING and j.allocation is not None]
    report = WatchReport()
    _count_usage(ctx, holding, gpus)
    for job in holding:
        _judge_idle(ctx, job, gpus, now, rules, report)
    _judge_health(ctx, gpus, {ref: j for j in holding for ref in j.allocation.pairs()}, now, report)
    return report


def _readings(job: Job, gpus: dict[tuple[str, int], Gpu]) -> list[Gpu]:
    return [g for ref in job.allocation.pairs() if (g := gpus.get(ref)) is not None and g.metrics is not None]


def _count_usage(ctx: ToolContext, holding: list[Job], gpus: dict[tuple[str, int], Gpu]) -> None:
    """Add this sample to each running job's usage and store them all in one write."""
    observer, store = ctx.core.observer, ctx.core.store
    running = {j.id for j in holding}
    for gone in observer.job_usage.keys() - running:
        del observer.job_usage[gone]
    unknown = [j.id for j in holding if j.id not in observer.job_usage]
    if unknown:  # first seen since the server started: go on from what was stored
        observer.job_usage.update(store.job_usage(unknown))
    changed = {}
    for job in holding:
        measured = [g.metrics for g in _readings(job, gpus) if g.metrics.utilization_pct is not None]
        if not measured:
            continue
        utilization = sum(m.utilization_pct for m in measured) / len(measured)
        memory = sum(m.memory_used_mib or 0 for m in measured)
        usage = observer.job_usage.get(job.id, JobUsage()).add(utilization, memory)
        changed[job.id] = observer.job_usage[job.id] = usage
    if changed:
        store.save_job_usage(changed)


def _judge_idle(ctx: ToolContext, job: Job, gpus: dict[tuple[str, int], Gpu], now: float, rules: IdleRules,
                report: WatchReport) -> None:
    observer = ctx.core.observer
    if job.allow_idle or job.stop_reason is not None:
        observer.idle.pop(job.id, None)
        return
    measured = [g for g in _readings(job, gpus) if g.metrics.utilization_pct is not None]
    mean = sum(g.metrics.utilization_pct for g in measured) / len(measured) if measured else None
    spell, report_now = idle_step(observer.idle.get(job.id), now, mean, threshold_pct=rules.threshold_pct,
                                  after_s=rules.after_s)
    if spell is None:
        observer.idle.pop(job.id, None)
    else:
        observer.idle[job.id] = spell
    if not report_now:
        return
    assert spell is not None
    idle_for = now - spell.since
    refs = [f"{node}:{index}" for node, index in job.allocation.pairs()]
    # A terminal session (herd run) cannot start again unattended: where the rule requeues, it is stopped.
    action = "stop" if rules.action == "requeue" and job.interactive else rules.action
    follows = {"notify": "", "requeue": "; requeued (no retry used)", "stop": "; stopped"}[action]
    ctx.core.store.add_event(Event(
        time=now, kind="idle", job_id=job.id,
        message=f"{job.display_name} ({job.user}) has held GPU(s) {', '.join(refs)} under {rules.threshold_pct:g}% "
                f"utilization for {idle_for / 60:.0f} min (mean {spell.mean_pct:.1f}%){follows}",
        data={"gpus": refs, "utilization_pct": round(spell.mean_pct, 1), "idle_for_s": round(idle_for, 1),
              "action": action}))
    report.idle.append(job.id)
    why = f"its GPUs were idle for {idle_for / 60:.0f} min (idle_action {rules.action})"
    try:
        if action == "requeue":
            ctx.core.orchestrator.requeue(job.id, why)
            report.requeued.append(job.id)
        elif action == "stop":
            ctx.core.orchestrator.cancel(job.id)
    except Exception:  # it ended meanwhile: nothing left to do
        log.warning("idle job %s: %s failed", job.id, rules.action, exc_info=True)


def _judge_health(ctx: ToolContext, gpus: dict[tuple[str, int], Gpu], holders: dict[tuple[str, int], Job],
                  now: float, report: WatchReport) -> None:
    """Drain each GPU that fails (a failing XID, new uncorrectable ECC errors, no reading) with the reason,
    and requeue the job on it."""
    core = ctx.core
    for ref, gpu in gpus.items():
        if gpu.metrics is None:
            problem = NO_READING if not gpu.healthy else None
        else:
            problem = health_problem(gpu.metrics, core.observer.ecc_seen.get(gpu.uuid))
            if gpu.metrics.ecc_uncorrected is not None:
                core.observer.ecc_seen[gpu.uuid] = gpu.metrics.ecc_uncorrected
        if problem is None:
            continue
        if not gpu.drained:
            core.resources.drain(*ref, now=now, reason=problem)
            report.drained.append((*ref, problem))
        job = holders.get(ref)
        if job is not None and job.stop_reason is None:
            try:
                if job.interactive:  # its terminal goes with the GPU: nothing to start again unattended
                    core.orchestrator.cancel(job.id)
                else:
                    core.orchestrator.requeue(job.id, f"GPU {ref[0]}:{ref[1]} failed ({problem})")
                    report.requeued.append(job.id)
            except Exception:
                log.warning("job %s on failing GPU %s:%s: requeue failed", job.id, *ref, exc_info=True)


# -- drains by hand ----------------------------------------------------------------------------------
class SetDrained(Args):
    """Drain a GPU (no new job starts on it; a job on it runs on) or undrain it (after a failing GPU was
    looked at: the watch drained it with its reason)."""

    node: str = Field(min_length=1, max_length=63)
    index: int = Field(ge=0, le=63)
    drained: bool = Field(strict=True)
    reason: str = Field("", max_length=500, description="Why, for the event log and the dashboard.")


def set_drained(ctx: ToolContext, args: SetDrained) -> GpuSamples:
    """Administrators only. ``UnknownGpu`` (404) for a GPU not in the inventory."""
    ctx.check_admin("draining or undraining a GPU")
    core = ctx.core
    core.resources.gpu(args.node, args.index)  # 404 before anything is recorded
    ctx.record(f"{'drain' if args.drained else 'undrain'} GPU {args.node}:{args.index}"
               + (f": {args.reason}" if args.reason else ""))
    change = core.resources.drain if args.drained else core.resources.undrain
    change(args.node, args.index, now=core.clock.now(), reason=args.reason)
    core.changed()  # a GPU back in service may start a waiting job now
    return gpu_samples(ctx, GetGpuSamples(node=args.node, index=args.index, since=core.clock.now()))


# -- reading ----------------------------------------------------------------------------------------
class GetGpuSamples(Args):
    """One GPU's readings over time: as taken for the last hour (``sample_full_s``), then as means over
    spans (``sample_coarse_s``), for a day (``sample_keep_s``)."""

    node: str = Field(min_length=1, max_length=63)
    index: int = Field(ge=0, le=63)
    since: float | None = Field(None, ge=0, description="Only readings at or after this time (Unix seconds).")


class SamplePoint(BaseModel):
    time: float = Field(description="When it was taken, or where its span begins (Unix seconds).")
    span_s: float = Field(description="0: one reading; else the means over this many seconds.")
    utilization_pct: float | None
    memory_used_mib: float | None
    temperature_c: float | None
    power_w: float | None


class GpuSamples(BaseModel):
    node: str
    index: int
    uuid: str
    in_use_by: list[str] = Field(description="Processes outside gpuherd on it now (user, command, pid).")
    reason: str | None = Field(description="Why it is drained or unhealthy, where known.")
    samples: list[SamplePoint]


def gpu_samples(ctx: ToolContext, args: GetGpuSamples) -> GpuSamples:
    """``UnknownGpu`` (404) for a GPU not in the inventory."""
    gpu = ctx.core.resources.gpu(args.node, args.index)
    points = ctx.core.observer.gpu_points(_key(gpu), args.since) or []
    return GpuSamples(
        node=gpu.node, index=gpu.index, uuid=gpu.uuid, reason=gpu.reason,
        in_use_by=[describe_process(p) for p in gpu.foreign],
        samples=[SamplePoint(time=p.time, span_s=p.span_s, utilization_pct=p.utilization_pct,
                             memory_used_mib=p.memory_used_mib, temperature_c=p.temperature_c, power_w=p.power_w)
                 for p in points])
