"""A stateful property test of the whole core: random submits (with priorities, retries, time limits,
begin times, dependencies and preemptibility), cancels, priority changes, ticks, job ends, drains,
reservations and the passage of time, against the real store, queue, resource manager, policies,
validator and orchestrator, on the simulated clock, under cluster rules with groups, small quotas and
a short minimum run time before preemption. After every step the invariants below must hold.

The simulated executor honours a stop at once: a job that is stopped (cancel, time limit, preemption)
ends at the moment of the stop and is collected by the next tick. So right after a tick, a job still
holding GPUs it should not hold must be one that this very tick is stopping."""

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from policies.ordering import POLICIES
from policies.reservations import InvalidReservation
from policies.rules import Rules
from tools.inventory import NodeDeclaration
from tools.models import (
    HOLDS_GPUS, TERMINAL, JobSpec, JobStatus, PendingReason, Reservation, StopReason,
)
from tools.orchestrator import InvalidJob
from tools.queue import IllegalTransition
from tools.sim_executor import SimExecutor
from tools.store import QueueFull, SqliteStore

from tests.cores import make_core

NODES = [NodeDeclaration(name="a", gpus=4), NodeDeclaration(name="b", gpus=2)]
GPUS = [(n.name, i) for n in NODES for i in range(n.gpus)]
USERS = ["ana", "bo", "cy", "di"]
GROUPS = {"ana": "lab", "bo": "lab", "cy": "ops"}  # di belongs to no group
USER_QUOTA = {"ana": 3}  # the others get the default quota
DEFAULT_USER_QUOTA = 4
GROUP_QUOTA = {"lab": 4, "ops": 2}


def held_gpus(jobs) -> tuple[dict[str, int], dict[str, int]]:
    """GPUs held right now (scheduled or running jobs, stopping ones included), per user and per group."""
    users: dict[str, int] = {}
    groups: dict[str, int] = {}
    for j in jobs:
        if j.status in HOLDS_GPUS:
            users[j.user] = users.get(j.user, 0) + j.gpu_count
            if j.user in GROUPS:
                groups[GROUPS[j.user]] = groups.get(GROUPS[j.user], 0) + j.gpu_count
    return users, groups


def sometimes(strategy, default):
    """``default`` three times in four, else a draw from ``strategy``."""
    return st.one_of(st.just(default), st.just(default), st.just(default), strategy)


@st.composite
def job_specs(draw, now: float, ids: list[int]) -> JobSpec:
    """A job of one of the users; most are plain, some may not start yet or run after earlier jobs."""
    some_ids = st.lists(st.sampled_from(ids), min_size=1, max_size=2, unique=True) if ids else st.just([])
    after = draw(sometimes(some_ids, []))
    after_any = [i for i in draw(sometimes(some_ids, [])) if i not in after]  # a job is named in one at most
    return JobSpec(
        user=draw(st.sampled_from(USERS)),
        command="train",
        gpu_count=draw(st.sampled_from([1, 1, 2, 2, 3, 4, 5])),  # 5 fits no node: refused
        priority=draw(st.integers(1, 10)),
        max_retries=draw(st.integers(0, 2)),
        time_limit_s=draw(st.none() | st.floats(1, 100)),
        est_duration_s=draw(st.none() | st.floats(1, 100)),
        preemptible=draw(sometimes(st.just(False), True)),
        begin_at=draw(sometimes(st.floats(-10, 120).map(lambda d: max(0.0, now + d)), None)),
        after=tuple(after),
        after_any=tuple(after_any),
    )


