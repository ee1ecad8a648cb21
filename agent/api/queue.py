"""``/queue``: submit, list, cancel and reprioritise jobs (the seed's contract)."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ServiceDep, ToolsDep
from tools import toolkit
from tools.models import Job

router = APIRouter(prefix="/queue", tags=["queue"])


class SubmitRequest(BaseModel):
    """The seed's submission body. Ranges are checked once, by the core's ``JobSpec``."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(None, description="A label for the job, shown as its name.")
    user: str = Field(description="Who owns the job.")
    command: str = Field(description="Shell command, run with bash in the job's cwd.")
    gpu_count: int = Field(description="Whole GPUs, all on one node.")
    priority: int | None = Field(None, description="1 (lowest) to 10 (highest); 5 if not given.")
    cwd: str | None = Field(None, description="Absolute working directory on the server; its work directory if not given.")
    env: dict[str, str] | None = Field(None, description="Extra environment variables.")
    est_duration_s: float | None = Field(None, description="The user's estimate of the run time, in seconds.")
    time_limit_s: float | None = Field(None, description="Stop the job after this many seconds of running.")
    max_retries: int | None = Field(None, description="Retries after a failed attempt; 1 if not given.")
    begin_at: str | float | None = Field(
        None, description="Not before: '22:00' (next occurrence), '2026-11-30 22:00', '+3h', 'now', or Unix seconds."
    )
    after: list[int] | None = Field(None, description="Start only after these jobs completed (exit code 0).")
    after_any: list[int] | None = Field(None, description="Start only after these jobs ended, however they ended.")
    preemptible: bool | None = Field(None, description="May be stopped and requeued for a job of higher priority.")


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(description="The new priority, 1 (lowest) to 10 (highest).")


@router.post("/submit", status_code=status.HTTP_201_CREATED)
def submit(body: SubmitRequest, service: ServiceDep) -> toolkit.Submitted:
    """Queue a job; 201 with its id and position in the scheduling order."""
    service.check_cwd(body.cwd)
    args = toolkit.SubmitJob(
        name=body.run_id,
        command=body.command,
        gpu_count=body.gpu_count,
        priority=body.priority,
        est_duration_s=body.est_duration_s,
        time_limit_s=body.time_limit_s,
        cwd=body.cwd,
        env=[toolkit.EnvVar(name=k, value=v) for k, v in body.env.items()] if body.env else None,
        max_retries=body.max_retries,
        begin_at=body.begin_at,
        after=body.after,
        after_any=body.after_any,
        preemptible=body.preemptible,
    )
    submitted = toolkit.submit_job(service.tools(actor=body.user), args)
    service.wake()
    return submitted


@router.get("")
def list_queue(tools: ToolsDep, user: str | None = None) -> toolkit.QueueView:
    """Running jobs, then waiting jobs in scheduling order, each with its pending reason and estimated
    start; plus stats."""
    return toolkit.list_queue(tools, toolkit.ListQueue(user=user))


@router.delete("/{job_id}")
def cancel(job_id: int, service: ServiceDep) -> Job:
    """Cancel a queued job, or stop a running one (SIGTERM, grace, SIGKILL) and free its GPUs."""
    job = toolkit.cancel_job(service.tools(), toolkit.CancelJob(job_id=job_id))
    service.wake()
    return job


@router.patch("/{job_id}/priority")
def set_priority(job_id: int, body: PriorityRequest, service: ServiceDep) -> Job:
    """Change a queued job's priority."""
    job = toolkit.set_priority(service.tools(), toolkit.SetPriority(job_id=job_id, priority=body.priority))
    service.wake()
    return job
