"""The typed tools the model may call, by their fixed names. Two sets: chat (for a person's
requests, acting as that person) and scheduling (proposals on one snapshot). The read tools on
quotas and reservations serve both; creating a reservation is an administrator's, never the model's."""

from __future__ import annotations

from agent.loop import Tool
from tools import toolkit as tk

GET_QUOTAS = Tool("get_quotas", tk.GetQuotas, tk.get_quotas)
LIST_RESERVATIONS = Tool("list_reservations", tk.ListReservations, tk.list_reservations)

CHAT_TOOLS: tuple[Tool, ...] = (
    Tool("get_cluster_state", tk.GetClusterState, tk.get_cluster_state),
    Tool("list_queue", tk.ListQueue, tk.list_queue),
    Tool("get_job", tk.GetJob, tk.get_job),
    Tool("submit_job", tk.SubmitJob, tk.submit_job),
    Tool("cancel_job", tk.CancelJob, tk.cancel_job),
    Tool("set_priority", tk.SetPriority, tk.set_priority),
    Tool("explain_job", tk.ExplainJob, tk.explain_job),
    GET_QUOTAS,
    LIST_RESERVATIONS,
)

SCHEDULING_TOOLS: tuple[Tool, ...] = (
    Tool("propose_allocation", tk.ProposeAllocation, tk.propose_allocation),
    GET_QUOTAS,
    LIST_RESERVATIONS,
)

ALL_TOOLS: tuple[Tool, ...] = CHAT_TOOLS + tuple(t for t in SCHEDULING_TOOLS if t not in CHAT_TOOLS)
