"""``/jobs``: one job's record, events and log; finishing a job by hand; listing jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ServiceDep, ToolsDep
from agent.service import read_log
from tools import toolkit
from tools.models import Event, Job, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exit_code: int | None = Field(None, description="The exit code to record; 0 (completed) if not given.")


class JobLog(BaseModel):
    job_id: int
    status: JobStatus
    path: str | None
    text: str
    next_offset: int = Field(description="Pass as offset to get only what was written after this.")
    size: int


@router.get("")
def list_jobs(
    service: ServiceDep,
    status: Annotated[list[str] | None, Query(description="Only these statuses (repeat or comma-separate).")] = None,
    user: str | None = None,
    limit: Annotated[int | None, Query(ge=1, description="Only the newest this many.")] = None,
) -> list[Job]:
    statuses = None
    if status:
        names = [s.strip() for item in status for s in item.split(",") if s.strip()]
        unknown = [n for n in names if n not in {s.value for s in JobStatus}]
        if unknown:
            raise ValueError(f"unknown status {', '.join(unknown)}; choose from {', '.join(JobStatus)}")
        statuses = [JobStatus(n) for n in names]
    jobs = service.store.list_jobs(statuses=statuses, user=user)
    return jobs[-limit:] if limit else jobs


@router.get("/{job_id}")
def get_job(job_id: int, tools: ToolsDep) -> toolkit.JobDetail:
    """The whole record: status, allocation, exit code, attempts, times, pending reason; for a waiting
    job also its position and estimated start."""
    return toolkit.get_job(tools, toolkit.GetJob(job_id=job_id))


@router.get("/{job_id}/explain")
def explain_job(job_id: int, tools: ToolsDep) -> toolkit.Explanation:
    """Why a job waits, like Slurm's sprio: its priority factors and total, pending reason, position,
    estimated start, and the quota of its user and group. Other jobs: their status."""
    return toolkit.explain_job(tools, toolkit.ExplainJob(job_id=job_id))


@router.get("/{job_id}/events")
def job_events(job_id: int, service: ServiceDep) -> list[Event]:
    """Everything that happened to the job, oldest first."""
    service.queue.get(job_id)  # 404 for an unknown job
    return service.store.events(job_id=job_id)


@router.get("/{job_id}/logs")
def job_logs(
    job_id: int,
    service: ServiceDep,
    tail: Annotated[int | None, Query(ge=0, description="Only the last this many lines.")] = None,
    offset: Annotated[int | None, Query(ge=0, description="Only the bytes from here on (to follow a log).")] = None,
) -> JobLog:
    """The job's stdout and stderr. Empty until it has started."""
    job = service.queue.get(job_id)
    chunk = read_log(Path(job.log_path), tail=tail, offset=offset) if job.log_path else None
    return JobLog(
        job_id=job.id, status=job.status, path=job.log_path, text=chunk.text if chunk else "",
        next_offset=chunk.next_offset if chunk else (offset or 0), size=chunk.size if chunk else 0,
    )


@router.post("/{job_id}/complete")
def complete(job_id: int, service: ServiceDep, body: CompleteRequest | None = None) -> Job:
    """Mark a running job finished by hand: its process is stopped and its GPUs are freed."""
    exit_code = body.exit_code if body is not None and body.exit_code is not None else 0
    job = service.orchestrator.complete(job_id, exit_code)
    service.wake()
    return job
