"""The core for tests, built as the service builds it (``agent.build.build_core``), on a simulated clock,
an in-memory store and the simulated executor unless a test gives its own; and ``SimCluster``, that
core with the LLM agent's audit log and chat around it."""

from __future__ import annotations

from typing import Mapping, Sequence

from agent.audit import AuditLog
from agent.build import build_core
from agent.chat import ChatAgent
from agent.llm import Model
from agent.loop import Bounds
from agent.settings import AGENT_POLICY, Settings
from policies.ordering import Policy, get_policy
from policies.rules import Rules
from tools.clock import Clock, SimClock
from tools.door.context import Actor, Core, ToolContext
from tools.executor import Executor
from tools.inventory import NodeDeclaration
from tools.models import Job, JobSpec
from tools.nvml import GpuProbe, UnavailableProbe
from tools.sim_executor import SimExecutor
from tools.store import MemoryStore, Store


def make_core(
    *,
    nodes: Mapping[str, int] | Sequence[NodeDeclaration] = {"n1": 4},
    policy: str | Policy = "priority",
    rules: Rules | None = None,
    store: Store | None = None,
    executor: Executor | None = None,
    clock: Clock | None = None,
    probe: GpuProbe | None = None,
    model: Model | None = None,
    audit: AuditLog | None = None,
    multi_node: bool = False,
    **settings,
) -> Core:
    """``build_core`` on ``Settings.plain(**settings)`` (no variable or config file is read) and the
    declared ``nodes`` (name -> GPUs); ``policy`` by name (through the settings, as the service
    chooses it) or as an object. Defaults: ``SimClock()``, ``MemoryStore()``, ``SimExecutor()`` and a
    probe that finds no NVML, so the inventory is the declared one."""
    if isinstance(nodes, Mapping):
        nodes = [NodeDeclaration(name=name, gpus=gpus) for name, gpus in nodes.items()]
    if isinstance(policy, str):
        settings["policy"] = policy
        policy = None
    return build_core(
        Settings.plain(**settings),
        clock=clock if clock is not None else SimClock(),
        store=store if store is not None else MemoryStore(),
        executor=executor if executor is not None else SimExecutor(),
        probe=probe if probe is not None else UnavailableProbe("tests declare their nodes"),
        model=model,
        audit=audit,
        nodes=nodes,
        policy=policy,
        rules=rules,
        multi_node=multi_node,
    )


class SimCluster:
    """The real core on a simulated clock: two nodes of four GPUs. With a model, the scheduling policy
    is the LLM agent (as ``policy: agent`` configures it), falling back to pure priority."""

    def __init__(self, model: Model | None = None) -> None:
        self.audit = AuditLog(":memory:")
        self.model = model
        self.core = make_core(
            nodes={"a": 4, "b": 4}, clock=SimClock(1_000_000.0), policy=AGENT_POLICY if model else "priority",
            model=model, audit=self.audit, agent_wait_s=None,  # the model answers inside the pass: deterministic
        )
        self.clock, self.store, self.resources, self.orch = (
            self.core.clock, self.core.store, self.core.resources, self.core.orchestrator)

    def context(self, user: str) -> ToolContext:
        return ToolContext(self.core, Actor(user=user))

    def chat(self, model: Model, bounds: Bounds = Bounds()) -> ChatAgent:
        return ChatAgent(model, context_for=self.context, audit=self.audit, clock=self.clock, bounds=bounds)

    def submit(self, user: str = "ana", gpus: int = 1, prio: int = 5, name: str | None = None) -> Job:
        return self.orch.submit(JobSpec(user=user, command="python train.py", gpu_count=gpus, priority=prio, name=name))

    def job(self, job_id: int) -> Job:
        return self.orch.queue.get(job_id)

    def fallback_events(self) -> list[str]:
        return [e.message for e in self.store.events() if e.kind == "fallback"]


def busy_cluster(model: Model) -> SimCluster:
    """Job 1 runs on a:0-1 (ana), job 2 (2 GPUs) waits, b:3 is drained."""
    c = SimCluster(model)
    c.submit(user="ana", gpus=2)
    c.orch.policy, agent = get_policy("priority"), c.orch.policy
    c.orch.tick()
    c.orch.policy = agent
    c.submit(user="bo", gpus=2)
    c.resources.drain("b", 3, now=c.clock.now())
    return c
