"""The running service: the core wired together, plus the background loop that ticks it.

``Service`` builds the store, the GPU inventory, the queue, the tmux executor and the orchestrator,
reconciles with what really runs, and then ticks in a thread of its own. The REST app creates one in
its lifespan and stops it on shutdown; nothing here is a module global.

The tick loop wakes when a job may have ended (``executor.wait``), when a request changed the queue
(``wake``), and at least every ``tick_interval_s``. It never dies of an exception: it logs it, keeps it
for ``/orchestrator/status`` and goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.audit import AuditLog
from agent.chat import ChatAgent
from agent.llm import Model, ModelSettings, OpenAIModel
from agent.loop import Bounds
from agent.scheduler import AgentPolicy
from agent.settings import AGENT_POLICY, POLICY_NAMES, Settings
from policies.multifactor import MultifactorPolicy
from policies.ordering import FALLBACK_POLICY, Policy, get_policy
from policies.rules import Rules, Weights
from tools.clock import Clock, RealClock
from tools.executor import Executor
from tools.gpus import GpuProbe, NodeDeclaration, NvmlProbe, ProbeUnavailable, ResourceManager
from tools.models import HOLDS_GPUS, GpuMetrics, Gpu, InventorySource
from tools.orchestrator import Orchestrator
from tools.queue import JobQueue
from tools.store import SqliteStore
from tools.tmux_executor import TmuxExecutor
from tools.toolkit import ToolContext

log = logging.getLogger("gpuherd")

# Keys in the store's settings table.
POLICY_KEY = "policy"
ENABLED_KEY = "orchestration_enabled"

# Passes start at least this far apart. A pass after a quiet spell starts at once (a job submitted to
# an idle cluster starts without delay); under a stream of submissions one pass serves many of them
# instead of one pass per request competing with the requests for the CPU.
MIN_PASS_GAP_S = 0.01
# An executor whose wait() returns at once (the simulator) must not make its watcher spin.
MIN_WAIT_GAP_S = 0.02
# A tick that keeps failing is retried, but not in a tight loop that floods the log.
ERROR_BACKOFF_S = 1.0
# One read of a log returns at most this much; a follower asks again.
MAX_LOG_CHUNK = 1 << 20


class ModelNotConfigured(RuntimeError):
    """Chat or the agent policy was asked for, but no model endpoint is configured."""


NO_MODEL = (
    "no model endpoint is configured: set OPENAI_BASE_URL (vLLM, Ollama, llama.cpp, ...) or OPENAI_API_KEY, "
    "and HERD_MODEL, then restart the server"
)


class UnavailableProbe:
    """Stands in for NVML where it cannot be used, so that every attempt to detect says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def discover(self) -> list[Gpu]:
        raise ProbeUnavailable(self.reason)

    def metrics(self) -> dict[int, GpuMetrics]:
        raise ProbeUnavailable(self.reason)


def local_probe(node: str) -> GpuProbe:
    """NVML where the driver works; elsewhere a probe that explains why nothing can be detected."""
    try:
        return NvmlProbe(node)
    except ProbeUnavailable as exc:
        return UnavailableProbe(str(exc))


@dataclass(frozen=True)
class LogChunk:
    text: str
    next_offset: int  # ask for ``offset=next_offset`` to get what is written after this
    size: int  # the log's size now, in bytes


