"""The rules through the orchestrator on the simulated clock: preemption, reservations, dependencies,
begin times and quotas, from submission to the effects."""

import pytest

from policies.reservations import InvalidReservation
from policies.rules import Rules
from tools.models import JobStatus, PendingReason, Reservation, StopReason
from tools.orchestrator import InvalidJob
from tools.sim_executor import SimExecutor
from tools.store import SqliteStore

from tests.builders import spec
from tests.cores import make_core

S = JobStatus
HOUR = 3600.0


def make(*, rules=Rules(), nodes={"n1": 4}, durations=None, store=None, policy="multifactor"):
    executor = SimExecutor(duration_of=lambda job: (durations or {}).get(job.id))
    core = make_core(nodes=nodes, policy=policy, rules=rules, store=store, executor=executor, preempt_grace_s=30)
    return core.orchestrator, core.clock, executor


def test_a_preempted_job_is_requeued_with_its_id_and_runs_again():
    orch, clock, sim = make(rules=Rules(preempt_priority_gap=2, preempt_min_runtime_s=600), durations={2: 100})
    low = orch.submit(spec(4, prio=2, preemptible=True, max_retries=0))
    orch.tick()
    clock.advance(300)
    high = orch.submit(spec(2, prio=8))
    orch.tick()
    assert orch.queue.get(low.id).stop_reason is None  # ran 300 s: the minimum runtime protects it
    clock.advance(300)
    orch.tick()
    victim = orch.queue.get(low.id)
    assert victim.stop_reason == StopReason.PREEMPT
    assert "preempting job(s) 1" in orch.queue.get(high.id).pending_message
    clock.advance(1)
    orch.tick()  # the victim's process ended: requeued, and the high-priority job starts on its GPUs
    victim = orch.queue.get(low.id)
    assert (victim.status, victim.preemptions, victim.attempts) == (S.QUEUED, 1, 1)
    assert orch.queue.get(high.id).status == S.RUNNING
    clock.advance(100)
    orch.tick()
    assert orch.queue.get(high.id).status == S.COMPLETED
    again = orch.queue.get(low.id)
    assert (again.status, again.attempts) == (S.RUNNING, 2)  # max_retries=0, yet it runs again
    kinds = [e.kind for e in orch.queue.store.events(job_id=low.id)]
    assert kinds == ["submitted", "scheduled", "running", "preempting", "queued", "scheduled", "running"]


def test_a_reservation_through_the_orchestrator(tmp_path):
    orch, clock, sim = make(store=SqliteStore(tmp_path / "herd.db"))
    r = orch.reserve(Reservation(node="n1", gpus=(0, 1, 2, 3), user="alice", start=HOUR, end=2 * HOUR))
    assert r.id == 1
    bob = orch.submit(spec(1, user="bob", est_duration_s=2 * HOUR))
    orch.tick()
    assert orch.queue.get(bob.id).pending_reason == PendingReason.RESERVATION
    quick = orch.submit(spec(1, user="bob", est_duration_s=HOUR / 2))
    orch.tick()
    assert orch.queue.get(quick.id).status == S.RUNNING  # ends before the window
    reopened = make_core(store=SqliteStore(tmp_path / "herd.db"), executor=sim, clock=clock, policy=orch.policy)
    assert reopened.orchestrator.reservations == (r,)  # kept across a restart
    orch.unreserve(r.id)
    orch.tick()
    assert orch.queue.get(bob.id).status == S.RUNNING


@pytest.mark.parametrize(
    "reservation, message",
    [
        (dict(start=2 * HOUR, end=HOUR), "must end after it starts"),
        (dict(gpus=(7,)), "there is no GPU 7 on node 'n1'"),
        (dict(gpus=()), "at least one GPU"),
        (dict(gpus=(1,), start=0.5 * HOUR), "already reserved for user alice then (reservation 1)"),
    ],
)
def test_a_reservation_that_cannot_be_kept_is_refused(reservation, message):
    orch, clock, _ = make()
    orch.reserve(Reservation(node="n1", gpus=(0, 1), user="alice", start=HOUR, end=2 * HOUR))
    with pytest.raises(InvalidReservation, match=message.replace("(", r"\(").replace(")", r"\)")):
        orch.reserve(Reservation(**(dict(node="n1", gpus=(2,), group="vision", start=HOUR, end=2 * HOUR) | reservation)))
    assert len(orch.reservations) == 1