class CoreMachine(RuleBasedStateMachine):
    @initialize(
        policy=st.sampled_from(sorted(POLICIES)),
        quotas=st.booleans(),
        gap=st.sampled_from([1, 2]),
        min_runtime=st.sampled_from([0.0, 5.0, 20.0]),
        default_runtime=st.sampled_from([10.0, 30.0, 3600.0]),
        busy=st.lists(st.tuples(st.sampled_from(USERS), st.integers(1, 3), st.integers(1, 6), st.booleans()),
                      max_size=4),
    )
    def build(self, policy, quotas, gap, min_runtime, default_runtime, busy):
        self.durations: dict[int, float | None] = {}
        self.sim = SimExecutor(duration_of=lambda job: self.durations[job.id])
        self.rules = Rules(
            groups=GROUPS,
            user_quota=USER_QUOTA if quotas else {},
            group_quota=GROUP_QUOTA if quotas else {},
            default_user_quota=DEFAULT_USER_QUOTA if quotas else None,
            default_runtime_s=default_runtime,
            backfill_depth=5,
            preempt_priority_gap=gap,
            preempt_min_runtime_s=min_runtime,
        )
        core = make_core(nodes=NODES, policy=policy, rules=self.rules, store=SqliteStore(":memory:"), executor=self.sim,
                         max_queue_size=12, grace_s=5, preempt_grace_s=3)
        self.clock, self.store, self.resources, self.orch = core.clock, core.store, core.resources, core.orchestrator
        self.final: dict[int, object] = {}  # terminal jobs as first seen
        self.submitted = 0
        self.attempts_seen: dict[int, int] = {}  # job id -> attempts already checked at their start
        self.preempting: dict[int, int] = {}  # job id -> its preemptions when its preemption was seen
        self.made_room_for: dict[int, int] = {}  # preempted job id -> the waiting job it was stopped for
        self.ticked_at: tuple[float, tuple[Reservation, ...]] | None = None  # (now, reservations) of the last tick
        self.cancelled_since_tick = False
        # Often start with jobs of low and middle priority queued, which the first tick starts and which
        # run until stopped: later urgent jobs then have something to preempt.
        for user, gpus, priority, preemptible in busy:
            try:
                job = self.orch.submit(JobSpec(user=user, command="busy", gpu_count=gpus, priority=priority,
                                               preemptible=preemptible))
                self.submitted += 1
                self.durations[job.id] = None
            except InvalidJob:
                pass

    def jobs(self):
        return self.store.list_jobs()

    def just_ticked(self) -> bool:
        """Whether nothing that could make a holder illegal (time, a new reservation) happened since
        the last tick."""
        return self.ticked_at == (self.clock.now(), self.orch.reservations)

    # -- rules -----------------------------------------------------------------------------------
    @rule(data=st.data(), count=st.integers(1, 3))
    def submit(self, data, count):
        """Submit up to three jobs at once; most are plain, some start later or after other jobs."""
        for _ in range(count):
            spec = data.draw(job_specs(self.clock.now(), [j.id for j in self.jobs()]))
            # How long each attempt runs, in simulated seconds; None: until job_ends or a stop.
            duration = data.draw(st.one_of(st.none(), st.floats(1, 100), st.floats(1, 100)))  # 1 in 3: None
            try:
                job = self.orch.submit(spec)
                self.submitted += 1
            except (InvalidJob, QueueFull):
                continue
            self.durations[job.id] = duration

    @rule(user=st.sampled_from(USERS), gpus=st.sampled_from([1, 1, 2, 2, 3, 4]))
    def submit_urgent(self, user, gpus):
        """A job of the highest priority, such as preempts the preemptible ones."""
        try:
            job = self.orch.submit(JobSpec(user=user, command="urgent", gpu_count=gpus, priority=10))
            self.submitted += 1
        except (InvalidJob, QueueFull):
            return
        self.durations[job.id] = 20.0

    @rule(data=st.data())
    def cancel(self, data):
        jobs = self.jobs()
        if jobs:
            job = data.draw(st.sampled_from(jobs))
            try:
                self.orch.cancel(job.id)
            except IllegalTransition:
                assert job.status in TERMINAL
            self.preempting.pop(job.id, None)  # a cancel overrides a preemption in progress
            self.made_room_for.pop(job.id, None)
            self.cancelled_since_tick = True  # a queued job ends at once: its dependents' reasons are stale

    @rule(data=st.data(), prio=st.integers(1, 10))
    def change_priority(self, data, prio):
        jobs = self.jobs()
        if jobs:
            job = data.draw(st.sampled_from(jobs))
            try:
                self.orch.set_priority(job.id, prio)
            except IllegalTransition:
                assert job.status != JobStatus.QUEUED

    @rule()
    def tick(self):
        self.orch.tick()
        self.ticked_at = (self.clock.now(), self.orch.reservations)
        self.cancelled_since_tick = False

    @rule(dt=st.floats(0.1, 60))
    def time_passes(self, dt):
        self.clock.advance(dt)

    @rule(dt=st.floats(1, 30))
    def time_passes_between_ticks(self, dt):
        """Two ticks around a pause: jobs start, pass their minimum run time, then get preempted."""
        self.tick()
        self.check_every_invariant()
        self.clock.advance(dt)
        self.tick()

    def check_every_invariant(self):
        for name in dir(type(self)):
            method = getattr(type(self), name)
            if callable(method) and hasattr(method, "hypothesis_stateful_invariant"):
                method(self)

    @precondition(lambda self: self.sim.running)
    @rule(data=st.data(), code=st.sampled_from([0, 0, 1, 137]))
    def job_ends(self, data, code):
        job_id = data.draw(st.sampled_from(sorted(self.sim.running)))
        self.sim.finish(job_id, code, self.clock.now())

    @rule(gpu=st.sampled_from(GPUS), drain=st.booleans())
    def drain(self, gpu, drain):
        (self.resources.drain if drain else self.resources.undrain)(*gpu, now=self.clock.now())

    @precondition(lambda self: len(self.orch.reservations) < 2)  # more would leave little for anyone else
    @rule(node=st.sampled_from(NODES), data=st.data(), for_user=st.booleans(),
          start_in=st.floats(-10, 0) | st.floats(0, 60), length=st.floats(1, 60))  # half begun already
    def reserve(self, node, data, for_user, start_in, length):
        gpus = data.draw(st.lists(st.integers(0, node.gpus - 1), min_size=1, max_size=node.gpus, unique=True))
        holder = data.draw(st.sampled_from(USERS if for_user else sorted(set(GROUPS.values()))))
        start = self.clock.now() + start_in
        reservation = Reservation(node=node.name, gpus=tuple(sorted(gpus)), start=start, end=start + length,
                                  **({"user": holder} if for_user else {"group": holder}))
        try:
            saved = self.orch.reserve(reservation)
        except InvalidReservation:
            return
        assert saved.id and saved in self.orch.reservations
        event("reservation made")

    @precondition(lambda self: self.orch.reservations)
    @rule(data=st.data())
    def unreserve(self, data):
        r = data.draw(st.sampled_from(self.orch.reservations))
        assert self.orch.unreserve(r.id) == r
        assert r not in self.orch.reservations

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def no_gpu_is_held_twice(self):
        held = [(j.allocation.node, g) for j in self.jobs() if j.status in HOLDS_GPUS for g in j.allocation.gpus]
        assert len(held) == len(set(held))

    @invariant()
    def holders_hold_exactly_what_they_asked(self):
        for j in self.jobs():
            if j.status in HOLDS_GPUS:
                assert j.allocation is not None and len(set(j.allocation.gpus)) == j.gpu_count
                assert all((j.allocation.node, g) in GPUS for g in j.allocation.gpus)

    @invariant()
    def terminal_states_never_change(self):
        for j in self.jobs():
            if j.id in self.final:
                assert j == self.final[j.id]
            elif j.status in TERMINAL:
                self.final[j.id] = j

    @invariant()
    def queued_jobs_have_a_reason(self):
        for j in self.jobs():
            if j.status == JobStatus.QUEUED:
                assert j.pending_reason is not None and j.pending_message

    @invariant()
    def every_acknowledged_submission_exists(self):
        # Also: a preempted job comes back under its own id, never as a new job.
        assert len(self.jobs()) == self.submitted

    @invariant()
    def executor_and_store_agree(self):
        running = {j.id for j in self.jobs() if j.status == JobStatus.RUNNING}
        assert set(self.sim.running) <= running | set(self.final)

    @invariant()
    def quotas_are_never_exceeded(self):
        users, groups = held_gpus(self.jobs())
        for user, n in users.items():
            quota = self.rules.quota_of_user(user)
            assert quota is None or n <= quota, f"user {user} holds {n} GPUs, quota {quota}"
        for group, n in groups.items():
            quota = self.rules.group_quota.get(group)
            assert quota is None or n <= quota, f"group {group} holds {n} GPUs, quota {quota}"

    @invariant()
    def reserved_gpus_are_held_only_by_admitted_or_stopping_jobs(self):
        if not self.just_ticked():
            return
        now = self.clock.now()
        for r in self.orch.reservations:
            if not r.start <= now < r.end:
                continue
            for j in self.jobs():
                if j.status not in HOLDS_GPUS or j.allocation.node != r.node or not set(j.allocation.gpus) & set(r.gpus):
                    continue
                assert r.admits(j.user, GROUPS.get(j.user)) or j.stop_reason is not None, (
                    f"job {j.id} of {j.user} holds GPUs of reservation {r} at t={now}")

    @invariant()
    def every_start_respects_begin_time_dependencies_and_reservations(self):
        """Checked once per attempt, right after the tick that started it (an attempt always lives
        past the step that started it: ends are collected only at the start of the next tick)."""
        for j in self.jobs():
            if j.attempts <= self.attempts_seen.get(j.id, 0):
                continue
            assert j.attempts == self.attempts_seen.get(j.id, 0) + 1, "two attempts started in one step"
            self.attempts_seen[j.id] = j.attempts
            assert j.status == JobStatus.RUNNING and j.start_time == self.clock.now()
            start = j.start_time
            event("attempt started" + " after dependencies" * bool(j.depends_on) + " after a begin time" * bool(j.begin_at))
            if j.begin_at is not None:
                assert start >= j.begin_at, f"job {j.id} started at {start}, before its begin time {j.begin_at}"
            if j.not_before is not None:
                assert start >= j.not_before
            for dep in j.after:
                d = self.store.get_job(dep)
                assert d.status == JobStatus.COMPLETED and d.end_time <= start, (
                    f"job {j.id} started at {start} after={dep}, which is {d.status.value}")
            for dep in j.after_any:
                d = self.store.get_job(dep)
                assert d.status in TERMINAL and d.end_time <= start, (
                    f"job {j.id} started at {start} after_any={dep}, which is {d.status.value}")
            beneficiary = self.made_room_for.pop(j.id, None)
            if beneficiary is not None:  # its GPUs went to the job it was stopped for, not back to it
                other = self.store.get_job(beneficiary)
                assert other.status != JobStatus.QUEUED or other.pending_reason != PendingReason.RESOURCES, (
                    f"job {j.id} started again while job {beneficiary}, which it was preempted for, still waits "
                    "for GPUs")
            end = start + self.rules.runtime(j)
            for r in self.orch.reservations:
                if j.preemptible and r.start > start:
                    continue  # a preemptible job may use them until the window begins (it is stopped then)
                if r.node == j.allocation.node and r.covers(start, end) and not r.admits(j.user, GROUPS.get(j.user)):
                    assert not set(r.gpus) & set(j.allocation.gpus), (
                        f"job {j.id} of {j.user} started on GPUs of {r} and would run until {end}")

    @invariant()
    def preemption_requeues_under_the_same_id(self):
        now = self.clock.now()
        for j in self.jobs():
            if j.stop_reason == StopReason.PREEMPT:
                assert j.status == JobStatus.RUNNING
                if j.id not in self.preempting:
                    # Seen right after the tick that decided it: a victim is preemptible and has run
                    # its minimum time, or holds GPUs of a reservation that does not admit it.
                    self.preempting[j.id] = j.preemptions
                    if j.preempted_for is not None:
                        self.made_room_for[j.id] = j.preempted_for
                    reserved = any(
                        r.start <= now < r.end and r.node == j.allocation.node and set(r.gpus) & set(j.allocation.gpus)
                        and not r.admits(j.user, GROUPS.get(j.user)) for r in self.orch.reservations)
                    event("preempted for a reservation" if reserved else "preempted for a waiting job")
                    assert reserved or (j.preemptible and now - j.start_time >= self.rules.preempt_min_runtime_s), (
                        f"job {j.id} preempted: preemptible={j.preemptible}, ran {now - j.start_time} s")
            elif j.id in self.preempting:
                before = self.preempting.pop(j.id)
                assert j.status in (JobStatus.QUEUED, JobStatus.RUNNING), (
                    f"preempted job {j.id} ended {j.status.value} instead of being requeued")
                assert j.preemptions == before + 1, f"job {j.id} has {j.preemptions} preemptions, had {before}"
                event(f"preempted job requeued, then {j.status.value}")
                assert j.attempts - j.preemptions <= j.max_retries + 1  # preemptions use up no retry

    @invariant()
    def dependency_reasons_are_true(self):
        for j in self.jobs():
            if j.status != JobStatus.QUEUED:
                continue
            deps = {d: self.store.get_job(d) for d in j.depends_on}
            if j.pending_reason == PendingReason.DEPENDENCY_NEVER:
                assert any(deps[d].status in (JobStatus.FAILED, JobStatus.CANCELLED) for d in j.after)
            if j.pending_reason == PendingReason.DEPENDENCY and self.just_ticked() and not self.cancelled_since_tick:
                assert any(d.status not in TERMINAL for d in deps.values())

    @invariant()
    def quota_reasons_are_true(self):
        if not self.just_ticked():
            return
        users, groups = held_gpus(self.jobs())
        for j in self.jobs():
            if j.status == JobStatus.QUEUED and j.pending_reason == PendingReason.QUOTA_EXCEEDED:
                user_quota = self.rules.quota_of_user(j.user)
                group_quota = self.rules.group_quota.get(GROUPS.get(j.user))
                over_user = user_quota is not None and users.get(j.user, 0) + j.gpu_count > user_quota
                over_group = group_quota is not None and groups.get(GROUPS[j.user], 0) + j.gpu_count > group_quota
                event("waits over quota")
                assert over_user or over_group, f"job {j.id} says {j.pending_message!r}"


