"""``/orchestrator``: the scheduler's state, starting and stopping it, and its policy."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from agent.api.deps import ServiceDep, ToolsDep
from agent.scheduler import AgentPolicy, AgentStatus
from tools.door import cluster

router = APIRouter(prefix="/orchestrator", tags=["orchestrator"])


class OrchestratorStatus(cluster.SchedulerState):
    ticks: int = Field(description="Scheduler passes since this server started.")
    loop_alive: bool
    last_error: str | None = Field(description="The last pass's failure, if the last pass failed.")
    mode: str = Field(description="shared, personal or single-user: who may act, and as whom jobs run.")
    identity: str = Field(description="The mode in a sentence.")
    agent: AgentStatus | None = Field(None, description="Policy agent only: the model's breaker, the consultation "
                                      "under way, and the fallbacks (each also a fallback event).")


def describe(state: cluster.SchedulerState, service: ServiceDep) -> OrchestratorStatus:
    policy = service.orchestrator.policy
    agent = policy.status() if isinstance(policy, AgentPolicy) else None
    return OrchestratorStatus(**state.model_dump(), ticks=service.ticks, loop_alive=service.loop_alive,
                              last_error=service.last_error, mode=service.identities.mode.value,
                              identity=service.identities.describe(), agent=agent)


@router.get("/status")
def status(tools: ToolsDep, service: ServiceDep) -> OrchestratorStatus:
    return describe(cluster.scheduler_state(tools), service)


@router.post("/start")
def start(tools: ToolsDep, service: ServiceDep) -> OrchestratorStatus:
    """Let queued jobs start again."""
    return describe(cluster.set_scheduling(tools, cluster.SetScheduling(enabled=True)), service)


@router.post("/stop")
def stop(tools: ToolsDep, service: ServiceDep) -> OrchestratorStatus:
    """Start no new job; running jobs go on."""
    return describe(cluster.set_scheduling(tools, cluster.SetScheduling(enabled=False)), service)


@router.put("/policy")
def set_policy(body: cluster.SetPolicy, tools: ToolsDep, service: ServiceDep) -> OrchestratorStatus:
    return describe(cluster.set_policy(tools, body), service)