def test_a_dependency_chain_runs_in_order_and_a_failure_stops_it():
    orch, clock, sim = make(durations={1: 10, 2: 10})
    first = orch.submit(spec())
    second = orch.submit(spec(after=(first.id,)))
    either = orch.submit(spec(after_any=(first.id,)))
    orch.tick()
    assert orch.queue.get(second.id).pending_reason == PendingReason.DEPENDENCY
    clock.advance(10)
    orch.tick()
    assert orch.queue.get(second.id).status == S.RUNNING and orch.queue.get(either.id).status == S.RUNNING
    doomed = orch.submit(spec(max_retries=0))
    after_doomed = orch.submit(spec(after=(doomed.id,)))
    orch.tick()
    sim.finish(doomed.id, 1, clock.now())
    orch.tick()
    orch.tick()
    waiting = orch.queue.get(after_doomed.id)
    assert (waiting.status, waiting.pending_reason) == (S.QUEUED, PendingReason.DEPENDENCY_NEVER)
    with pytest.raises(InvalidJob, match=f"runs after job {doomed.id} completes, but it failed"):
        orch.submit(spec(after=(doomed.id,)))
    with pytest.raises(InvalidJob, match="runs after job 99, which does not exist"):
        orch.submit(spec(after_any=(99,)))


def test_a_deferred_job_starts_at_its_begin_time():
    orch, clock, _ = make()
    job = orch.submit(spec(begin_at=1000.0))
    orch.tick()
    assert orch.queue.get(job.id).pending_reason == PendingReason.BEGIN_TIME
    assert orch.queue.get(job.id).pending_message.startswith("deferred: not before")
    clock.advance(999)
    orch.tick()
    assert orch.queue.get(job.id).status == S.QUEUED
    clock.advance(1)
    orch.tick()
    assert orch.queue.get(job.id).status == S.RUNNING


def test_a_job_larger_than_its_quota_is_refused_at_submission():
    orch, _, _ = make(rules=Rules(user_quota={"alice": 2}, groups={"bob": "vision"}, group_quota={"vision": 1}))
    with pytest.raises(InvalidJob, match="user alice's quota is 2 GPUs at once"):
        orch.submit(spec(3))
    with pytest.raises(InvalidJob, match="group vision's quota is 1 GPUs at once"):
        orch.submit(spec(2, user="bob"))
    assert orch.queue.store.list_jobs() == []


def test_the_backfill_plan_of_the_last_pass_is_kept():
    orch, clock, _ = make(durations={1: HOUR}, policy="backfill")
    orch.submit(spec(2, est_duration_s=HOUR))
    orch.tick()
    head = orch.submit(spec(4))
    orch.tick()
    assert orch.planned == {head.id: HOUR}


class Counting:
    """A policy that counts the passes that ask it."""

    def __init__(self, policy):
        self.policy, self.name, self.asked = policy, policy.name, 0
        self.orderings = policy.orderings

    def order(self, snapshot):
        return self.policy.order(snapshot)

    def decide(self, snapshot):
        self.asked += 1
        return self.policy.decide(snapshot)


def test_a_pass_with_nothing_waiting_asks_the_policy_only_while_a_reservation_window_is_open():
    orch, clock, sim = make()
    orch.policy = counting = Counting(orch.policy)
    orch.reserve(Reservation(node="n1", gpus=(0, 1, 2, 3), user="alice", start=HOUR, end=2 * HOUR))
    bob = orch.submit(spec(4, user="bob", preemptible=True, est_duration_s=3 * HOUR))
    assert orch.tick().started == (bob.id,) and counting.asked == 1
    clock.advance(HOUR / 2)
    report = orch.tick()  # nothing waits, no window is open: nothing to decide
    assert (counting.asked, report.started, report.waiting, orch.planned) == (1, (), 0, {})
    clock.advance(HOUR / 2)
    orch.tick()  # the window opens on bob's GPUs: the policy is asked, and stops him
    assert counting.asked == 2
    assert orch.queue.get(bob.id).stop_reason == StopReason.PREEMPT
    assert "reservation 1 for user alice began" in orch.queue.store.events(job_id=bob.id)[-1].message