def read_log(path: Path, *, tail: int | None = None, offset: int | None = None) -> LogChunk:
    """The last ``tail`` lines, or the bytes from ``offset`` on (at most ``MAX_LOG_CHUNK``), or all."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset is not None:
                start = min(max(offset, 0), size)
            elif tail is not None:
                start = _tail_start(f, size, tail)
            else:
                start = max(0, size - MAX_LOG_CHUNK)
            f.seek(start)
            data = f.read(min(size - start, MAX_LOG_CHUNK))
    except (FileNotFoundError, IsADirectoryError):
        return LogChunk(text="", next_offset=offset or 0, size=0)
    return LogChunk(text=data.decode(errors="replace"), next_offset=start + len(data), size=size)


def _tail_start(f, size: int, lines: int) -> int:
    """Offset of the start of the last ``lines`` lines, read backwards in blocks (logs can be huge)."""
    if lines <= 0:
        return size
    pos, newlines, block = size, 0, 64 * 1024
    # A final newline ends the last line; it does not start a new one.
    f.seek(max(0, size - 1))
    if size and f.read(1) == b"\n":
        pos -= 1
    while pos > 0 and size - pos < MAX_LOG_CHUNK:
        step = min(block, pos)
        f.seek(pos - step)
        data = f.read(step)
        for i in range(len(data) - 1, -1, -1):
            if data[i] == 10:  # b"\n"
                newlines += 1
                if newlines == lines:
                    return pos - step + i + 1
        pos -= step
    return max(pos, size - MAX_LOG_CHUNK)


def build_rules(settings: Settings) -> Rules:
    return Rules(
        groups={user: group for group, members in settings.groups.items() for user in members},
        user_quota=dict(settings.user_quotas),
        group_quota=dict(settings.group_quotas),
        default_user_quota=settings.default_user_quota,
        default_runtime_s=settings.default_runtime_s,
        backfill_depth=settings.backfill_depth,
        preempt_priority_gap=settings.preempt_priority_gap,
        preempt_min_runtime_s=settings.preempt_min_runtime_s,
    )


def build_multifactor(settings: Settings) -> MultifactorPolicy:
    weights = Weights(
        priority=settings.weight_priority, age=settings.weight_age, fair_share=settings.weight_fair_share,
        size=settings.weight_size, age_unit_s=settings.age_unit_s, size_unit_gpu_hours=settings.size_unit_gpu_hours,
    )
    return MultifactorPolicy(weights=weights, default_runtime_s=settings.default_runtime_s)


class Service:
    """The core of one node, wired for real use; tests may pass a simulated clock and executor."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        executor: Executor | None = None,
        probe: GpuProbe | None = None,
        model: Model | None = None,
        run_loop: bool = True,
    ) -> None:
        self.settings = settings
        self.workdir = settings.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clock = clock or RealClock()
        self.store = SqliteStore(self.workdir / "herd.db")
        self.probe = probe if probe is not None else local_probe(settings.node_name)
        self.resources = ResourceManager(self.store, self.probe)
        self.queue = JobQueue(self.store, max_queued=settings.max_queue_size, usage_half_life_s=settings.usage_half_life_s)
        self.executor = executor or TmuxExecutor(self.workdir, socket_name=settings.tmux_socket)
        self.model = model or (OpenAIModel(ModelSettings(
            model=settings.model, base_url=settings.openai_base_url, api_key=settings.openai_api_key,
            timeout_s=settings.model_timeout_s,
        )) if settings.model_configured else None)
        self.audit = AuditLog(self.workdir / "agent.db")
        self.multifactor = build_multifactor(settings)  # also explains any job's priority, whatever the policy
        self.orchestrator = Orchestrator(
            queue=self.queue,
            inventory=self.resources,
            executor=self.executor,
            clock=self.clock,
            policy=get_policy(FALLBACK_POLICY),
            grace_s=settings.grace_s,
            enabled=self._saved_enabled(),
            rules=build_rules(settings),
            preempt_grace_s=settings.preempt_grace_s,
        )
        self.orchestrator.policy = self.make_policy(self._saved_policy())
        self.inventory_notice = ""
        self.run_loop = run_loop
        self.ticks = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- saved choices: an explicit flag or variable wins, else what was saved, else the default --
    def _saved_policy(self) -> str:
        saved = self.store.get_setting(POLICY_KEY)
        if POLICY_KEY in self.settings.explicit or saved is None:
            self.store.set_setting(POLICY_KEY, self.settings.policy)
            return self.settings.policy
        if saved not in POLICY_NAMES or (saved == AGENT_POLICY and self.model is None):
            log.warning("saved policy %r cannot be used here; using %s", saved, FALLBACK_POLICY)
            return FALLBACK_POLICY
        return saved

    def make_policy(self, name: str) -> Policy:
        """A policy by name; ``multifactor`` with the configured weights; ``agent`` wraps the model around
        the pure-priority fallback."""
        if name == self.multifactor.name:
            return self.multifactor
        if name != AGENT_POLICY:
            return get_policy(name)  # ValueError naming the choices
        if self.model is None:
            raise ModelNotConfigured(f"policy agent needs a model: {NO_MODEL}")
        return AgentPolicy(
            self.model, fallback=get_policy(FALLBACK_POLICY), clock=self.clock, audit=self.audit,
            bounds=Bounds(max_turns=4, budget_s=self.settings.agent_budget_s, max_rejections=3),
        )

    def chat(self) -> ChatAgent:
        if self.model is None:
            raise ModelNotConfigured(f"chat needs a model: {NO_MODEL}")
        return ChatAgent(
            self.model, context_for=lambda user: ToolContext(self.orchestrator, self.resources, actor=user,
                                                              own_jobs_only=True, multifactor=self.multifactor),
            audit=self.audit, clock=self.clock, bounds=Bounds(budget_s=max(15.0, self.settings.model_timeout_s)),
        )

    def _saved_enabled(self) -> bool:
        saved = self.store.get_setting(ENABLED_KEY)
        if ENABLED_KEY in self.settings.explicit or saved is None:
            self.store.set_setting(ENABLED_KEY, str(self.settings.orchestration_enabled).lower())
            return self.settings.orchestration_enabled
        return saved == "true"

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Choose the inventory, adopt what still runs, then start ticking."""
        declared = None
        if self.settings.gpus is not None:
            declared = [NodeDeclaration(name=self.settings.node_name, gpus=self.settings.gpus)]
        self.inventory_notice = self.resources.initialize(self.clock.now(), declared)
        if self.resources.source == InventorySource.DECLARED:
            log.warning("%s", self.inventory_notice)
        else:
            log.info("%s", self.inventory_notice)
        self.orchestrator.reconcile()
        if not self.orchestrator.enabled:
            log.warning("the scheduler is stopped: no job starts until POST /orchestrator/start (herd start)")
        if self.run_loop:
            for target, name in ((self._tick_loop, "herd-tick"), (self._watch_executor, "herd-executor-wait")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        """Stop ticking and release files; jobs keep running in tmux and are adopted on the next start."""
        self._stopping.set()
        self._wake.set()
        tick_thread = self._threads[0] if self._threads else None
        if tick_thread is not None:
            tick_thread.join(timeout=30)  # a tick in progress finishes; starts it made are recorded
        self.executor.close()
        for thread in self._threads[1:]:
            thread.join(timeout=5)
        self._threads.clear()
        close_probe = getattr(self.probe, "close", None)
        if close_probe is not None:
            close_probe()
        self.store.close()
        self.audit.close()

    def wake(self) -> None:
        """Ask for a scheduler pass now (a submission, a cancel or a change of settings)."""
        self._wake.set()

    @property
    def loop_alive(self) -> bool:
        return bool(self._threads) and self._threads[0].is_alive()

    def _tick_loop(self) -> None:
        next_metrics = 0.0
        last_pass = float("-inf")
        while not self._stopping.is_set():
            self._wake.wait(self.settings.tick_interval_s)
            self._stopping.wait(last_pass + MIN_PASS_GAP_S - time.monotonic())  # returns at once if <= 0
            self._wake.clear()
            last_pass = time.monotonic()
            if self._stopping.is_set():
                break
            try:
                self.orchestrator.tick()
                self.ticks += 1
                self.last_error = None
            except Exception as exc:  # the loop must outlive any one bad pass
                log.exception("scheduler pass failed; trying again in %g s", ERROR_BACKOFF_S)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._stopping.wait(ERROR_BACKOFF_S)
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + self.settings.metrics_interval_s
                try:
                    self.resources.refresh_metrics(self.clock.now())
                except Exception:
                    log.exception("reading GPU metrics failed")

    def _watch_executor(self) -> None:
        while not self._stopping.is_set():
            self.executor.wait(self.settings.tick_interval_s)
            self._wake.set()
            self._stopping.wait(MIN_WAIT_GAP_S)

    # -- what the views call -----------------------------------------------------------------------
    def tools(self, actor: str | None = None) -> ToolContext:
        return ToolContext(orchestrator=self.orchestrator, resources=self.resources, actor=actor,
                           multifactor=self.multifactor)

    @staticmethod
    def check_cwd(cwd: str | None) -> None:
        """A job's working directory must exist here; found now, not when the job finally starts."""
        if cwd is None:
            return
        path = Path(cwd)
        if not path.is_absolute():
            raise ValueError(f"cwd must be an absolute path, not {cwd!r}")
        if not path.is_dir():
            raise ValueError(f"cwd {cwd} is not an existing directory on this server")

    def set_enabled(self, enabled: bool) -> None:
        with self.orchestrator.lock:
            self.orchestrator.enabled = enabled
            self.store.set_setting(ENABLED_KEY, str(enabled).lower())
        log.info("scheduler %s", "started" if enabled else "stopped")
        self.wake()

    def set_policy(self, name: str) -> None:
        policy = self.make_policy(name)
        with self.orchestrator.lock:
            self.orchestrator.policy = policy
            self.store.set_setting(POLICY_KEY, name)
        log.info("policy set to %s", name)
        self.wake()

    def held_gpus(self) -> set[tuple[str, int]]:
        return {
            (job.allocation.node, gpu)
            for job in self.queue.active()
            if job.status in HOLDS_GPUS and job.allocation is not None
            for gpu in job.allocation.gpus
        }

    def declare_inventory(self, nodes: list[NodeDeclaration]) -> None:
        # Under the orchestrator's lock, so that no tick starts a job on a GPU being dropped.
        with self.orchestrator.lock:
            self.resources.declare(nodes, now=self.clock.now(), held=self.held_gpus())
        total = sum(n.gpus for n in nodes)
        self.inventory_notice = (
            f"{total} GPU(s) declared through /gpu/initialize on {', '.join(n.name for n in nodes)}; "
            "declared, not detected."
        )
        self.wake()

    def detect_inventory(self) -> None:
        with self.orchestrator.lock:
            self.resources.detect(now=self.clock.now(), held=self.held_gpus())
        nodes = self.resources.nodes()
        self.inventory_notice = (
            f"Detected {sum(len(n.gpus) for n in nodes)} GPU(s) through NVML on {', '.join(n.name for n in nodes)}."
        )
        self.resources.refresh_metrics(self.clock.now())
        self.wake()
