"""The cluster a chat scenario starts from: the real core, built as the service builds it.

Each scenario runs on the real core (SimClock at the scenario's ``now``, MemoryStore, declared
ResourceManager, SimExecutor, Orchestrator), through ``ChatAgent``, the typed chat tools and the
permission checks: exactly what a chat request in the service goes through.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.audit import AuditLog
from agent.build import build_core
from agent.chat import ChatAgent
from agent.llm import Model
from agent.loop import Bounds
from agent.settings import Settings
from evals.scenario_files import DEFAULT_NOW, ClusterSpec, ScenarioError, local_instant
from tools.clock import SimClock
from tools.door.context import Actor, Core, ToolContext
from tools.door.jobs import queue_job
from tools.inventory import NodeDeclaration
from tools.models import JobRequest
from tools.nvml import UnavailableProbe
from tools.sim_executor import SimExecutor
from tools.store import MemoryStore


@dataclass
class ScenarioCore:
    """The real core on a simulated clock, built as the service builds it, with the chat agent on top."""

    core: Core

    @property
    def clock(self) -> SimClock:
        return self.core.clock

    @property
    def store(self) -> MemoryStore:
        return self.core.store

    @classmethod
    def build(cls, spec: ClusterSpec, scenario: str, now: float | None = None) -> "ScenarioCore":
        """The cluster as it is at ``now`` (default: ``DEFAULT_NOW``), when the messages arrive; the
        jobs already there were submitted a minute before."""
        now = local_instant(DEFAULT_NOW) if now is None else now
        core = build_core(Settings.plain(policy="priority"), clock=SimClock(now - 60), store=MemoryStore(),
                          executor=SimExecutor(), probe=UnavailableProbe("a scenario declares its nodes"),
                          nodes=[NodeDeclaration(name=n.name, gpus=n.gpus, model=n.model) for n in spec.nodes])
        clock, operator = core.clock, ToolContext(core)
        for node in spec.nodes:
            for index in node.drained:
                core.resources.drain(node.name, index, now=clock.now(), reason="scenario")
        for status in ("running", "queued"):
            for job in (j for j in spec.jobs if j.status == status):
                queue_job(operator, JobRequest(name=job.name, command=job.command, gpu_count=job.gpus,
                                               priority=job.priority), user=job.user)
            core.orchestrator.tick()  # the running ones start; the queued ones get their pending reasons
        got = [j.status.value for j in core.store.list_jobs()]
        want = [j.status for j in spec.jobs]
        if got != want:
            raise ScenarioError(f"scenario {scenario}: cluster.jobs: declared {want}, but the scheduler made "
                                f"them {got}; a queued job must not fit on the free GPUs")
        clock.advance(60)  # the request comes a minute later
        return cls(core)

    def agent(self, model: Model, bounds: Bounds) -> ChatAgent:
        return ChatAgent(model, context_for=lambda user: ToolContext(self.core, Actor(user=user)),
                         audit=AuditLog(":memory:"), clock=self.clock, bounds=bounds)