TestCore = pytest.mark.slow(CoreMachine.TestCase)
TestCore.settings = settings(max_examples=100, stateful_step_count=50, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


# -- Preemptions found wasted while exploring the machine above (fixed since) -------------------
# Liveness, not safety: no invariant above broke, but a victim lost its work and the job it was
# stopped for gained nothing.

def sim_orchestrator(policy: str = "priority", gpus: int = 4):
    core = make_core(nodes={"a": gpus}, policy=policy, rules=Rules(preempt_priority_gap=2, preempt_min_runtime_s=0),
                     store=SqliteStore(":memory:"), preempt_grace_s=3)
    return core.orchestrator, core.clock, core.resources


def ticks(orch, clock, n: int, dt: float = 1.0) -> None:
    for _ in range(n):
        orch.tick()
        clock.advance(dt)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_job_a_victim_was_preempted_for_gets_its_gpus(policy):
    # fcfs, sjf and backfill used to give the GPUs back to the requeued victim (first in their order),
    # and preempt it again every pass.
    orch, clock, _ = sim_orchestrator(policy)
    victim = orch.submit(JobSpec(user="lo", command="x", gpu_count=4, priority=1, preemptible=True))
    ticks(orch, clock, 1, dt=5)
    urgent = orch.submit(JobSpec(user="hi", command="x", gpu_count=4, priority=10))
    ticks(orch, clock, 4)
    assert orch.queue.get(urgent.id).status == JobStatus.RUNNING
    assert (orch.queue.get(victim.id).status, orch.queue.get(victim.id).preemptions) == (JobStatus.QUEUED, 1)


def test_no_job_is_preempted_for_one_a_reservation_keeps_off_the_freed_gpus():
    orch, clock, _ = sim_orchestrator()
    orch.reserve(Reservation(node="a", gpus=(0, 1, 2, 3), user="lo", start=100, end=200))
    victim = orch.submit(JobSpec(user="lo", command="x", gpu_count=4, priority=1, preemptible=True))
    ticks(orch, clock, 1, dt=5)
    orch.submit(JobSpec(user="hi", command="x", gpu_count=4, priority=10))  # would run into the window
    ticks(orch, clock, 4)
    assert orch.queue.get(victim.id).preemptions == 0


def test_no_job_is_preempted_when_its_drained_gpus_would_not_make_room():
    orch, clock, resources = sim_orchestrator()
    victim = orch.submit(JobSpec(user="lo", command="x", gpu_count=2, priority=1, preemptible=True))
    orch.submit(JobSpec(user="other", command="x", gpu_count=2, priority=5))
    orch.tick()
    resources.drain("a", orch.queue.get(victim.id).allocation.gpus[0], now=clock.now())
    clock.advance(5)
    orch.submit(JobSpec(user="hi", command="x", gpu_count=2, priority=10))  # 1 usable GPU would come free
    ticks(orch, clock, 3)
    assert orch.queue.get(victim.id).preemptions == 0


def test_a_victim_does_not_wait_for_a_job_that_can_no_longer_start():
    orch, clock, resources = sim_orchestrator(gpus=2)
    victim = orch.submit(JobSpec(user="lo", command="x", gpu_count=1, priority=1, preemptible=True))
    ticks(orch, clock, 1, dt=5)
    orch.submit(JobSpec(user="hi", command="x", gpu_count=2, priority=10))
    orch.tick()
    assert orch.queue.get(victim.id).stop_reason == StopReason.PREEMPT
    resources.drain("a", 1, now=clock.now())  # a GPU the victim did not hold: the urgent job never fits now
    ticks(orch, clock, 5, dt=60)
    assert orch.queue.get(victim.id).status == JobStatus.RUNNING  # on GPU 0, idle all along
