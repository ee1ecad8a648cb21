"""``/queue``: submit, list, cancel and reprioritise jobs (the seed's contract)."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ToolsDep
from tools.door import jobs
from tools.models import Job, JobRequest, UserName

router = APIRouter(prefix="/queue", tags=["queue"])


class SubmitBody(JobRequest):
    """The seed's submission body: what the job asks for (``run_id`` for its name), and whose it is."""

    user: UserName = Field(description="Who owns the job.")


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(description="The new priority, 1 (lowest) to 10 (highest).")


@router.post("/submit", status_code=status.HTTP_201_CREATED)
def submit(body: SubmitBody, tools: ToolsDep) -> jobs.Submitted:
    """Queue a job; 201 with its id and position in the scheduling order."""
    return jobs.submit_job(tools, body, user=body.user)


@router.get("")
def list_queue(tools: ToolsDep, user: str | None = None) -> jobs.QueueView:
    """Running jobs, then waiting jobs in scheduling order, each with its pending reason and estimated
    start; plus stats."""
    return jobs.list_queue(tools, jobs.ListQueue(user=user))


@router.delete("/{job_id}")
def cancel(job_id: int, tools: ToolsDep) -> Job:
    """Cancel a queued job, or stop a running one (SIGTERM, grace, SIGKILL) and free its GPUs."""
    return jobs.cancel_job(tools, jobs.CancelJob(job_id=job_id))


@router.patch("/{job_id}/priority")
def set_priority(job_id: int, body: PriorityRequest, tools: ToolsDep) -> Job:
    """Change a queued job's priority."""
    return jobs.set_priority(tools, jobs.SetPriority(job_id=job_id, priority=body.priority))
