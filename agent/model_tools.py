"""The typed tools the model may call, by their fixed names. Two sets: chat (for a person's
requests, acting as that person) and scheduling (proposals on one snapshot). The read tools on
quotas and reservations serve both; creating a reservation is an administrator's, never the model's.

Chat's ``submit_job`` may be capped per message (``chat_tools(max_submissions=N)``): one message queues
at most N jobs, an array's tasks each counted, so one chat cannot fill the queue the whole team shares.
Its submissions count against the queue's limits (``max_queue_size``, ``max_queued_per_user``) like any
other, through the same door. The schema is the same either way.
"""

from __future__ import annotations

from agent.loop import Tool
from tools.door import cluster, jobs, proposals, rules
from tools.door.context import ToolContext, ToolRefused
from tools.models import JobRequest, parse_array

GET_QUOTAS = Tool("get_quotas", rules.GetQuotas, rules.get_quotas)
LIST_RESERVATIONS = Tool("list_reservations", rules.ListReservations, rules.list_reservations)
SUBMIT_DESCRIPTION = "Queue a job for the acting user. It runs when the scheduler gives it whole GPUs on one node."


def _chat_tools(submit: Tool) -> tuple[Tool, ...]:
    return (
        Tool("get_cluster_state", cluster.GetClusterState, cluster.get_cluster_state),
        Tool("list_queue", jobs.ListQueue, jobs.list_queue),
        Tool("get_job", jobs.GetJob, jobs.get_job),
        submit,
        Tool("cancel_job", jobs.CancelJob, jobs.cancel_job),
        Tool("set_priority", jobs.SetPriority, jobs.set_priority),
        Tool("explain_job", jobs.ExplainJob, jobs.explain_job),
        GET_QUOTAS,
        LIST_RESERVATIONS,
    )


CHAT_TOOLS: tuple[Tool, ...] = _chat_tools(Tool("submit_job", JobRequest, jobs.submit_job, description=SUBMIT_DESCRIPTION))


def tasks_of(request: JobRequest) -> int:
    """How many jobs ``request`` queues: 1, or its array's tasks."""
    if request.array is None:
        return 1
    indices, _ = parse_array(request.array)
    return len(indices)


def counted_submit(limit: int) -> Tool:
    """``submit_job`` for one chat message: it queues at most ``limit`` jobs in all (an array's tasks
    each count), and refuses the call that would pass it, saying so. A new one for each message."""
    queued = 0

    def submit_within(ctx: ToolContext, request: JobRequest) -> jobs.Submitted:
        nonlocal queued
        tasks = tasks_of(request)
        if queued + tasks > limit:
            raise ToolRefused(f"one chat message queues at most {limit} job(s) (an array's tasks each count); "
                              f"{queued} queued already, this would add {tasks}; nothing was queued: tell the user "
                              "to ask again for the rest, or to use herd submit --array")
        submitted = jobs.submit_job(ctx, request)
        queued += tasks
        return submitted

    return Tool("submit_job", JobRequest, submit_within, description=SUBMIT_DESCRIPTION)


def chat_tools(*, max_submissions: int | None = None) -> tuple[Tool, ...]:
    """The chat tools for one message; ``submit_job`` queues at most ``max_submissions`` jobs (None: no cap
    beyond the queue's own limits, which chat submissions count against like any other)."""
    return CHAT_TOOLS if max_submissions is None else _chat_tools(counted_submit(max_submissions))


SCHEDULING_TOOLS: tuple[Tool, ...] = (
    Tool("propose_allocation", proposals.ProposeAllocation, proposals.propose_allocation),
    GET_QUOTAS,
    LIST_RESERVATIONS,
)

ALL_TOOLS: tuple[Tool, ...] = CHAT_TOOLS + tuple(t for t in SCHEDULING_TOOLS if t not in CHAT_TOOLS)
