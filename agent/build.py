"""The one builder of the core: store, queue, inventory, executor, orchestrator, rules and policy from settings.

The service, the replays, the chat evals, the benchmarks and the tests all build their core here, so
they run the same wiring; each may replace the clock, the store, the executor or the GPU probe (a
replay: a simulated clock, an in-memory store and the simulated executor). A policy or state given
explicitly in the settings wins over the one saved in the store, and is saved in turn.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from agent.audit import AuditLog
from agent.chat import ChatAgent
from agent.llm import Model, ModelSettings, OpenAIModel
from agent.loop import Bounds
from agent.scheduler import AgentPolicy, Breaker
from agent.settings import AGENT_POLICY, POLICY_NAMES, Settings
from policies.estimates import DEFAULT_PREDICTOR, Predictor
from policies.multifactor import MultifactorPolicy
from policies.ordering import FALLBACK_POLICY, Policy, get_policy
from policies.rules import Rules, Weights
from tools.clock import Clock, RealClock
from tools.door.context import ENABLED_KEY, POLICY_KEY, Core, ToolContext
from tools.door.samples import Observer
from tools.executor import Executor
from tools.inventory import NodeDeclaration, ResourceManager
from tools.nvml import AttributedProbe, GpuProbe, local_probe
from tools.orchestrator import Orchestrator
from tools.queue import JobQueue
from tools.store import SqliteStore, Store
from tools.tmux_executor import TmuxExecutor
from tools.tokens import TokenStore

log = logging.getLogger("gpuherd")


class ModelNotConfigured(RuntimeError):
    """Chat or the agent policy was asked for, but no model endpoint is configured."""


NO_MODEL = (
    "no model endpoint is configured: set OPENAI_BASE_URL (vLLM, Ollama, llama.cpp, ...) or OPENAI_API_KEY, "
    "and HERD_MODEL, then restart the server"
)


def build_rules(settings: Settings) -> Rules:
    return Rules(
        groups={user: group for group, members in settings.groups.items() for user in members},
        user_quota=dict(settings.user_quotas),
        group_quota=dict(settings.group_quotas),
        default_user_quota=settings.default_user_quota,
        default_runtime_s=settings.default_runtime_s,
        backfill_depth=settings.backfill_depth,
        backfill_plans=settings.backfill_plans,
        starve_after_s=settings.starve_after_s,
        preempt_priority_gap=settings.preempt_priority_gap,
        preempt_min_runtime_s=settings.preempt_min_runtime_s,
    )


def build_multifactor(settings: Settings) -> MultifactorPolicy:
    weights = Weights(
        priority=settings.weight_priority, age=settings.weight_age, fair_share=settings.weight_fair_share,
        size=settings.weight_size, age_unit_s=settings.age_unit_s, size_unit_gpu_hours=settings.size_unit_gpu_hours,
    )
    return MultifactorPolicy(weights=weights, default_runtime_s=settings.default_runtime_s)


def build_model(settings: Settings) -> Model | None:
    """The configured OpenAI-compatible endpoint, or None when there is none."""
    if not settings.model_configured:
        return None
    return OpenAIModel(ModelSettings(model=settings.model, base_url=settings.openai_base_url,
                                     api_key=settings.openai_api_key, timeout_s=settings.model_timeout_s))


def build_agent_policy(settings: Settings, model: Model, *, clock: Clock, audit: AuditLog | None = None,
                       fallback: Policy | None = None) -> AgentPolicy:
    """Policy ``agent``: ``model`` proposes, in a thread of its own (``agent_wait_s``), behind a breaker;
    the pure-priority policy (or ``fallback``) fills the rest."""
    return AgentPolicy(
        model, fallback=fallback or get_policy(FALLBACK_POLICY), clock=clock, audit=audit,
        bounds=Bounds(max_turns=4, budget_s=settings.agent_budget_s, max_rejections=3,
                      max_calls_per_reply=settings.agent_max_tool_calls),
        wait_s=settings.agent_wait_s,
        breaker=Breaker(base_s=settings.agent_breaker_base_s, max_s=settings.agent_breaker_max_s),
    )


def build_chat(settings: Settings, model: Model, *, context_for: Callable[[str], ToolContext], audit: AuditLog,
               clock: Clock) -> ChatAgent:
    """The chat agent with the configured caps: tool calls per reply, jobs per message."""
    bounds = Bounds(budget_s=max(15.0, settings.model_timeout_s), max_calls_per_reply=settings.agent_max_tool_calls)
    return ChatAgent(model, context_for=context_for, audit=audit, clock=clock, bounds=bounds,
                     max_submissions=settings.chat_max_submissions)


def build_core(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    executor: Executor | None = None,
    probe: GpuProbe | None = None,
    model: Model | None = None,
    audit: AuditLog | None = None,
    nodes: Sequence[NodeDeclaration] | None = None,
    policy: Policy | None = None,
    rules: Rules | None = None,
    multi_node: bool = False,
    jobs_run_as_owners: bool = False,
    predictor: Predictor | None = DEFAULT_PREDICTOR,
) -> Core:
    """The core for ``settings``. ``nodes`` declares the inventory (else ``settings.gpus`` on this node,
    else what NVML detects); ``policy`` and ``rules`` replace the configured ones (a replay's own
    policy object); ``multi_node`` lets a job larger than any node take whole nodes (replays only:
    the live executors run one node's jobs); ``jobs_run_as_owners`` (a shared server's) runs each job as
    its owner and refuses jobs of users this node does not know. A core with its own database keeps bearer tokens there.
    ``predictor`` estimates the run time of a job queued without an estimate from the history of
    completed jobs (the default: at the settings' ``estimate_quantile``; None: no such estimates, as a
    replay with ``--estimate none`` wants)."""
    clock = clock or RealClock()
    workdir = settings.workdir.resolve()
    if store is None or executor is None:
        workdir.mkdir(parents=True, exist_ok=True)
    tokens = TokenStore(workdir / "herd.db", busy_timeout_s=settings.busy_timeout_s) if store is None else None
    if store is None:
        store = SqliteStore(workdir / "herd.db", busy_timeout_s=settings.busy_timeout_s)
        # Jobs' environments and token hashes are in it: the server's alone (its -wal and -shm files
        # take its mode).
        (workdir / "herd.db").chmod(0o600)
    if executor is None and (settings.ray is not None or settings.ray_local_nodes is not None):
        executor = build_ray_executor(settings, store, jobs_run_as_owners=jobs_run_as_owners)
    nodes_of = getattr(executor, "nodes", None)
    if nodes_of is not None:
        # Many nodes (Ray): the inventory is what the node agents report, and a job larger than a node
        # is a gang over whole nodes.
        resources = ResourceManager(store, None)
        resources.followed = ("the inventory is the Ray cluster's: each node's agent reports its GPUs (detected, or "
                              "declared with --gpus or the node's gpuherd-gpus label); add or remove Ray nodes instead")
        resources.follow(nodes_of(), now=clock.now())
        found = resources.nodes()
        notice = (f"Ray cluster: {sum(len(n.gpus) for n in found)} GPU(s) on {len(found)} node(s) "
                  f"({', '.join(f'{n.name}: {len(n.gpus)} {n.source.value}' for n in found) or 'none yet'}), "
                  "as their node agents report them; nodes that join or leave come and go.")
        multi_node = True
    else:
        if executor is None:
            executor = TmuxExecutor(workdir, socket_name=settings.tmux_socket, run_as_owner=jobs_run_as_owners)
        # tmux alone reaches this machine only: no node but this one may be declared.
        probe = probe if probe is not None else local_probe(settings.node_name)
        groups = getattr(executor, "process_groups", None)
        if groups is not None:  # its jobs' processes on the GPUs are told from anyone else's
            probe = AttributedProbe(probe, groups)
        resources = ResourceManager(store, probe, local_only=isinstance(executor, TmuxExecutor))
        if nodes is None and settings.gpus is not None:
            nodes = [NodeDeclaration(name=settings.node_name, gpus=settings.gpus)]
        notice = resources.initialize(clock.now(), list(nodes) if nodes is not None else None)
    if predictor is DEFAULT_PREDICTOR:
        predictor = Predictor(quantile=settings.estimate_quantile)
    queue = JobQueue(store, max_queued=settings.max_queue_size, usage_half_life_s=settings.usage_half_life_s,
                     estimator=predictor, max_queued_per_user=settings.max_queued_per_user,
                     batch_gap_s=settings.estimate_batch_gap_s)
    multifactor = build_multifactor(settings)

    def make_policy(name: str) -> Policy:
        """A policy by name; ``multifactor`` with the configured weights; ``agent`` wraps the model around
        the pure-priority fallback."""
        if name == multifactor.name:
            return multifactor
        if name != AGENT_POLICY:
            return get_policy(name)  # ValueError naming the choices
        if model is None:
            raise ModelNotConfigured(f"policy agent needs a model: {NO_MODEL}")
        return build_agent_policy(settings, model, clock=clock, audit=audit)

    orchestrator = Orchestrator(
        queue=queue,
        inventory=resources,
        executor=executor,
        clock=clock,
        policy=policy or make_policy(_saved_policy(settings, store, model)),
        grace_s=settings.grace_s,
        enabled=_saved_enabled(settings, store),
        multi_node=multi_node,
        rules=rules or build_rules(settings),
        preempt_grace_s=settings.preempt_grace_s,
    )
    return Core(clock=clock, store=store, queue=queue, resources=resources, executor=orchestrator.executor,
                orchestrator=orchestrator, multifactor=multifactor, make_policy=make_policy,
                policy_names=POLICY_NAMES, inventory_notice=notice, tokens=tokens,
                owners_must_exist=jobs_run_as_owners,
                observer=Observer(full_s=settings.sample_full_s, coarse_s=settings.sample_coarse_s,
                                  keep_s=settings.sample_keep_s))


def build_ray_executor(settings: Settings, store: Store, *, jobs_run_as_owners: bool = False) -> Executor:
    """The executor over a Ray cluster's node agents: the cluster at ``settings.ray``, or a local one of
    ``settings.ray_local_nodes`` nodes started here (and ended with the server)."""
    from tools import ray_executor  # Ray only here: the single-machine path never imports it

    address, cluster = settings.ray, None
    if settings.ray_local_nodes is not None:
        cluster = ray_executor.start_local_cluster(settings.ray_local_nodes, gpus=settings.gpus)
        address = cluster.address

    def allocation_of(job_id: int):
        job = store.get_job(job_id)
        return job.allocation if job is not None else None

    return ray_executor.RayExecutor(
        address, workdir=settings.workdir, tmux_socket=settings.tmux_socket, declared_gpus=settings.gpus,
        run_as_owner=jobs_run_as_owners, grace_s=settings.grace_s, namespace=settings.ray_namespace,
        allocation_of=allocation_of, local_cluster=cluster)


# -- saved choices: an explicit setting wins, else what was saved, else the default --------------------
def _saved_policy(settings: Settings, store: Store, model: Model | None) -> str:
    saved = store.get_setting(POLICY_KEY)
    if POLICY_KEY in settings.explicit or saved is None:
        store.set_setting(POLICY_KEY, settings.policy)
        return settings.policy
    if saved not in POLICY_NAMES or (saved == AGENT_POLICY and model is None):
        log.warning("saved policy %r cannot be used here; using %s", saved, FALLBACK_POLICY)
        return FALLBACK_POLICY
    return saved


def _saved_enabled(settings: Settings, store: Store) -> bool:
    saved = store.get_setting(ENABLED_KEY)
    if ENABLED_KEY in settings.explicit or saved is None:
        store.set_setting(ENABLED_KEY, str(settings.orchestration_enabled).lower())
        return settings.orchestration_enabled
    return saved == "true"
