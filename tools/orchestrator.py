"""The orchestrator: the one place where decisions become effects.

``tick()`` runs in numbered phases, each timed on the injected clock:
  1. collect   - record jobs that ended (exit codes from the executor), with retries, all in one
                 commit; an end is forgotten by the executor only once it is stored, so a failed write
                 is tried again on the next pass (and the pass then raises ``UnrecordedEnds``, after
                 doing its work)
  2. enforce   - stop jobs past their time limit (SIGTERM, grace, SIGKILL), on the monotonic clock
  3. decide    - snapshot -> policy (pure; the only phase without the lock)
  4. validate  - the policy's proposals against a fresh snapshot
  5. apply     - reserve GPUs in the store (one commit for all), then start through the executor; on
                 failure release
  6. explain   - store why each waiting job waits (only where that changed), in one commit with the
                 starts of 5
A pass writes its changes in three commits (``Store.one_commit``), not one per change: each is an
fsync. A commit that fails is rolled back with the memory (the store's, and the queue's index, from
the jobs it put back); starts the executor made whose commit failed are recorded by the next pass.
Every front door (REST, CLI, the LLM agent, the eval harness) changes jobs through the methods here,
under one lock, so the tick never races a cancel.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Protocol, Sequence

from policies.ordering import Policy, has_pending
from policies.rules import DEFAULT_RULES, Rules
from policies.snapshot import Decisions, Layout, Preemption, Reasons, Snapshot, Wait, begin_time_wait, standing_wait
from policies.admission import dependency_wait, quota_wait, size_wait
from policies.reservations import check_reservation, move_off_busy_gpus
from policies.validator import Rejection, check_preemption, validate
from tools.clock import Clock
from tools.executor import Executor, JobExit, StartError
from tools.index import ActiveJobs
from tools.models import TERMINAL, Event, Job, JobSpec, JobStatus, Node, PendingReason, Reservation, StopReason
from tools.queue import IllegalTransition, JobQueue
from tools.store import GpuConflict

log = logging.getLogger(__name__)

# Members read on every save, bound once: reading one through its enum class costs as much as the
# rest of a status test.
_QUEUED, _SCHEDULED, _RUNNING = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING


class Inventory(Protocol):
    def nodes(self) -> tuple[Node, ...]: ...

    # With an executor that reports its nodes (Ray): make them the inventory.
    def follow(self, reported: tuple[Node, ...], *, now: float) -> str | None: ...


class InvalidJob(ValueError):
    """A submission that can never run on this cluster (e.g. more GPUs than any node has)."""


HELD_MESSAGE = "the scheduler is stopped; nothing new starts until it is started again"


@dataclass(frozen=True, init=False)
class TickReport:
    time: float
    duration_s: float
    policy: str
    finished: tuple[int, ...] = ()
    started: tuple[int, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    waiting: int = 0
    phases_s: dict[str, float] = field(default_factory=dict)
    # Jobs whose end the executor reported but the store could not record (a failed write): they stay
    # running, with their GPUs, and the executor keeps reporting them until a later pass records them.
    unrecorded: tuple[int, ...] = ()

    def __init__(self, time: float, duration_s: float, policy: str, finished: tuple[int, ...] = (),
                 started: tuple[int, ...] = (), rejected: tuple[Rejection, ...] = (), waiting: int = 0,
                 phases_s: dict[str, float] | None = None, unrecorded: tuple[int, ...] = ()) -> None:
        # Every field in one write (one report a pass; see ``Snapshot.__init__``). The fields above, in their order.
        object.__setattr__(self, "__dict__", {
            "time": time, "duration_s": duration_s, "policy": policy, "finished": finished, "started": started,
            "rejected": rejected, "waiting": waiting, "phases_s": {} if phases_s is None else phases_s,
            "unrecorded": unrecorded,
        })


class Launch(NamedTuple):
    """A reserved job handed to the executor at ``time``: its log, or why it could not start. (A named
    tuple: one is made for every start, and a frozen dataclass's fields cost a call each.)"""

    job: Job
    time: float
    log_path: str | None
    why: str = ""


class UnrecordedEnds(RuntimeError):
    """Raised by a pass, once it has done all its other work, when ends it collected could not be
    stored; the service keeps it as its last error until a pass records them."""

    def __init__(self, report: TickReport, errors: dict[int, str]) -> None:
        jobs = ", ".join(str(j) for j in report.unrecorded)
        first = errors[report.unrecorded[0]]
        super().__init__(f"the end of job(s) {jobs} could not be recorded ({first}); they keep their GPUs "
                         "and are tried again on the next pass")
        self.report = report
        self.errors = dict(errors)


class _Committing:
    """``Orchestrator._committing``'s block. A class rather than ``contextlib.contextmanager``: a pass
    opens three or more (one per end it records), and a generator's context costs three calls more each."""

    __slots__ = ("_orchestrator", "_launched", "_scope", "_commit")

    def __init__(self, orchestrator: Orchestrator, launched: Sequence[Launch]) -> None:
        self._orchestrator, self._launched = orchestrator, launched
        self._scope = orchestrator.queue.store.one_commit()
        self._commit = None

    def __enter__(self) -> None:
        try:
            self._commit = self._scope.__enter__()
        except Exception:
            self._failed()
            raise

    def __exit__(self, kind, exc, tb) -> bool:
        try:
            if self._scope.__exit__(kind, exc, tb):
                return True
        except Exception:  # the commit failed, or the store raised the block's failure as its own
            self._failed()
            raise
        if kind is not None and issubclass(kind, Exception):  # the block failed: the store rolled it back
            self._failed()
        return False

    def _failed(self) -> None:
        commit, orchestrator = self._commit, self._orchestrator
        orchestrator._put_back(commit.before if commit is not None else {})
        orchestrator._launched.update((launch.job.id, launch) for launch in self._launched)


class Orchestrator:
    def __init__(
        self,
        *,
        queue: JobQueue,
        inventory: Inventory,
        executor: Executor,
        clock: Clock,
        policy: Policy,
        grace_s: float = 10.0,
        max_gpus_per_job: int | None = None,
        enabled: bool = True,
        multi_node: bool = False,
        rules: Rules = DEFAULT_RULES,
        preempt_grace_s: float = 30.0,
    ) -> None:
        self.queue = queue
        self.inventory = inventory
        self.executor = executor
        self.clock = clock
        self.policy = policy
        self.grace_s = grace_s
        self.max_gpus_per_job = max_gpus_per_job
        self.enabled = enabled
        # A job larger than any node takes whole free nodes: a gang job under Ray (one part per node),
        # or a replayed one under the simulated executor; the tmux executor refuses it.
        self.multi_node = multi_node
        self.rules = rules
        self.preempt_grace_s = preempt_grace_s  # SIGTERM to SIGKILL for a preempted job: time to checkpoint
        self._reservations = tuple(queue.store.reservations())
        self._ended: dict[int, JobStatus] = {}  # terminal states of jobs others depend on (they never change)
        # The last pass's backfill plan: job id -> planned start, worked out when first read
        self.planned: Mapping[int, float] = {}
        self._layout: Layout | None = None
        self._kept_for: Policy | None = None  # the policy whose orders the queue's index keeps
        self.last_tick: TickReport | None = None
        # job id -> (the attempt's start time, its time-limit deadline on the monotonic clock)
        self._deadlines: dict[int, tuple[float, float]] = {}
        self._next_limit: float | None = None  # the earliest of them not yet enforced (monotonic)
        self._unrecorded: dict[int, str] = {}  # job id -> why its end could not be stored (this pass)
        # Jobs the executor started whose start a failed commit did not store: recorded by the next pass.
        self._launched: dict[int, Launch] = {}
        self.lock = threading.RLock()  # every change of jobs, from any door
        self._tick_lock = threading.Lock()  # one tick at a time

    # -- reading -------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Cheap however long the queue is: the jobs come from the queue's index, already in the
        orders the policy reads, and what the inventory allows is worked out once per inventory."""
        now, index = self.clock.now(), self.queue.index
        if self.policy is not self._kept_for:  # (a policy's orders are kept from its first pass on)
            for ordering in getattr(self.policy, "orderings", ()):
                index.keep(ordering)
            self._kept_for = self.policy
        first = index.preempted_for()
        return Snapshot(
            now=now,
            nodes=self._current_layout().nodes,
            jobs=index.view(),
            usage=self.queue.usage(now),
            max_gpus_per_job=self.max_gpus_per_job,
            multi_node=self.multi_node,
            rules=self.rules,
            reservations=self._reservations_at(now),
            ended=self._ended_dependencies(),
            first=tuple(sorted(first)) if first else (),
            known_layout=self._layout,
        )

    def _reservations_at(self, now: float) -> tuple[Reservation, ...]:
        """The reservations not yet over at ``now``."""
        return tuple(r for r in self._reservations if r.end > now) if self._reservations else ()

    def _ended_dependencies(self) -> dict[int, JobStatus]:
        """How the ended jobs that waiting jobs run after ended (a job that never existed is left out)."""
        index = self.queue.index
        for job in index.dependent():
            for dep in job.depends_on:
                if dep not in self._ended and index.get(dep) is None:
                    ended = self.queue.store.get_job(dep)
                    if ended is not None and ended.status in TERMINAL:
                        self._ended[dep] = ended.status
        return self._ended

    def _still(self, seen: Snapshot) -> bool:
        """Whether a fresh snapshot would equal ``seen``: no job changed, same time, same inventory
        and settings (on a simulated clock, where the policy takes no time, it usually does)."""
        jobs = seen.jobs
        return (
            isinstance(jobs, ActiveJobs)
            and jobs.version == self.queue.index.version
            and seen.now == self.clock.now()
            and seen.nodes is self.inventory.nodes()
            and (seen.max_gpus_per_job, seen.multi_node) == (self.max_gpus_per_job, self.multi_node)
            and seen.rules is self.rules
            and seen.reservations == self._reservations_at(seen.now)
        )

    def _current_layout(self) -> Layout:
        nodes = self.inventory.nodes()
        if self._layout is None or self._layout.nodes is not nodes:
            self._layout = Layout(nodes)
        return self._layout

    # -- requests from people --------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> Job:
        """Refuse a job that could never start here (``InvalidJob``, in the admission rules' words), else
        queue it (``QueueFull`` when at the limit)."""
        refusal = size_wait(spec.gpu_count, self._current_layout(), max_gpus_per_job=self.max_gpus_per_job,
                            multi_node=self.multi_node, usable=False) or quota_wait(self.rules, spec.user, spec.gpu_count, {}, {})
        if refusal is None and spec.depends_on:
            refusal = dependency_wait(spec, self._status_of)
            if refusal is not None and refusal.reason != PendingReason.DEPENDENCY_NEVER:
                refusal = None  # it waits for them, as it should
        if refusal is not None:
            raise InvalidJob(refusal.message)
        # Without the lock: a new job changes no other job, so a submission need not wait for a pass, and
        # submissions arriving together share one transaction and one fsync (the store's group commit).
        return self.queue.submit(spec, now=self.clock.now())

    def _status_of(self, job_id: int) -> JobStatus | None:
        job = self.queue.store.get_job(job_id)
        return job.status if job is not None else None

    # -- reservations (an administrator's) ---------------------------------------------------------
    @property
    def reservations(self) -> tuple[Reservation, ...]:
        return self._reservations

    def reserve(self, reservation: Reservation) -> Reservation:
        """Keep GPUs for a user or group in a time window; refused if it overlaps another one."""
        with self.lock:
            now = self.clock.now()
            check_reservation(self._current_layout(), self._reservations, reservation, now)
            saved = self.queue.store.add_reservation(reservation)
            self._reservations = (*self._reservations, saved)
            self.queue.store.add_event(Event(time=now, kind="reserved", message=f"reservation {saved.id}: "
                                             f"{saved.node} GPU(s) {','.join(map(str, saved.gpus))} for {saved.holder()}"))
            return saved

    def unreserve(self, reservation_id: int) -> Reservation:
        with self.lock:
            found = next((r for r in self._reservations if r.id == reservation_id), None)
            if found is None:
                raise LookupError(f"no reservation {reservation_id}")
            self.queue.store.delete_reservation(reservation_id)
            self._reservations = tuple(r for r in self._reservations if r.id != reservation_id)
            self.queue.store.add_event(Event(time=self.clock.now(), kind="unreserved",
                                             message=f"reservation {reservation_id} removed"))
            return found

    def _move_reservations(self, now: float) -> None:
        """A reservation made for a count of GPUs whose window has begun on GPUs another job still holds takes
        free GPUs of its node in their place (``move_off_busy_gpus``), before the pass would stop that job."""
        if not self._reservations or not any(r.movable and r.start <= now < r.end for r in self._reservations):
            return
        snapshot = self.snapshot()
        jobs, holders, group_of = snapshot.jobs_by_id, snapshot.holders, self.rules.group_of

        def holder_of(node: str, gpu: int) -> Job | None:
            holder = holders.get((node, gpu))
            return jobs.get(holder) if holder is not None else None

        for r in self._reservations:
            moved = move_off_busy_gpus(r, snapshot.layout, self._reservations, holder_of, group_of, now)
            if moved is None:
                continue
            self.queue.store.update_reservation(moved)
            self._reservations = tuple(moved if x.id == r.id else x for x in self._reservations)
            gone, new = sorted(set(r.gpus) - set(moved.gpus)), sorted(set(moved.gpus) - set(r.gpus))
            self.queue.store.add_event(Event(
                time=now, kind="reserved", message=f"reservation {r.id} for {r.holder()} began on {r.node} GPU(s) "
                f"{','.join(map(str, gone))}, which others still use; it takes the free GPU(s) {','.join(map(str, new))} "
                "instead, so nobody is stopped for it", data={"reservation": r.id, "from": gone, "to": new}))

    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one is stopped and ends as cancelled."""
        with self.lock:
            now = self.clock.now()
            job = self.queue.get(job_id)
            if job.status == JobStatus.QUEUED:
                return self.queue.transition(job, JobStatus.CANCELLED, now=now, message=f"{job.display_name}: cancelled")
            if job.status in TERMINAL:
                raise IllegalTransition(f"job {job_id} is {job.status.value}; there is nothing to cancel")
            if job.stop_reason != StopReason.CANCEL:
                job = self.queue.update(job, now=now, kind="stopping", stop_reason=StopReason.CANCEL,
                                        message=f"{job.display_name}: cancel requested; SIGTERM, then SIGKILL after {self.grace_s:g} s")
                self.executor.stop(job.id, now, self.grace_s)
            return job

    def requeue(self, job_id: int, why: str) -> Job:
        """Stop a running job for a reason not its own (its GPU failed; it held its GPUs idle) and queue it
        again: it ends as a preempted job does (SIGTERM, the preemption grace, SIGKILL), using no retry."""
        with self.lock:
            now = self.clock.now()
            job = self.queue.get(job_id)
            if job.status not in (JobStatus.SCHEDULED, JobStatus.RUNNING):
                raise IllegalTransition(f"job {job_id} is {job.status.value}; only a running job can be requeued")
            if job.stop_reason is None:
                job = self.queue.update(job, now=now, kind="requeueing", stop_reason=StopReason.PREEMPT,
                                        message=f"{job.display_name}: {why}; SIGTERM, then SIGKILL after "
                                        f"{self.preempt_grace_s:g} s, then requeued without using a retry")
                self.executor.stop(job.id, now, self.preempt_grace_s)
            return job

    def set_priority(self, job_id: int, priority: int) -> Job:
        with self.lock:
            return self.queue.set_priority(job_id, priority, now=self.clock.now())

    def complete(self, job_id: int, exit_code: int = 0) -> Job:
        """Mark a running job finished by hand, with ``exit_code``. Like a cancel, it is a request, then a
        fact: the job is signalled (SIGTERM, grace, SIGKILL) with ``stop_reason=complete`` and the code
        asked for kept in ``exit_code``; it becomes completed (code 0) or failed, and frees its GPUs, only
        once its processes are gone. The answer is the job as it is then: still running with
        ``stop_reason`` set, unless the executor already reports its end."""
        with self.lock:
            now = self.clock.now()
            job = self.queue.get(job_id)
            if job.status not in (JobStatus.SCHEDULED, JobStatus.RUNNING):
                raise IllegalTransition(f"job {job_id} is {job.status.value}; only a running job can be completed")
            if (job.stop_reason, job.exit_code) != (StopReason.COMPLETE, exit_code):
                job = self.queue.update(job, now=now, kind="stopping", stop_reason=StopReason.COMPLETE, exit_code=exit_code,
                                        message=f"{job.display_name}: to be marked finished by hand (exit code "
                                        f"{exit_code}); SIGTERM, then SIGKILL after {self.grace_s:g} s; its GPUs "
                                        "are freed when its processes are gone")
            self.executor.stop(job.id, now, self.grace_s)
            return self._collect_one(job) or job

    def _collect_one(self, job: Job) -> Job | None:
        """Record ``job``'s end at once if the executor already has it (a simulated executor, or a
        process that died at the first signal); other ends wait for the pass."""
        for end in self.executor.poll(self.clock.now()):
            if end.job_id == job.id:
                return self._record(end)
        return None

    # -- start-up --------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """After a restart: adopt what still runs, record what ended, then let ticks schedule. An end
        whose write fails stays with the executor and is recorded by a later pass."""
        with self.lock:
            now = self.clock.now()
            holding = [j for j in self.queue.active() if j.status != JobStatus.QUEUED]
            ended = {e.job_id: e for e in self.executor.recover([j.id for j in holding], now)}
            for job in holding:
                end = ended.get(job.id)
                if job.status == JobStatus.SCHEDULED:
                    if end is not None and end.exit_code is None and job.stop_reason in (None, StopReason.PREEMPT):
                        # Reserved but never started: not the job's fault, so the attempt is not counted.
                        self.queue.transition(job, JobStatus.QUEUED, now=now, attempts=job.attempts - 1,
                                              message=f"{job.display_name}: start interrupted by a restart; requeued")
                        self.executor.forget(job.id)
                        continue
                    job = self.queue.transition(job, JobStatus.RUNNING, now=now, message=f"{job.display_name}: adopted after a restart")
                if end is not None:
                    self._record(end, note="ended while the service was down")
                elif job.stop_reason is not None:
                    grace = self.preempt_grace_s if job.stop_reason == StopReason.PREEMPT else self.grace_s
                    self.executor.stop(job.id, now, grace)  # the stop may have been cut short by the restart
            if self._unrecorded:
                log.error("after the restart, the end of job(s) %s could not be recorded; the passes will try again",
                          ", ".join(map(str, sorted(self._unrecorded))))
                self._unrecorded.clear()

    # -- the tick --------------------------------------------------------------------------------
    def tick(self) -> TickReport:
        """One pass. The policy decides without the lock (an LLM may take seconds), so requests are
        never blocked by it; its proposals are then validated against a fresh snapshot, which
        refuses any that a cancel or another change made stale."""
        with self._tick_lock:
            clock = self.clock
            t0 = clock.now()
            phases: dict[str, float] = {}

            def lap(name: str, since: float) -> float:
                t = clock.now()
                phases[name] = t - since
                return t

            with self.lock:
                self._unrecorded.clear()
                finished = self._collect(t0)
                self.follow_nodes(t0)
                t = lap("collect", t0)
                self._enforce_time_limits(t)
                t = lap("enforce", t)
                if not self.enabled:
                    return self._held(t0, phases, finished)
                self._move_reservations(t)
                if self._nothing_to_decide(t):
                    return self._idle(t0, phases, finished)
                seen = self.snapshot()
            decisions = self.policy.decide(seen)
            t = lap("decide", t)
            with self.lock:
                if not self.enabled:  # stopped while the policy was deciding: start nothing
                    return self._held(t0, phases, finished)
                snapshot = seen if self._still(seen) else self.snapshot()
                verdict = validate(snapshot, decisions.starts)
                t = lap("validate", t)
                # Two commits however many jobs start: their GPUs reserved (before any starts), then their
                # starts with the reasons the others wait.
                reserved = self._reserve(snapshot, verdict.accepted, decisions.notes, t)
                launched = self._launch(reserved, t)
                # (most passes start nothing: no comprehension, which costs a call even when empty)
                accepted = {acc.proposal.job_id for acc in verdict.accepted} if verdict.accepted else set()
                with self._committing(launched):
                    started = self._record_starts(launched)
                    t = lap("apply", t)
                    waiting = self._explain(seen, decisions, verdict.rejected, accepted, now=snapshot.now)
                self._started(started)
                self._preempt(snapshot, decisions.preemptions, t)
                self.planned = decisions.planned
                t = lap("explain", t)
            return self._report(t0, t, finished, phases, started=tuple([j.id for j in started]) if started else (),
                                rejected=verdict.rejected, waiting=waiting)

    def _held(self, t0: float, phases: dict[str, float], finished: tuple[int, ...]) -> TickReport:
        """The pass of a stopped scheduler: nothing starts, every waiting job says why it waits."""
        since = self.clock.now()
        with self._committing():
            waiting = self._hold_all(since)
        t = self.clock.now()
        phases["explain"] = t - since
        return self._report(t0, t, finished, phases, waiting=waiting)

    def _nothing_to_decide(self, now: float) -> bool:
        """No job waits, no reservation's window is open and the policy has nothing of its own to hand
        over: a policy starts only waiting jobs, and stops running ones only to make room for a waiting
        job or a reservation, so it is not asked (most passes of a busy day end a job while nothing
        waits)."""
        return (not self.queue.index.queued_count and not any(r.start <= now < r.end for r in self._reservations)
                and not has_pending(self.policy))

    def _idle(self, t0: float, phases: dict[str, float], finished: tuple[int, ...]) -> TickReport:
        """The pass in which there is nothing to decide: nothing starts, waits or is planned."""
        self.planned = {}
        return self._report(t0, self.clock.now(), finished, phases)

    def _report(self, t0: float, t: float, finished: tuple[int, ...], phases: dict[str, float],
                **outcome) -> TickReport:
        """The report of the pass from ``t0`` to ``t``, kept as ``last_tick`` (``_reported``); ``outcome``:
        its starts, rejections and waiting jobs, where it has any."""
        self.last_tick = TickReport(time=t0, duration_s=t - t0, policy=self.policy.name, finished=finished,
                                    phases_s=phases, **outcome,
                                    unrecorded=tuple(sorted(self._unrecorded)) if self._unrecorded else ())
        return self._reported(self.last_tick)

    def _reported(self, report: TickReport) -> TickReport:
        """The pass's report, or ``UnrecordedEnds`` if an end could not be stored, so that whoever runs
        the passes (the service keeps ``last_error``) does not take the pass for a clean one."""
        if report.unrecorded:
            raise UnrecordedEnds(report, self._unrecorded)
        return report

    def _collect(self, now: float) -> tuple[int, ...]:
        """Record every end the executor reports in one commit (one fsync however many ended), and let
        the executor forget them once it is on disk. An end that cannot be stored (its own write failed,
        or the commit) stays with the executor, its job keeps its GPUs, and the next pass tries again."""
        ends = self.executor.poll(now)
        if not ends and not self._launched:
            return ()
        recorded: list[tuple[int, Job | None]] = []
        try:
            with self._committing():
                again = self._record_starts(list(self._launched.values()))
                for end in ends:
                    try:
                        with self._committing():
                            recorded.append((end.job_id, self._store_end(end)))
                    except Exception as exc:  # this end alone: the others are recorded
                        self._unrecordable(end.job_id, exc)
        except Exception as exc:  # the commit failed: none of it is stored, nor kept in memory
            for end in ends:
                self._unrecordable(end.job_id, exc)
            return ()
        self._launched.clear()
        self._started(again)
        finished = []
        for job_id, job in recorded:
            self._deadlines.pop(job_id, None)
            self.executor.forget(job_id)
            if job is not None:
                finished.append(job.id)
        return tuple(finished)

    def follow_nodes(self, now: float) -> None:
        """With an executor that spans nodes (Ray), the inventory is what its node agents report: a node
        that joined brings its GPUs, one that left takes them away. Called after the collect, so that
        the ends of a lost node's jobs (requeued, no retry used) are recorded before its GPUs go."""
        nodes_of = getattr(self.executor, "nodes", None)
        if nodes_of is None:
            return
        reported = nodes_of()
        if reported is not None:
            self.inventory.follow(reported, now=now)

    def _record(self, end: JobExit, note: str = "") -> Job | None:
        """Store the end of a job (in a commit of its own), then let the executor forget it. If the write
        fails, the executor keeps the end (and the job its GPUs) for the next pass, and the pass reports it."""
        try:
            with self._committing():
                job = self._store_end(end, note)
        except Exception as exc:  # a failed write (disk full, read-only, locked): keep the end
            self._unrecordable(end.job_id, exc)
            return None
        self._deadlines.pop(end.job_id, None)
        self.executor.forget(end.job_id)
        return job

    def _store_end(self, end: JobExit, note: str = "") -> Job | None:
        """The job's end, written (not yet committed); None if it is not this core's running job."""
        job = self.queue.store.get_job(end.job_id)
        if job is None or job.status != _RUNNING:
            return None  # already recorded, or not this core's job: the executor forgets it
        why = end.why
        note = f"{why}; {note}" if why and note else why or note  # (the two, either, or neither)
        return self.queue.finish(job, end.exit_code, now=end.end_time, lost=end.lost, note=note)

    def _unrecordable(self, job_id: int, exc: BaseException) -> None:
        log.warning("job %s ended but its end could not be recorded (%s: %s); keeping it for the next pass",
                    job_id, type(exc).__name__, exc)
        self._unrecorded[job_id] = f"{type(exc).__name__}: {exc}"

    def _put_back(self, before: Mapping[int, Job | None]) -> None:
        """A commit failed and the store put these jobs back as they were: so does the queue's index."""
        for job in before.values():
            if job is not None:
                self.queue.index.put(job)

    def _committing(self, launched: Sequence[Launch] = ()) -> _Committing:
        """The block's writes in one commit; if it fails, the index is put back with the store, and what
        became of the starts of ``launched`` is recorded by the next pass (the executor runs them)."""
        return _Committing(self, launched)

    def _enforce_time_limits(self, now: float) -> None:
        """Stop jobs past their time limit. The deadline is kept on the monotonic clock from the moment
        the job started (or, for a job adopted after a restart, from its wall-clock start once), so
        that a step of the system clock neither shortens nor extends it."""
        timed = self.queue.index.timed()
        self._next_limit = None
        if not timed and not self._deadlines:
            return  # (no job has a time limit: most passes of most queues)
        mono = self.clock.monotonic()
        deadlines: dict[int, tuple[float, float]] = {}
        for job in timed:
            if job.status != _RUNNING or job.time_limit_s is None or job.start_time is None:
                continue
            deadline = self._deadlines.get(job.id)
            if deadline is None or deadline[0] != job.start_time:
                deadline = (job.start_time, mono + job.time_limit_s - max(0.0, now - job.start_time))
            deadlines[job.id] = deadline
            if job.stop_reason is None and mono < deadline[1]:
                self._next_limit = deadline[1] if self._next_limit is None else min(self._next_limit, deadline[1])
            if job.stop_reason is None and mono >= deadline[1]:
                self.queue.update(job, now=now, kind="stopping", stop_reason=StopReason.TIME_LIMIT,
                                  message=f"{job.display_name}: reached its time limit of {job.time_limit_s:g} s; "
                                  f"SIGTERM, then SIGKILL after {self.grace_s:g} s")
                self.executor.stop(job.id, now, self.grace_s)
        self._deadlines = deadlines

    def next_time_limit_in(self) -> float | None:
        """Seconds until the next running job reaches its time limit (None: no job has one), so that
        whoever runs the passes can run one then."""
        due = self._next_limit
        return None if due is None else max(0.0, due - self.clock.monotonic())

    def _reserve(self, snapshot: Snapshot, accepted, notes: tuple[tuple[str, str], ...], now: float) -> list[Job]:
        """Reserve the GPUs of the accepted jobs in the store, all in one commit, before any starts."""
        reserved: list[Job] = []
        if not accepted and not notes:
            return reserved  # (most passes start nothing) nothing to write, so no commit
        told = self.queue.store.keeps_events  # (a message no event keeps is not worth its words)
        with self._committing():
            for kind, message in notes:
                self.queue.store.add_event(Event(time=snapshot.now, kind=kind, message=message))
            for acc in accepted:
                job = snapshot.jobs_by_id[acc.proposal.job_id]
                try:
                    reserved.append(self.queue.transition(
                        job, _SCHEDULED, now=now, allocation=acc.allocation,
                        message=f"{job.display_name}: reserved {acc.allocation.describe()} ({acc.proposal.by})"
                        if told else ""))
                except GpuConflict as exc:  # the store's own guard; the validator should have caught it
                    self.queue.store.add_event(Event(time=now, kind="conflict", job_id=job.id, message=str(exc)))
        return reserved

    def _launch(self, reserved: list[Job], now: float) -> list[Launch]:
        """Start each reserved job through the executor: all at once where it can (``start_many``: the tmux
        executor opens their windows back to back), else one by one. Each start succeeds or fails alone."""
        start_many = getattr(self.executor, "start_many", None)
        if start_many is not None and len(reserved) > 1:
            results = start_many([(job, job.allocation) for job in reserved], now)
        else:
            results = []
            for job in reserved:
                try:
                    results.append(self.executor.start(job, job.allocation, now))
                except StartError as exc:
                    results.append(exc)
        return [Launch(job, now, None, f"could not start: {result}") if isinstance(result, StartError)
                else Launch(job, now, result) for job, result in zip(reserved, results)]

    def _record_starts(self, launched: Sequence[Launch]) -> list[Job]:
        """Write what became of each start: running, or a failed attempt. Also, in the next pass's
        commit of the ends (before them: a job may have ended since), the starts of a pass whose commit
        failed, where the job is still reserved."""
        started = []
        told = self.queue.store.keeps_events
        for launch in launched:
            job = self.queue.store.get_job(launch.job.id)
            if job is None or job.status != _SCHEDULED:
                continue
            now = launch.time
            if launch.log_path is None:
                self.queue.fail_attempt(job, now=now, exit_code=None, why=launch.why)
                continue
            started.append(self.queue.transition(job, _RUNNING, now=now, log_path=launch.log_path,
                                                 message=f"{job.display_name}: running on {job.allocation.describe()}"
                                                 if told else ""))
        return started

    def _started(self, started: Sequence[Job]) -> None:
        """Jobs whose start is stored: their time limits are kept from now on."""
        for job in started:
            if job.time_limit_s is not None and job.start_time is not None:
                self._deadlines[job.id] = deadline = (job.start_time, self.clock.monotonic() + job.time_limit_s)
                self._next_limit = deadline[1] if self._next_limit is None else min(self._next_limit, deadline[1])

    def _preempt(self, snapshot: Snapshot, preemptions: tuple[Preemption, ...], now: float) -> None:
        """Stop each victim the validator agrees to (SIGTERM, grace to checkpoint, SIGKILL); it is
        requeued with the same id when its process ends (``JobQueue.finish``)."""
        for p in preemptions:
            problem = check_preemption(snapshot, p)
            if problem is not None:
                self.queue.store.add_event(Event(time=now, kind="rejected", job_id=p.job_id,
                                                 message=f"preemption refused: {problem}"))
                continue
            job = snapshot.jobs_by_id[p.job_id]
            self.queue.update(job, now=now, kind="preempting", stop_reason=StopReason.PREEMPT, preempted_for=p.for_job,
                              message=f"{job.display_name}: {p.why}; SIGTERM, then SIGKILL after "
                              f"{self.preempt_grace_s:g} s, then requeued")
            self.executor.stop(job.id, now, self.preempt_grace_s)

    def _explain(self, seen: Snapshot, decisions: Decisions, rejected: tuple[Rejection, ...], accepted: set[int],
                 *, now: float) -> int:
        """Store why each waiting job waits; returns how many wait.

        The jobs the policy examined get its reason (or the validator's refusal). Every other job
        waits in line, and only those whose stored reason still says something else are rewritten, so
        this costs what the policy read, not the queue's length. Accepted jobs that failed to start
        carry their reason from the retry path; jobs that arrived after the policy looked keep theirs
        until the next pass.
        """
        for r in rejected:
            self.queue.store.add_event(Event(time=now, kind="rejected", job_id=r.proposal.job_id,
                                             message=f"{r.proposal.by}'s proposal refused: {r.explain()}",
                                             data={"codes": [c.value for c in r.codes]}))
        waiting = decisions.waiting
        reasons = dict(waiting.examined if isinstance(waiting, Reasons) else waiting)
        for r in rejected:
            reasons[r.proposal.job_id] = Wait(PendingReason.PRIORITY, f"the validator refused its placement: {r.explain()}")
        index = self.queue.index
        for job_id in index.explained_ids() - reasons.keys():
            looked = seen.jobs_by_id.get(job_id)
            if looked is not None and looked.status == _QUEUED:
                reasons[job_id] = standing_wait(seen, looked)
        for job_id, wait in reasons.items():
            job = index.get(job_id)
            if job is None or job.status != _QUEUED or job_id in accepted:
                continue
            wait = begin_time_wait(job, now) or wait
            self.queue.set_pending(job, wait.reason, wait.message)
        return index.queued_count

    def _hold_all(self, now: float) -> int:
        queued = [j for j in self.queue.active() if j.status == JobStatus.QUEUED]
        for job in queued:
            self.queue.set_pending(job, PendingReason.HELD, HELD_MESSAGE)
        return len(queued)
