"""A job stopped to make room waits while the job it was stopped for still waits for GPUs: the cases the
stateful test (``test_core_stateful``) found, as tables.

The failing sequence: on nodes a (4 GPUs) and b (2), under backfill (submission order), ana's preemptible
job 1 (3 GPUs, priority 1) starts first; her job 2 (3 GPUs, priority 2) waits and preempts it, so job 1
waits for job 2 (``preempted_for=2``) and job 2 starts. An urgent 4-GPU job 3 then preempts job 2
(``preempted_for=3``). Jobs others were preempted for are offered first, in order of id: job 2 (still
named by job 1) came before job 3, found no reason recorded yet for job 3, and took node a back, so job
3 kept waiting for GPUs while the job stopped for it ran again. A victim's beneficiary is now offered
before the victim, whatever order the first jobs come in.

Built from the same blocks as the stateful test (the orchestrator on a simulated clock, an in-memory
store and the simulated executor), and from plain snapshots for the placer's own table.
"""

from __future__ import annotations

import pytest

from policies.ordering import POLICIES, get_policy
from policies.rules import Rules
from policies.snapshot import Snapshot
from tools.models import Allocation, Gpu, InventorySource, Job, JobSpec, JobStatus, Node, PendingReason, StopReason
from tools.orchestrator import Orchestrator
from tools.sim_executor import SimExecutor
from tests.cores import make_core
from tools.store import SqliteStore


# -- the stateful test's failing sequence, through the whole core -------------------------------------
def core(policy: str):
    """The stateful test's machine: nodes a (4) and b (2), no quotas, gap 1, no minimum run time."""
    durations: dict[int, float | None] = {}
    sim = SimExecutor(duration_of=lambda job: durations.get(job.id))
    rules = Rules(default_runtime_s=10.0, backfill_depth=5, preempt_priority_gap=1, preempt_min_runtime_s=0.0)
    built = make_core(nodes={"a": 4, "b": 2}, policy=policy, rules=rules, store=SqliteStore(":memory:"), executor=sim,
                      max_queue_size=12, grace_s=5, preempt_grace_s=3)
    return built.orchestrator, durations


def made_room_for_is_kept(orch: Orchestrator, victims: dict[int, int], before: dict[int, int]) -> None:
    """The stateful test's check: a victim that started again did so once the job it was preempted for
    no longer waits for GPUs."""
    for job in orch.queue.store.list_jobs():
        if job.stop_reason == StopReason.PREEMPT and job.preempted_for is not None:
            victims[job.id] = job.preempted_for
    for job in orch.queue.store.list_jobs():
        if job.attempts > before.get(job.id, 0) and job.id in victims:
            other = orch.queue.get(victims.pop(job.id))
            assert other.status != JobStatus.QUEUED or other.pending_reason != PendingReason.RESOURCES, (
                f"job {job.id} started again while job {other.id}, which it was preempted for, still waits for GPUs")


@pytest.mark.parametrize("policy", ["backfill", "sjf"])  # orders that start the lower job 1 first, and then
# let job 3 preempt (under fcfs job 1 blocks the line and job 3 never waits for GPUs)
def test_a_victim_made_room_for_once_does_not_take_back_the_gpus_freed_for_the_next_job(policy):
    orch, durations = core(policy)
    for priority in (1, 2):  # busy: run until stopped
        job = orch.submit(JobSpec(user="ana", command="busy", gpu_count=3, priority=priority, preemptible=True))
        durations[job.id] = None
    victims: dict[int, int] = {}

    def tick() -> None:
        before = {j.id: j.attempts for j in orch.queue.store.list_jobs()}
        orch.tick()
        made_room_for_is_kept(orch, victims, before)

    for _ in range(3):
        tick()
    assert (orch.queue.get(1).status, orch.queue.get(1).preempted_for) == (JobStatus.QUEUED, 2)
    assert orch.queue.get(2).status == JobStatus.RUNNING
    urgent = orch.submit(JobSpec(user="ana", command="urgent", gpu_count=4, priority=10))
    durations[urgent.id] = 20.0
    tick()
    assert orch.queue.get(2).preempted_for == urgent.id
    tick()  # job 2 ends and is requeued; job 3 must get node a, not job 2
    assert orch.queue.get(urgent.id).status == JobStatus.RUNNING
    assert orch.queue.get(urgent.id).allocation.node == "a"
    job2 = orch.queue.get(2)
    assert (job2.status, job2.preemptions, job2.preempted_for) == (JobStatus.QUEUED, 1, urgent.id)
    assert orch.queue.get(1).pending_reason == PendingReason.PRIORITY  # still waits for job 2


