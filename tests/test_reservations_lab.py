"""Reservations that stop nobody needlessly: a reservation of a GPU count takes free GPUs when its window
begins on GPUs someone still uses; a preemptible job may use reserved GPUs until the window begins; a
user's job starts on that user's free reserved GPUs whatever the backfill plan for another job; ``explain``
names the reservations and their ends; a waiting job's reason does not flip while nothing changed."""

from __future__ import annotations

from policies.snapshot import Proposal
from policies.validator import validate
from tests.builders import spec
from tests.cores import make_core
from tools.clock import SimClock
from tools.door.context import OPERATOR, ToolContext
from tools.door.jobs import ExplainJob, explain_job
from tools.door.rules import ReserveGpus, reserve_gpus
from tools.models import JobStatus
from tools.sim_executor import SimExecutor

T0 = 1_800_000_000.0


def core_with(nodes=None, policy="priority", **settings):
    clock = SimClock(T0)
    core = make_core(nodes=nodes or {"n1": 4}, policy=policy, clock=clock, executor=SimExecutor(), **settings)
    return core, clock, ToolContext(core, OPERATOR)


def test_a_reservation_of_a_count_takes_free_gpus_before_it_stops_anyone():
    core, clock, ctx = core_with()
    orch = core.orchestrator
    bob = orch.submit(spec(1, user="bob"))  # no time limit: expected to run the default hour
    orch.tick()
    assert orch.queue.get(bob.id).allocation.gpus == (0,)
    # Made while bob runs: the count is placed on GPU 0, which bob holds (no reservation overlaps it).
    r = reserve_gpus(ctx, ReserveGpus(user="ana", gpu_count=1, start="+10m", end="+8h"))
    assert r.gpus == (0,) and r.movable
    clock.advance(600)  # the window begins; three GPUs are free
    orch.tick()
    job = orch.queue.get(bob.id)
    assert job.status == JobStatus.RUNNING and job.stop_reason is None  # nobody stopped
    (moved,) = orch.reservations
    assert moved.gpus == (1,) and core.store.reservations()[0].gpus == (1,)
    event = next(e for e in core.store.events() if e.kind == "reserved" and "instead" in e.message)
    assert event.message == (f"reservation {r.id} for user ana began on n1 GPU(s) 0, which others still use; it takes "
                             "the free GPU(s) 1 instead, so nobody is stopped for it")
    ana = orch.submit(spec(1, user="ana"))
    orch.tick()
    assert orch.queue.get(ana.id).allocation.gpus == (1,)


def test_a_reservation_stops_a_job_only_when_no_gpu_is_free_or_its_gpus_were_named():
    core, clock, ctx = core_with()
    orch = core.orchestrator
    jobs = [orch.submit(spec(1, user="bob")) for _ in range(4)]
    orch.tick()
    reserve_gpus(ctx, ReserveGpus(user="ana", gpu_count=1, start="+10m", end="+8h"))
    clock.advance(600)
    orch.tick()
    assert orch.queue.get(jobs[0].id).stop_reason is not None  # every GPU busy: the job on it is stopped

    core, clock, ctx = core_with()
    orch = core.orchestrator
    bob = orch.submit(spec(1, user="bob"))
    orch.tick()
    reserve_gpus(ctx, ReserveGpus(user="ana", node="n1", gpus=[0], start="+10m", end="+8h"))
    clock.advance(600)
    orch.tick()
    assert orch.queue.get(bob.id).stop_reason is not None  # these GPUs were named: they are the ones kept


def test_a_preemptible_job_may_use_reserved_gpus_until_the_window_begins():
    core, clock, ctx = core_with(nodes={"n1": 1})
    orch = core.orchestrator
    reserve_gpus(ctx, ReserveGpus(user="ana", node="n1", gpus=[0], start="+30m", end="+8h"))
    steady = orch.submit(spec(1, user="bob"))
    orch.tick()
    waits = orch.queue.get(steady.id)
    assert waits.status == JobStatus.QUEUED and waits.pending_reason.value == "Reservation"
    orch.cancel(steady.id)
    loose = orch.submit(spec(1, user="bob", preemptible=True))
    snapshot = orch.snapshot()
    assert validate(snapshot, [Proposal(loose.id, (("n1", 0),))]).rejected == ()
    orch.tick()
    assert orch.queue.get(loose.id).status == JobStatus.RUNNING
    clock.advance(1800)  # the window begins: it is stopped, as it agreed to be
    orch.tick()
    assert orch.queue.get(loose.id).stop_reason.value == "preempt"


def test_a_users_job_starts_on_their_free_reserved_gpus_whatever_the_plan_for_another():
    core, clock, ctx = core_with(policy="backfill")
    orch = core.orchestrator
    reserve_gpus(ctx, ReserveGpus(user="ana", node="n1", gpus=[0, 1], start="now", end="+30m"))
    big = orch.submit(spec(4, user="bob"))  # first in line: planned for when the reservation ends
    ana = orch.submit(spec(1, user="ana"))  # runs an hour, past that plan
    carl = orch.submit(spec(1, user="carl"))
    orch.tick()
    assert orch.queue.get(ana.id).status == JobStatus.RUNNING
    assert orch.queue.get(ana.id).allocation.gpus[0] in (0, 1)
    waiting = orch.queue.get(carl.id)
    assert waiting.status == JobStatus.QUEUED and f"planned for job {big.id}" in waiting.pending_message


def test_explain_names_the_reservations_and_their_ends():
    core, clock, ctx = core_with(nodes={"n1": 2})
    orch = core.orchestrator
    mine = reserve_gpus(ctx, ReserveGpus(user="ana", node="n1", gpus=[0], start="now", end="+2h"))
    theirs = reserve_gpus(ctx, ReserveGpus(user="bob", node="n1", gpus=[1], start="+30m", end="+3h"))
    carl = orch.submit(spec(1, user="carl"))  # an hour: fits nowhere (ana's GPU now, bob's from +30m)
    first = orch.submit(spec(1, user="ana"))
    orch.tick()
    assert orch.queue.get(first.id).status == JobStatus.RUNNING  # on her reserved GPU
    second = orch.submit(spec(1, user="ana", time_limit_s=7200))
    orch.tick()
    said = explain_job(ctx, ExplainJob(job_id=second.id)).reservations
    assert said[0].startswith(f"reservation {mine.id} keeps n1 GPU(s) 0 for user ana (this job may use them) until ")
    assert said[1].startswith(f"reservation {theirs.id} keeps n1 GPU(s) 1 for user bob from ")
    assert said[1].endswith("; this job would still run then, so it may not use them")
    said = explain_job(ctx, ExplainJob(job_id=carl.id)).reservations
    assert said[0].startswith(f"reservation {mine.id} keeps n1 GPU(s) 0 for user ana until ")
    assert len(said) == 2


def test_a_waiting_jobs_reason_does_not_flip_while_nothing_changed():
    core, clock, ctx = core_with(nodes={"n1": 1})
    orch = core.orchestrator
    first = orch.submit(spec(1, prio=9))
    orch.tick()
    after = orch.submit(spec(1, prio=1, after=(first.id,)))
    orch.tick()
    assert orch.queue.get(after.id).pending_reason.value == "Dependency"
    orch.submit(spec(1, prio=9))  # offered first, fits nowhere: the pass stops before the dependent job
    for _ in range(3):
        orch.tick()
        clock.advance(1)
        assert orch.queue.get(after.id).pending_reason.value == "Dependency"
