"""The running service: the core (``agent.build``), plus the background loop that ticks it.

``Service`` builds the core from its settings, reconciles with what really runs, and then ticks in a
thread of its own. The REST app creates one in
its lifespan and stops it on shutdown; nothing here is a module global.

The tick loop wakes when a job may have ended (``executor.wait``), when a request changed the queue
(``wake``), and at least every ``tick_interval_s``. It never dies of an exception: it logs it, keeps it
for ``/orchestrator/status`` and goes on.
"""

from __future__ import annotations

import logging
import threading
import time

from agent.audit import AuditLog
from agent.build import NO_MODEL, ModelNotConfigured, build_chat, build_core, build_model
from agent.chat import ChatAgent
from agent.identity import Identities, Mode, mode_of
from agent.llm import Model
from agent.notifier import Notifier
from agent.settings import Settings
from tools.clock import Clock
from tools.door import observe, watch
from tools.door.watch import IdleRules
from tools.door.context import OPERATOR, Actor, ToolContext
from tools.executor import Executor
from tools.inventory import ResourceManager
from tools.models import InventorySource
from tools.nvml import GpuProbe
from tools.orchestrator import Orchestrator
from tools.queue import JobQueue
from tools.store import Store

log = logging.getLogger("gpuherd")

# Passes start at least this far apart. A pass after a quiet spell starts at once (a job submitted to
# an idle cluster starts without delay); under a stream of submissions one pass serves many of them
# instead of one pass per request competing with the requests for the CPU.
MIN_PASS_GAP_S = 0.01
# An executor whose wait() returns at once (the simulator) must not make its watcher spin: it waits for
# the next pass to begin, at most this long.
MIN_WAIT_GAP_S = 0.02
# A tick that keeps failing is retried, but not in a tight loop that floods the log.
ERROR_BACKOFF_S = 1.0


class Service:
    """The core of one node, wired for real use, and the loop that ticks it; tests may pass a simulated
    clock and executor."""

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
        self.model = model or build_model(settings)
        self.audit = AuditLog(self.workdir / "agent.db")
        self.core = build_core(settings, clock=clock, executor=executor, probe=probe, model=self.model, audit=self.audit,
                               jobs_run_as_owners=mode_of(settings) == Mode.SHARED)
        self.identities = Identities.for_server(settings, self.core.tokens)
        self.core.changed = self.wake
        self.notifier = Notifier(self.core, settings.notify)
        self.run_loop = run_loop
        self.ticks = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._pass_began = threading.Event()  # set by the tick loop as a pass begins
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def orchestrator(self) -> Orchestrator:
        return self.core.orchestrator

    @property
    def clock(self) -> Clock:
        return self.core.clock

    @property
    def store(self) -> Store:
        return self.core.store

    @property
    def queue(self) -> JobQueue:
        return self.core.queue

    @property
    def resources(self) -> ResourceManager:
        return self.core.resources

    @property
    def executor(self) -> Executor:
        return self.core.executor

    def tools(self, actor: Actor = OPERATOR) -> ToolContext:
        """The typed tools, for ``actor`` as the front door established it."""
        return ToolContext(self.core, actor)

    def chat(self) -> ChatAgent:
        if self.model is None:
            raise ModelNotConfigured(f"chat needs a model: {NO_MODEL}")
        # The model acts for the person asking, never as an administrator.
        return build_chat(self.settings, self.model, context_for=lambda user: self.tools(Actor(user=user, via="chat")),
                          audit=self.audit, clock=self.clock)

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Say where the inventory came from, adopt what still runs, then start ticking."""
        log.info("identity: %s", self.identities.describe())
        notice = self.core.inventory_notice
        if self.resources.source == InventorySource.DECLARED:
            log.warning("%s", notice)
        else:
            log.info("%s", notice)
        self.orchestrator.reconcile()
        if not self.orchestrator.enabled:
            log.warning("the scheduler is stopped: no job starts until POST /orchestrator/start (herd start)")
        if self.run_loop:
            for target, name in ((self._tick_loop, "herd-tick"), (self._watch_executor, "herd-executor-wait"),
                                 (self._sample_loop, "herd-sample")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
            self.notifier.start()  # reads the log in threads of its own: a slow webhook delays no pass

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
        self.notifier.stop()
        self.resources.close()
        if self.core.tokens is not None:
            self.core.tokens.close()
        self.store.close()
        self.audit.close()

    def wake(self) -> None:
        """Ask for a scheduler pass now (a submission, a cancel or a change of settings)."""
        self._wake.set()

    @property
    def loop_alive(self) -> bool:
        return bool(self._threads) and self._threads[0].is_alive()

    def _tick_loop(self) -> None:
        last_pass = float("-inf")
        while not self._stopping.is_set():
            # A time limit is enforced when it falls due, not at the next regular pass.
            limit = self.orchestrator.next_time_limit_in()
            self._wake.wait(self.settings.tick_interval_s if limit is None else min(limit, self.settings.tick_interval_s))
            self._stopping.wait(last_pass + MIN_PASS_GAP_S - time.monotonic())  # returns at once if <= 0
            self._wake.clear()
            self._pass_began.set()
            last_pass = time.monotonic()
            if self._stopping.is_set():
                break
            try:
                report = self.orchestrator.tick()
                self.core.observer.observe_pass(report.phases_s, report.duration_s)
                self.ticks += 1
                self.last_error = None
            except Exception as exc:  # the loop must outlive any one bad pass
                log.exception("scheduler pass failed; trying again in %g s", ERROR_BACKOFF_S)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._stopping.wait(ERROR_BACKOFF_S)

    def _sample_loop(self) -> None:
        """Every ``sample_interval_s``, in a thread of its own so that reading NVML and /proc never delays
        a pass: the GPUs' readings, the dashboard's sample, then the watch (usage, idle jobs, failing GPUs)."""
        rules = IdleRules(self.settings.idle_threshold, self.settings.idle_after, self.settings.idle_action)
        while not self._stopping.is_set():
            started = time.monotonic()
            for what, step in (("reading GPU metrics", lambda: self.resources.refresh_metrics(self.clock.now())),
                               ("sampling the cluster for the dashboard", lambda: observe.sample(self.tools())),
                               ("watching the GPUs", lambda: watch.watch(self.tools(), rules))):
                try:
                    step()
                except Exception:  # the loop must outlive any one bad sample
                    log.exception("%s failed", what)
            self._stopping.wait(started + self.settings.sample_interval_s - time.monotonic())

    def _watch_executor(self) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            self.executor.wait(self.settings.tick_interval_s)
            self._pass_began.clear()
            self._wake.set()  # a job's end (or a SIGKILL that is due) is seen by the pass at once
            if time.monotonic() - began < MIN_WAIT_GAP_S / 10:
                # It did not wait (another end came meanwhile, or an executor that never waits): so as
                # not to spin, wait again only once the pass it woke has begun, not a fixed time, or
                # ends that come in between would wait for this sleep rather than for the next pass.
                self._pass_began.wait(MIN_WAIT_GAP_S)
