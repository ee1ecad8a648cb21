"""``/queue``: submit, list, cancel and reprioritise jobs (the seed's contract)."""

from __future__ import annotations

import json
import re
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.api.deps import ToolsDep, get_tools
from tools.door import jobs
from tools.models import MAX_ID, Job, JobRequest, UserName

# A job's id in a path: within SQLite's 64-bit range, so a larger one is a 422 naming it, not a 500.
JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]

router = APIRouter(prefix="/queue", tags=["queue"])


class SubmitBody(JobRequest):
    """The seed's submission body: what the job asks for (``run_id`` for its name), and whose it is."""

    user: UserName | None = Field(None, description="Who owns the job: the caller if not given; another user "
                                  "only when an administrator submits (on a personal server, a label).")


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=1, le=10, strict=True, description="The new priority, 1 (lowest) to 10 (highest).")


IDEMPOTENCY_KEY = r"^[\x20-\x7e]+$"


async def submit(
    request: Request,
    body: SubmitBody,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY,
        description="Any unique text (a UUID): a retry with the same key, by the same user, gets the first try's "
        "job (201, same id) instead of a second job; the same key with another body is a 422.")] = None,
) -> Response:
    """Queue a job; 201 with its id and position in the scheduling order, once it is on disk."""
    return await _submitted(request, body, idempotency_key)


async def _submitted(request: Request, body: SubmitBody, idempotency_key: str | None) -> Response:
    # One hop to a worker thread for all of it (who asks, the checks, the wait for the disk) instead of
    # FastAPI's two (the dependency's and the view's), and the answer serialised once, as built.
    submitted = await anyio.to_thread.run_sync(_submit, request, body, idempotency_key)
    return Response(submitted.model_dump_json(), status_code=status.HTTP_201_CREATED, media_type="application/json",
                    headers={"Idempotent-Replayed": "true"} if submitted.replayed else None)


def _submit(request: Request, body: SubmitBody, idempotency_key: str | None) -> jobs.Submitted:
    return jobs.submit_job(get_tools(request), body, user=body.user, idempotency_key=idempotency_key)


_SUBMIT_BODY = TypeAdapter(SubmitBody)
_KEY = re.compile(IDEMPOTENCY_KEY)


class SubmitRoute(APIRoute):
    """``POST /queue/submit``, the route people and scripts call most: a JSON body and a valid key go
    straight to the view, without FastAPI's resolution of parameters (a sixth of the event loop's time
    under 50 clients submitting); anything else (another content type, a body or key that does not validate) takes
    FastAPI's way, so that every refusal is the 422 naming the field that every route answers."""

    def get_route_handler(self):
        by_fastapi = super().get_route_handler()

        async def handler(request: Request) -> Response:
            key = request.headers.get("idempotency-key")
            if request.headers.get("content-type") == "application/json" and (
                    key is None or (len(key) <= 255 and _KEY.fullmatch(key))):
                try:  # parsed and validated as FastAPI does (from Python values, not in pydantic's JSON mode)
                    body = _SUBMIT_BODY.validate_python(json.loads(await request.body()), from_attributes=True)
                except (ValueError, ValidationError):  # JSONDecodeError is a ValueError
                    pass
                else:
                    return await _submitted(request, body, key)
            return await by_fastapi(request)  # the body read above is kept by the request

        return handler


router.add_api_route("/submit", submit, methods=["POST"], status_code=status.HTTP_201_CREATED,
                     response_model=jobs.Submitted, route_class_override=SubmitRoute)


@router.post("/cancel")
def cancel_many(body: jobs.CancelJobs, tools: ToolsDep) -> jobs.Cancelled:
    """Cancel many jobs at once, like scancel: ``{"jobs": ["9", "10", "12_3"]}`` (an array's id stands for all its
    tasks, ``12_3`` for one), and/or every active job matching ``user``, ``name`` and ``states``. A named job that
    cannot be cancelled is in ``refused``, with why; the others are cancelled."""
    return jobs.cancel_jobs(tools, body)


@router.get("", response_model=jobs.QueueView)
def list_queue(
    tools: ToolsDep,
    user: Annotated[str | None, Query(max_length=64, description="Only this user's jobs.")] = None,
    mine: Annotated[bool, Query(description="Only the caller's jobs.")] = False,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE, description="At most this many jobs.")] = jobs.QUEUE_PAGE,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID, description="The next of the page before: the jobs "
                                        "after this one.")] = None,
) -> Response:
    """Running jobs, then waiting jobs in scheduling order, each with its pending reason and estimated
    start; plus stats. A page at a time: ``next``, when not null, is the cursor of the next page."""
    view = jobs.page_of_queue(tools, jobs.ListQueue(user=user, mine=mine), limit=limit, cursor=cursor)
    # Serialised once, as built: FastAPI would validate the page's models again before writing them,
    # which cost as much as building the page.
    return Response(view.model_dump_json(), media_type="application/json")


@router.delete("/{job_id}")
def cancel(job_id: JobIdPath, tools: ToolsDep) -> Job:
    """Cancel a queued job, or stop a running one (SIGTERM, grace, SIGKILL) and free its GPUs."""
    return jobs.cancel_job(tools, jobs.CancelJob(job_id=job_id))


@router.patch("/{job_id}/priority")
def set_priority(job_id: JobIdPath, body: PriorityRequest, tools: ToolsDep) -> Job:
    """Change a queued job's priority."""
    return jobs.set_priority(tools, jobs.SetPriority(job_id=job_id, priority=body.priority))
