"""The typed tool of accounting: who used how many GPU-hours, how well, how long jobs waited, how many failed.

Like Slurm's ``sreport``, a report covers a window that ends now: the jobs that ended in it (their whole
run, every attempt counted) and the jobs running now (their use so far), grouped by user, group or node.
"""

from __future__ import annotations

from itertools import chain, islice
from typing import Literal

from pydantic import BaseModel, Field

from tools.door.context import Args, ToolContext
from tools.door.jobs import when
from tools.models import EndReason, Job, JobStatus, JobUsage
from tools.timespec import parse_duration

By = Literal["user", "group", "node"]
NONE = "-"  # the key of jobs without a group, or that never ran on a node


class Report(Args):
    """GPU use per user, group or node since a time: jobs ended, GPU-hours, mean wait, failures, time-outs."""

    since: str | float = Field("7d", description="The window's start: a duration back from now ('7d', '12h'), a "
                               "time ('2026-11-01', '2026-11-01 08:00') or Unix seconds.")
    by: By = Field("user", description="Group the jobs by user, group or node.")


class ReportRow(BaseModel):
    key: str = Field(description="The user, group or node; '-' for jobs without a group, or that never ran.")
    jobs: int = Field(description="Jobs that ended in the window.")
    completed: int
    failed: int = Field(description="Ended with a non-zero exit code (or could not start), time-outs not counted.")
    timeout: int = Field(description="Stopped at their time limit (Slurm's TIMEOUT).")
    cancelled: int
    running: int = Field(description="Jobs running now.")
    waiting: int = Field(description="Jobs waiting now.")
    gpu_hours: float = Field(description="GPU-hours of the jobs that ended in the window (all their attempts) and "
                             "of the active jobs so far.")
    mean_wait_s: float | None = Field(description="Mean time from submission to first start of the jobs that "
                                      "ended in the window and ever started; null if none did.")
    mean_utilization_pct: float | None = Field(None, description="GPU utilization of these jobs over their runs, "
                                               "each job weighted by its GPU-hours; null where none was measured.")
    peak_memory_mib: int | None = Field(None, description="The most GPU memory one of these jobs used at once.")


class UsageReport(BaseModel):
    since: float = Field(description="The window's start (Unix seconds); it ends now.")
    until: float
    by: By
    rows: list[ReportRow] = Field(description="Most GPU-hours first.")
    total: ReportRow


class _Tally:
    def __init__(self, key: str) -> None:
        self.key = key
        self.counts = {"jobs": 0, "completed": 0, "failed": 0, "timeout": 0, "cancelled": 0, "running": 0, "waiting": 0}
        self.gpu_s = 0.0
        self.waits: list[float] = []
        self.measured_gpu_s = 0.0  # GPU-seconds of the jobs whose utilization was sampled
        self.utilization_gpu_s = 0.0  # their mean utilization times their GPU-seconds
        self.peak_memory_mib: int | None = None

    def add(self, job: Job, now: float, usage: JobUsage | None) -> None:
        gpu_s = job.gpu_seconds(now)  # a waiting job's earlier attempts too
        self.gpu_s += gpu_s
        if usage is not None and usage.utilization_mean_pct is not None:
            self.measured_gpu_s += gpu_s
            self.utilization_gpu_s += usage.utilization_mean_pct * gpu_s
            self.peak_memory_mib = max(self.peak_memory_mib or 0, usage.memory_peak_mib)
        if job.status == JobStatus.QUEUED:
            self.counts["waiting"] += 1
            return
        if job.status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
            self.counts["running"] += 1
            return
        self.counts["jobs"] += 1
        reason = job.end_reason or _reason_of(job.status)
        self.counts[reason.value] += 1
        if job.first_start_time is not None or job.start_time is not None:
            self.waits.append(max(0.0, (job.first_start_time or job.start_time) - job.submit_time))

    def row(self) -> ReportRow:
        wait = sum(self.waits) / len(self.waits) if self.waits else None
        utilization = round(self.utilization_gpu_s / self.measured_gpu_s, 1) if self.measured_gpu_s else None
        return ReportRow(key=self.key, gpu_hours=round(self.gpu_s / 3600, 3), mean_wait_s=wait,
                         mean_utilization_pct=utilization, peak_memory_mib=self.peak_memory_mib, **self.counts)


def _reason_of(status: JobStatus) -> EndReason:
    return {JobStatus.COMPLETED: EndReason.COMPLETED, JobStatus.CANCELLED: EndReason.CANCELLED}.get(status, EndReason.FAILED)


def window_start(value: str | float, now: float) -> float:
    """``7d`` (a duration back from now) or a time as ``jobs.when`` reads it."""
    if isinstance(value, str):
        try:
            return now - parse_duration(value, bare=False)
        except ValueError:
            pass
    start = when("since", value, now)
    if start > now:
        raise ValueError(f"since: {value!r} is in the future; a report covers a window that ends now")
    return start


def usage_report(ctx: ToolContext, args: Report) -> UsageReport:
    """Open to everyone, like the queue: how the GPUs were shared is the lab's to see."""
    now = ctx.core.clock.now()
    since = window_start(args.since, now)
    rules = ctx.orchestrator.rules
    tallies: dict[str, _Tally] = {}
    total = _Tally("total")
    jobs = chain(ctx.core.store.ended_since(since), ctx.core.queue.active())
    while chunk := list(islice(jobs, 1000)):  # a chunk at a time: a long history is never all in memory
        usage = ctx.core.store.job_usage(j.id for j in chunk)
        for job in chunk:
            if args.by == "user":
                key = job.user
            elif args.by == "group":
                key = rules.group_of(job.user) or NONE
            else:
                key = job.allocation.node if job.allocation is not None else NONE
            tallies.setdefault(key, _Tally(key)).add(job, now, usage.get(job.id))
            total.add(job, now, usage.get(job.id))
    rows = sorted((t.row() for t in tallies.values()), key=lambda r: (-r.gpu_hours, r.key))
    return UsageReport(since=since, until=now, by=args.by, rows=rows, total=total.row())