# -- the placer, on plain snapshots -----------------------------------------------------------------
def node(name: str, count: int, *, drained: tuple[int, ...] = ()) -> Node:
    return Node(name=name, source=InventorySource.DECLARED,
                gpus=tuple(Gpu(node=name, index=i, uuid=f"GPU-{name}-{i}", drained=i in drained, healthy=True)
                           for i in range(count)))


def queued(id: int, gpus: int, prio: int, *, preempted_for: int | None = None, **kw) -> Job:
    return Job(id=id, user="ana", command="x", gpu_count=gpus, priority=prio, submit_time=float(id),
               preemptible=True, preempted_for=preempted_for, preemptions=int(preempted_for is not None), **kw)


def holding(id: int, node_: str, gpus: tuple[int, ...], prio: int = 5) -> Job:
    return Job(id=id, user="bo", command="x", gpu_count=len(gpus), priority=prio, submit_time=0.0,
               status=JobStatus.RUNNING, allocation=Allocation(node=node_, gpus=gpus), start_time=0.0)


def decide(policy: str, *jobs: Job, first: tuple[int, ...], nodes=(node("a", 4), node("b", 2))):
    snapshot = Snapshot(now=100.0, nodes=nodes, jobs=jobs, rules=Rules(default_runtime_s=10.0), first=first)
    decisions = get_policy(policy).decide(snapshot)
    started = [p.job_id for p in decisions.starts]
    assert len(started) == len(set(started)), f"a job started twice: {started}"
    for job in jobs:  # the invariant the stateful test checks, within one pass
        if job.id in started and job.preempted_for is not None and job.preempted_for not in started:
            wait = decisions.waiting.get(job.preempted_for)
            assert wait is None or wait.reason != PendingReason.RESOURCES, (
                f"job {job.id} starts while job {job.preempted_for}, which it was preempted for, waits for GPUs")
    return started, decisions.waiting


CHAIN = (  # job 1 was preempted for job 2, which started, then was preempted for job 3
    queued(1, 3, 1, preempted_for=2),
    queued(2, 3, 2, preempted_for=3),
    queued(3, 4, 10),
)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("first", [(2, 3), (3, 2)], ids=["by id", "beneficiary first"])
def test_the_last_beneficiary_of_a_chain_of_preemptions_is_offered_before_its_victims(policy, first):
    started, waiting = decide(policy, *CHAIN, first=first)
    assert started == [3]  # node a, all four GPUs; job 2 (3 GPUs) fits nowhere after it
    assert waiting[2].reason == PendingReason.RESOURCES
    assert waiting[1].reason == PendingReason.PRIORITY  # waits for job 2, which waits for GPUs


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_victim_waits_while_its_beneficiary_waits_for_gpus_another_job_holds(policy):
    # Job 3's victim (job 2) ended, but a job of bo now holds GPU 3 of node a: job 3 waits for GPUs,
    # so job 2 waits too, though its three GPUs are free.
    started, waiting = decide(policy, holding(9, "a", (3,)), *CHAIN[1:], first=(3,))
    assert started == []
    assert waiting[3].reason == PendingReason.RESOURCES
    assert waiting[2].reason == PendingReason.PRIORITY


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_victim_starts_once_its_beneficiary_waits_for_what_room_cannot_give(policy):
    # GPU 3 of node a is drained: job 3 can never fit, so job 2 need not wait for it.
    started, waiting = decide(policy, *CHAIN, first=(2, 3), nodes=(node("a", 4, drained=(3,)), node("b", 2)))
    assert started == [2]
    assert waiting[3].reason == PendingReason.INFEASIBLE


# Job 4 was preempted for job 5, which started; priorities changed, and job 5 was preempted for job 4.
# Each names the other: the first offered (4) is decided first, the other waits for it.
@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("gpus", [2, 4])  # both fit, or they need the same GPUs
def test_a_cycle_of_victims_starts_one_of_them_and_the_other_waits_for_it(policy, gpus):
    jobs = (queued(4, gpus, 5, preempted_for=5), queued(5, gpus, 5, preempted_for=4))
    started, waiting = decide(policy, *jobs, first=(4, 5), nodes=(node("a", 4),))
    assert started == [4]
    assert waiting[5].reason == PendingReason.PRIORITY


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_victim_in_a_cycle_starts_when_the_other_waits_for_something_else(policy):
    jobs = (queued(4, 4, 5, preempted_for=5, not_before=200.0), queued(5, 4, 5, preempted_for=4))
    started, waiting = decide(policy, *jobs, first=(4, 5), nodes=(node("a", 4),))
    assert started == [5]
    assert waiting[4].reason == PendingReason.BEGIN_TIME
