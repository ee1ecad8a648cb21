"""The tick end to end on the simulated clock and executor: start, finish, retry, stop, restart."""

import pytest

from tools.models import JobStatus, PendingReason
from tools.orchestrator import InvalidJob
from tools.queue import Backoff, IllegalTransition
from tools.sim_executor import SimExecutor
from tools.store import SqliteStore

from tests.builders import spec
from tests.cores import make_core

S = JobStatus


def make(tmp_path, *, nodes={"n1": 4}, policy="priority", durations=None, codes=None, store=None):
    executor = SimExecutor(
        duration_of=lambda job: (durations or {}).get(job.id),
        exit_code_of=lambda job: (codes or {}).get(job.id, 0),
    )
    core = make_core(nodes=nodes, policy=policy, store=store or SqliteStore(tmp_path / "herd.db"), executor=executor,
                     grace_s=10)
    core.queue.backoff = Backoff(base_s=5, factor=2, max_s=60)
    return core.orchestrator, core.clock, executor


def status(orch, job_id):
    return orch.queue.get(job_id).status


def test_jobs_start_in_priority_order_and_finish(tmp_path):
    orch, clock, sim = make(tmp_path, durations={1: 10, 2: 10, 3: 10})
    a, b, c = orch.submit(spec(2, 1)), orch.submit(spec(2, 9)), orch.submit(spec(2, 5))
    report = orch.tick()
    assert report.started == (b.id, c.id)
    assert status(orch, a.id) == S.QUEUED
    assert orch.queue.get(a.id).pending_reason == PendingReason.RESOURCES
    clock.advance(10)
    report = orch.tick()
    assert set(report.finished) == {b.id, c.id} and report.started == (a.id,)
    clock.advance(10)
    orch.tick()
    assert [status(orch, j) for j in (1, 2, 3)] == [S.COMPLETED] * 3
    kinds = [e.kind for e in orch.queue.store.events(job_id=b.id)]
    assert kinds == ["submitted", "scheduled", "running", "completed"]


def test_failed_job_is_retried_after_backoff(tmp_path):
    orch, clock, sim = make(tmp_path, durations={1: 5}, codes={1: 2})
    job = orch.submit(spec(max_retries=1))
    orch.tick()
    clock.advance(5)
    orch.tick()
    job = orch.queue.get(job.id)
    assert (job.status, job.pending_reason, job.not_before) == (S.QUEUED, PendingReason.BEGIN_TIME, 10.0)
    clock.advance(1)
    assert orch.tick().started == ()  # still backing off
    clock.advance(4)
    assert orch.tick().started == (job.id,)
    clock.advance(5)
    orch.tick()
    job = orch.queue.get(job.id)
    assert (job.status, job.exit_code, job.attempts) == (S.FAILED, 2, 2)


def test_time_limit_stops_the_job_and_fails_it(tmp_path):
    orch, clock, sim = make(tmp_path)
    job = orch.submit(spec(time_limit_s=30))
    orch.tick()
    clock.advance(29)
    orch.tick()
    assert status(orch, job.id) == S.RUNNING
    clock.advance(1)
    orch.tick()  # sends the stop
    orch.tick()  # sees the exit
    job = orch.queue.get(job.id)
    assert (job.status, job.exit_code) == (S.FAILED, 143)


def test_cancel_queued_and_running(tmp_path):
    orch, clock, sim = make(tmp_path, nodes={"n1": 1})
    running, queued = orch.submit(spec()), orch.submit(spec())
    orch.tick()
    assert orch.cancel(queued.id).status == S.CANCELLED
    assert orch.cancel(running.id).stop_reason == "cancel"
    orch.tick()
    assert status(orch, running.id) == S.CANCELLED
    with pytest.raises(IllegalTransition, match="nothing to cancel"):
        orch.cancel(running.id)


def test_start_failure_releases_gpus_and_requeues(tmp_path):
    orch, clock, sim = make(tmp_path)
    sim.fail_next_start = "tmux is not installed"
    job = orch.submit(spec(gpus=4))
    assert orch.tick().started == ()
    job = orch.queue.get(job.id)
    assert job.status == S.QUEUED and "could not start: tmux is not installed" in job.pending_message
    assert orch.snapshot().holders == {}
    clock.advance(5)
    assert orch.tick().started == (job.id,)


def test_stopped_orchestrator_starts_nothing_and_says_so(tmp_path):
    orch, clock, sim = make(tmp_path)
    orch.enabled = False
    job = orch.submit(spec())
    orch.tick()
    job = orch.queue.get(job.id)
    assert (job.status, job.pending_reason) == (S.QUEUED, PendingReason.HELD)
    orch.enabled = True
    assert orch.tick().started == (job.id,)


def test_impossible_submission_is_refused(tmp_path):
    orch, *_ = make(tmp_path, nodes={"a": 4, "b": 8})
    with pytest.raises(InvalidJob, match="asks for 9 GPUs but the largest node has 8"):
        orch.submit(spec(gpus=9))
    assert orch.queue.store.list_jobs() == []


def test_complete_by_hand_frees_gpus(tmp_path):
    orch, clock, sim = make(tmp_path, nodes={"n1": 1})
    a, b = orch.submit(spec()), orch.submit(spec())
    orch.tick()
    assert orch.complete(a.id, exit_code=0).status == S.COMPLETED
    assert orch.tick().started == (b.id,)
    with pytest.raises(IllegalTransition):
        orch.complete(a.id)


def test_restart_adopts_running_and_records_ended(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    orch, clock, sim = make(tmp_path, store=store)
    a, b = orch.submit(spec()), orch.submit(spec(max_retries=0))
    orch.tick()
    # The service dies; job a keeps running, job b's process is gone without an exit code.
    sim._running.pop(b.id)
    orch2 = make_core(store=store, executor=sim, clock=clock).orchestrator
    orch2.reconcile()
    assert status(orch2, a.id) == S.RUNNING
    job_b = orch2.queue.get(b.id)
    # Lost with the executor, not failed: requeued at once, the attempt not counted, no retry used.
    assert (job_b.status, job_b.exit_code, job_b.attempts, job_b.not_before) == (S.QUEUED, None, 0, None)
    assert sim.poll(clock.now()) == []  # recorded, so forgotten
    assert orch2.tick().started == (b.id,)


def test_a_stop_during_the_decision_starts_nothing(tmp_path):
    orch, clock, sim = make(tmp_path)
    job = orch.submit(spec())
    policy = orch.policy

    class StoppedMeanwhile:
        name = policy.name

        def order(self, snapshot):
            return policy.order(snapshot)

        def decide(self, snapshot):
            orch.enabled = False  # POST /orchestrator/stop arrives while the policy decides
            return policy.decide(snapshot)

    orch.policy = StoppedMeanwhile()
    assert orch.tick().started == ()
    assert orch.queue.get(job.id).pending_reason == PendingReason.HELD
