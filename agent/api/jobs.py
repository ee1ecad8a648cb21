"""``/jobs``: one job's record, events and log; finishing a job by hand; listing jobs."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ToolsDep
from agent.api.queue import JobIdPath
from tools.door import accounting, jobs
from tools.logs import MAX_LOG_CHUNK
from tools.models import HOLDS_GPUS, MAX_GPUS_PER_JOB, MAX_ID, EndReason, Event, Job, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_LOG_WAIT_S = 60.0
LOG_LOOK_S = 0.25  # how often a waiting request looks at the log again (on the server, not over the network)


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1, strict=True,
                                  description="The exit code to record; 0 (completed) if not given.")


@router.get("")
def list_jobs(
    tools: ToolsDep,
    status: Annotated[list[Annotated[str, Query(max_length=100)]] | None, Query(
        max_length=20, description="Only these statuses (repeat or comma-separate).")] = None,
    user: Annotated[str | None, Query(max_length=64, description="Only this user's jobs.")] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE, description="At most this many, the newest.")] = jobs.JOBS_PAGE,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID, description="The next of the page before: only jobs "
                                        "older than this one.")] = None,
    name: Annotated[str | None, Query(max_length=200, description="Only jobs of this name.")] = None,
    array: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only the tasks of this array.")] = None,
    end_reason: Annotated[EndReason | None, Query(description="Only jobs that ended so; timeout: stopped at "
                                                  "their time limit.")] = None,
    mine: Annotated[bool, Query(description="Only the caller's jobs.")] = False,
) -> jobs.JobPage:
    """Jobs of any status, finished ones too, newest first, a page at a time: ``next``, when not null,
    is the cursor of the next (older) page. ``status=timeout`` is ``status=failed&end_reason=timeout``."""
    statuses = None
    if status:
        names = [s.strip() for item in status for s in item.split(",") if s.strip()]
        if "timeout" in names:
            if len(set(names)) > 1 or end_reason not in (None, EndReason.TIMEOUT):
                raise ValueError("status: timeout is failed at the time limit; ask for it alone")
            names, end_reason = [JobStatus.FAILED.value], EndReason.TIMEOUT
        unknown = [n for n in names if n not in {s.value for s in JobStatus}]
        if unknown:
            raise ValueError(f"unknown status {', '.join(unknown)}; choose from {', '.join(JobStatus)} or timeout")
        statuses = [JobStatus(n) for n in names]
    return jobs.list_jobs(tools, jobs.ListJobs(statuses=statuses, user=user, limit=limit, cursor=cursor, name=name,
                                               array_id=array, end_reason=end_reason, mine=mine))


@router.get("/report")
def report(
    tools: ToolsDep,
    since: Annotated[str, Query(max_length=100, description="The window's start: 7d (back from now), a time "
                                "(2026-11-01) or Unix seconds.")] = "7d",
    by: Annotated[accounting.By, Query(description="user, group or node.")] = "user",
) -> accounting.UsageReport:
    """Accounting, like sreport: per user, group or node, the jobs that ended since ``since`` (completed, failed,
    timeout, cancelled), their GPU-hours (with the running jobs' use so far) and mean wait; the jobs running and
    waiting now."""
    value: str | float = since
    try:
        value = float(since)
    except ValueError:
        pass
    return accounting.usage_report(tools, accounting.Report(since=value, by=by))


@router.get("/{job_id}")
def get_job(job_id: JobIdPath, tools: ToolsDep) -> jobs.JobDetail:
    """The whole record: status, allocation, exit code, attempts, times, pending reason; for a waiting
    job also its position and estimated start."""
    return jobs.get_job(tools, jobs.GetJob(job_id=job_id))


@router.get("/{job_id}/explain")
def explain_job(job_id: JobIdPath, tools: ToolsDep) -> jobs.Explanation:
    """Why a job waits, like Slurm's sprio: its priority factors and total, pending reason, position,
    estimated start, and the quota of its user and group. Other jobs: their status."""
    return jobs.explain_job(tools, jobs.ExplainJob(job_id=job_id))


@router.get("/{job_id}/window")
def job_window(job_id: JobIdPath, tools: ToolsDep) -> jobs.JobWindow:
    """Where a running job's tmux window is (its socket, session and window), for its owner or an administrator:
    ``herd attach`` runs ``tmux -S SOCKET attach -r`` there, on the job's node. 409 when it does not run."""
    return jobs.job_window(tools, jobs.GetJob(job_id=job_id))


@router.get("/{job_id}/events")
def job_events(job_id: JobIdPath, tools: ToolsDep) -> list[Event]:
    """Everything that happened to the job, oldest first."""
    return jobs.job_events(tools, jobs.JobEvents(job_id=job_id))


@router.get("/{job_id}/logs")
async def job_logs(
    job_id: JobIdPath,
    tools: ToolsDep,
    tail: Annotated[int | None, Query(ge=0, le=jobs.MAX_LOG_LINES, description="Only the last this many lines.")] = None,
    offset: Annotated[int | None, Query(ge=0, le=jobs.MAX_OFFSET,
                                        description="Only the bytes from here on (to follow a log).")] = None,
    length: Annotated[int | None, Query(ge=1, le=MAX_LOG_CHUNK, description="At most this many bytes (1 MiB "
                                        "if not given): with offset, a page of the log.")] = None,
    wait: Annotated[float, Query(ge=0, le=MAX_LOG_WAIT_S, description="Seconds to wait for something new when "
                                 "there is nothing to send yet and the job runs (to follow a log).")] = 0,
    rank: Annotated[int | None, Query(ge=0, le=MAX_GPUS_PER_JOB, description="A gang job's part: only its log "
                                      "(without it: every part's, or rank 0's with offset).")] = None,
) -> jobs.JobLog:
    """The job's stdout and stderr, at most 1 MiB at a time: ``offset`` and ``next_offset`` say which part of
    its ``size`` bytes ``text`` is; without ``offset`` or ``tail``, the last MiB from its first whole line.
    Empty until it has started. With ``wait``, a follower's request on a running job is answered as soon as
    the job writes or ends, instead of polling; a job that does not run (yet) is answered at once."""
    args = jobs.JobLogs(job_id=job_id, tail=tail, offset=offset, length=length, rank=rank)
    deadline = anyio.current_time() + wait
    while True:
        log = await anyio.to_thread.run_sync(jobs.job_logs, tools, args)
        if log.text or log.status not in HOLDS_GPUS or anyio.current_time() >= deadline:
            return log
        await anyio.sleep(min(LOG_LOOK_S, max(0.0, deadline - anyio.current_time())))


@router.post("/{job_id}/complete")
def complete(job_id: JobIdPath, tools: ToolsDep, body: CompleteRequest | None = None) -> Job:
    """Mark a running job finished by hand: its process is stopped and its GPUs are freed."""
    exit_code = body.exit_code if body is not None and body.exit_code is not None else 0
    return jobs.complete_job(tools, jobs.CompleteJob(job_id=job_id, exit_code=exit_code))
