"""The typed tools the model may call, by their fixed names. Two sets: chat (for a person's
requests, acting as that person) and scheduling (proposals on one snapshot). The read tools on
quotas and reservations serve both; creating a reservation is an administrator's, never the model's."""

from __future__ import annotations

from agent.loop import Tool
from tools.door import cluster, jobs, proposals, rules
from tools.models import JobRequest

GET_QUOTAS = Tool("get_quotas", rules.GetQuotas, rules.get_quotas)
LIST_RESERVATIONS = Tool("list_reservations", rules.ListReservations, rules.list_reservations)

CHAT_TOOLS: tuple[Tool, ...] = (
    Tool("get_cluster_state", cluster.GetClusterState, cluster.get_cluster_state),
    Tool("list_queue", jobs.ListQueue, jobs.list_queue),
    Tool("get_job", jobs.GetJob, jobs.get_job),
    Tool("submit_job", JobRequest, jobs.submit_job, description=(
        "Queue a job for the acting user. It runs when the scheduler gives it whole GPUs on one node.")),
    Tool("cancel_job", jobs.CancelJob, jobs.cancel_job),
    Tool("set_priority", jobs.SetPriority, jobs.set_priority),
    Tool("explain_job", jobs.ExplainJob, jobs.explain_job),
    GET_QUOTAS,
    LIST_RESERVATIONS,
)

SCHEDULING_TOOLS: tuple[Tool, ...] = (
    Tool("propose_allocation", proposals.ProposeAllocation, proposals.propose_allocation),
    GET_QUOTAS,
    LIST_RESERVATIONS,
)

ALL_TOOLS: tuple[Tool, ...] = CHAT_TOOLS + tuple(t for t in SCHEDULING_TOOLS if t not in CHAT_TOOLS)
