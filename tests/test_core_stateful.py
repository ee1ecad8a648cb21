"""A stateful property test of the whole core: random submits, cancels, priority changes, ticks, job
ends and drains against the real store, queue, resource manager, policies, validator and
orchestrator, on the simulated clock. After every step the invariants below must hold."""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tools.orchestrator import InvalidJob, Orchestrator
from policies.ordering import POLICIES, get_policy
from tools.clock import SimClock
from tools.gpus import NodeDeclaration, ResourceManager
from tools.models import HOLDS_GPUS, TERMINAL, JobSpec, JobStatus
from tools.queue import IllegalTransition, JobQueue
from tools.sim_executor import SimExecutor
from tools.store import QueueFull, SqliteStore

NODES = [NodeDeclaration(name="a", gpus=4), NodeDeclaration(name="b", gpus=2)]
GPUS = [(n.name, i) for n in NODES for i in range(n.gpus)]


class CoreMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(sorted(POLICIES)))
    def build(self, policy):
        self.clock = SimClock()
        self.store = SqliteStore(":memory:")
        self.resources = ResourceManager(self.store, probe=None)
        self.resources.initialize(0.0, declared=NODES)
        self.sim = SimExecutor()
        self.orch = Orchestrator(
            queue=JobQueue(self.store, max_queued=12),
            inventory=self.resources,
            executor=self.sim,
            clock=self.clock,
            policy=get_policy(policy),
            grace_s=5,
        )
        self.final: dict[int, object] = {}  # terminal jobs as first seen
        self.submitted = 0

    def jobs(self):
        return self.store.list_jobs()

    @rule(gpus=st.integers(1, 5), prio=st.integers(1, 10), user=st.sampled_from(["ana", "bo", "cy"]),
          retries=st.integers(0, 2), limit=st.none() | st.floats(1, 100))
    def submit(self, gpus, prio, user, retries, limit):
        spec = JobSpec(user=user, command="train", gpu_count=gpus, priority=prio, max_retries=retries, time_limit_s=limit)
        try:
            self.orch.submit(spec)
            self.submitted += 1
        except (InvalidJob, QueueFull):
            pass

    @rule(data=st.data())
    def cancel(self, data):
        jobs = self.jobs()
        if jobs:
            job = data.draw(st.sampled_from(jobs))
            try:
                self.orch.cancel(job.id)
            except IllegalTransition:
                assert job.status in TERMINAL

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

    @rule(dt=st.floats(0.1, 60))
    def time_passes(self, dt):
        self.clock.advance(dt)

    @precondition(lambda self: self.sim.running)
    @rule(data=st.data(), code=st.sampled_from([0, 0, 1, 137]))
    def job_ends(self, data, code):
        job_id = data.draw(st.sampled_from(sorted(self.sim.running)))
        self.sim.finish(job_id, code, self.clock.now())

    @rule(gpu=st.sampled_from(GPUS), drain=st.booleans())
    def drain(self, gpu, drain):
        (self.resources.drain if drain else self.resources.undrain)(*gpu, now=self.clock.now())

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
        assert len(self.jobs()) == self.submitted

    @invariant()
    def executor_and_store_agree(self):
        running = {j.id for j in self.jobs() if j.status == JobStatus.RUNNING}
        assert set(self.sim.running) <= running | set(self.final)


TestCore = CoreMachine.TestCase
TestCore.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
