"""``/orchestrator``: the scheduler's state, starting and stopping it, and its policy."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ServiceDep
from agent.service import Service
from agent.settings import POLICY_NAMES

router = APIRouter(prefix="/orchestrator", tags=["orchestrator"])


class LastTick(BaseModel):
    time: float
    duration_s: float
    started: list[int]
    finished: list[int]
    rejected: int
    waiting: int
    phases_s: dict[str, float]


class OrchestratorStatus(BaseModel):
    state: str = Field(description="running: jobs start; stopped: nothing new starts, running jobs go on.")
    running: bool
    policy: str
    policies: list[str]
    last_tick: LastTick | None
    ticks: int = Field(description="Scheduler passes since this server started.")
    loop_alive: bool
    last_error: str | None = Field(description="The last pass's failure, if the last pass failed.")
    counts: dict[str, int] = Field(description="Jobs by status.")
    queued_gpus: int
    running_gpus: int
    max_queued: int


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(description=" | ".join(POLICY_NAMES))


def describe(service: Service) -> OrchestratorStatus:
    orch = service.orchestrator
    stats = orch.queue.stats(service.clock.now())
    tick = orch.last_tick
    return OrchestratorStatus(
        state="running" if orch.enabled else "stopped",
        running=orch.enabled,
        policy=orch.policy.name,
        policies=list(POLICY_NAMES),
        last_tick=None if tick is None else LastTick(
            time=tick.time, duration_s=tick.duration_s, started=list(tick.started), finished=list(tick.finished),
            rejected=len(tick.rejected), waiting=tick.waiting, phases_s=tick.phases_s,
        ),
        ticks=service.ticks,
        loop_alive=service.loop_alive,
        last_error=service.last_error,
        counts=stats.counts,
        queued_gpus=stats.queued_gpus,
        running_gpus=stats.running_gpus,
        max_queued=stats.max_queued,
    )


@router.get("/status")
def status(service: ServiceDep) -> OrchestratorStatus:
    return describe(service)


@router.post("/start")
def start(service: ServiceDep) -> OrchestratorStatus:
    """Let queued jobs start again."""
    service.set_enabled(True)
    return describe(service)


@router.post("/stop")
def stop(service: ServiceDep) -> OrchestratorStatus:
    """Start no new job; running jobs go on."""
    service.set_enabled(False)
    return describe(service)


@router.put("/policy")
def set_policy(body: PolicyRequest, service: ServiceDep) -> OrchestratorStatus:
    service.set_policy(body.policy)
    return describe(service)
