"""The backfill timeline's running jobs, kept from one plan to the next of the same queue, give the
same expected ends as reading every running job afresh: however jobs start, end, get stopped or run
past their estimates, however time moves, and with a GPU held by two jobs."""

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.plan import Slot, Timeline, _RunningEnds
from policies.snapshot import Snapshot
from tools import index as index_module
from tools.index import JobIndex
from tools.models import JobStatus, StopReason

from tests.builders import job, node

NODES = (node("n1", 6), node("n2", 6, drained=(1,)), node("n3", 6))
STATES = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.COMPLETED)
step = st.tuples(
    st.integers(1, 6),  # job id
    st.sampled_from(STATES),
    st.sampled_from((None, 5.0, 40.0)),  # estimate
    st.sampled_from((None, 30.0)),  # time limit
    st.booleans(),  # being stopped
    st.integers(-5, 30),  # time passed before the plan (back in time now and then)
)


def version(job_id, status, est, limit, stopping, now):
    holds = status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
    # Job i holds two GPUs of its own, so that no two jobs claim the same GPU.
    on = (f"n{job_id % 3 + 1}", (2 * (job_id // 3), 2 * (job_id // 3) + 1)) if holds else None
    return job(job_id, gpus=2, status=status, est=est, on=on, time_limit_s=limit,
               start=now if status == JobStatus.RUNNING else None, submit=0.0,
               stop_reason=StopReason.PREEMPT if holds and stopping else None)


def ends(timeline: Timeline) -> list:
    return [(name, list(at.items())) for name, at in timeline._free_at.items()]


def plan_both(index: JobIndex, now: float, layout, nodes=NODES) -> Timeline:
    """Plan from the kept ends and afresh; the two timelines agree. The kept one, returned, is then
    changed by a start on every GPU, which the next plan must not see."""
    view = index.view()
    kept = Timeline(Snapshot(now=now, nodes=nodes, jobs=view, multi_node=True, known_layout=layout))
    fresh = Timeline(Snapshot(now=now, nodes=nodes, jobs=tuple(view), multi_node=True, known_layout=layout))
    assert ends(kept) == ends(fresh)
    assert kept._times == fresh._times
    every = [(name, gpu) for name, at in kept._free_at.items() for gpu in at]
    kept.occupy(every, now + 1000.0)
    # A booking too (full nodes' ends are the keeper's, shared with each timeline until it changes them).
    booked = Timeline(Snapshot(now=now, nodes=nodes, jobs=view, multi_node=True, known_layout=layout))
    booked.book(Slot(now, now + 2000.0, tuple(every)))
    assert all(t == [now + 2000.0] * len(t) for t in booked._times.values())
    return kept


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=40))
def test_kept_ends_match_a_fresh_count_at_every_plan(steps):
    index, now = JobIndex(), 100.0
    layout = Snapshot(now=now, nodes=NODES, jobs=()).layout
    for job_id, status, est, limit, stopping, passed in steps:
        now += passed
        index.put(version(job_id, status, est, limit, stopping, now))
        plan_both(index, now, layout)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(step, min_size=1, max_size=6), max_size=12), st.sampled_from((3, index_module.HELD_LOG)))
def test_kept_ends_match_after_many_changes_between_plans_and_a_log_begun_anew(batches, log_size):
    """Several jobs change between two plans (only those are read again), and the index's log of them
    may be begun anew meanwhile (then every job holding GPUs is)."""
    index, now = JobIndex(), 100.0
    layout = Snapshot(now=now, nodes=NODES, jobs=()).layout
    default, index_module.HELD_LOG = index_module.HELD_LOG, log_size
    try:
        for batch in batches:
            for job_id, status, est, limit, stopping, passed in batch:
                now += max(passed, 0)  # (back in time only between plans, as above)
                index.put(version(job_id, status, est, limit, stopping, now))
            plan_both(index, now, layout)
    finally:
        index_module.HELD_LOG = default


def test_a_gpu_held_by_two_jobs_is_counted_afresh_as_before():
    index, now = JobIndex(), 100.0
    layout = Snapshot(now=now, nodes=NODES, jobs=()).layout
    index.put(job(1, gpus=2, status=JobStatus.RUNNING, est=50.0, on=("n1", (0, 1)), start=90.0))
    plan_both(index, now, layout)
    index.put(job(2, gpus=1, status=JobStatus.RUNNING, est=10.0, on=("n1", (1,)), start=95.0))
    plan_both(index, now + 1, layout)
    index.put(job(2, gpus=1, status=JobStatus.COMPLETED, est=10.0, start=95.0))
    plan_both(index, now + 2, layout)


def test_the_kept_ends_outlive_an_inventory_read_afresh_but_not_a_drained_gpu():
    index, now = JobIndex(), 100.0
    index.put(job(1, gpus=2, status=JobStatus.RUNNING, est=50.0, on=("n1", (0, 1)), start=90.0))
    view = index.view()
    Timeline(Snapshot(now=now, nodes=NODES, jobs=view, multi_node=True))
    kept = view.carried[_RunningEnds]
    again = (node("n1", 6), node("n2", 6, drained=(1,)), node("n3", 6))  # equal, not the same objects
    Timeline(Snapshot(now=now + 1, nodes=again, jobs=index.view(), multi_node=True))
    assert view.carried[_RunningEnds] is kept
    drained = (node("n1", 6, drained=(0,)), node("n2", 6, drained=(1,)), node("n3", 6))
    timeline = Timeline(Snapshot(now=now + 2, nodes=drained, jobs=index.view(), multi_node=True))
    assert view.carried[_RunningEnds] is not kept
    assert 0 not in timeline._free_at["n1"] and timeline._free_at["n1"][1] == 140.0


def test_a_full_node_s_kept_ends_are_not_changed_by_a_plan_that_books_on_it():
    small = (node("m1", 2), node("m2", 2))
    index, now = JobIndex(), 100.0
    layout = Snapshot(now=now, nodes=small, jobs=()).layout
    index.put(job(1, gpus=2, status=JobStatus.RUNNING, est=50.0, on=("m1", (0, 1)), start=90.0))
    index.put(job(2, gpus=1, status=JobStatus.RUNNING, est=50.0, on=("m2", (0,)), start=90.0))
    first = plan_both(index, now, layout, small)  # m1 full: its ends come from the keeper, then are booked over
    assert first._free_at["m1"] == {0: 1100.0, 1: 1100.0}
    second = plan_both(index, now + 1, layout, small)
    assert first._free_at["m1"] == {0: 1100.0, 1: 1100.0}
    index.put(job(3, gpus=1, status=JobStatus.RUNNING, est=5.0, on=("m2", (1,)), start=101.0))
    started = Timeline(Snapshot(now=now + 2, nodes=small, jobs=index.view(), multi_node=True, known_layout=layout),
                       [(job(4, gpus=2, est=7.0), (("m1", 0),))])
    assert started._free_at["m1"] == {0: 109.0, 1: 140.0} and started._times["m1"] == [109.0, 140.0]
    assert second._free_at["m1"] == {0: 1101.0, 1: 1101.0}
    plan_both(index, now + 3, layout, small)  # m2 full now too, m1 still as the keeper read it


def test_a_timeline_keeps_a_full_node_s_ends_while_a_later_plan_changes_the_kept_ones():
    small = (node("m1", 2), node("m2", 2))
    index, now = JobIndex(), 100.0
    layout = Snapshot(now=now, nodes=small, jobs=()).layout
    index.put(job(1, gpus=2, status=JobStatus.RUNNING, est=50.0, on=("m1", (0, 1)), start=90.0))
    first = Timeline(Snapshot(now=now, nodes=small, jobs=index.view(), multi_node=True, known_layout=layout))
    index.put(job(1, gpus=2, status=JobStatus.COMPLETED, est=50.0, start=90.0))
    index.put(job(2, gpus=2, status=JobStatus.RUNNING, est=30.0, on=("m1", (0, 1)), start=101.0))
    second = Timeline(Snapshot(now=now + 1, nodes=small, jobs=index.view(), multi_node=True, known_layout=layout))
    assert second._free_at["m1"] == {0: 131.0, 1: 131.0} and second._times["m1"] == [131.0, 131.0]
    assert first._free_at["m1"] == {0: 140.0, 1: 140.0} and first._times["m1"] == [140.0, 140.0]


def test_many_jobs_started_between_two_plans_are_all_kept():
    many = tuple(node(f"k{i}", 4) for i in range(6))
    index, now = JobIndex(), 100.0
    layout = Snapshot(now=now, nodes=many, jobs=()).layout
    plan_both(index, now, layout, many)
    for i in range(1, 21):  # more than a plan looks up one by one
        index.put(job(i, gpus=1, status=JobStatus.RUNNING, est=10.0 * i, on=(f"k{i % 6}", (i // 6,)), start=now))
    index.put(job(2, gpus=1, status=JobStatus.RUNNING, est=5.0, on=("k2", (0,)), start=now))  # another version
    plan_both(index, now + 1, layout, many)
    index.put(job(21, gpus=1, status=JobStatus.RUNNING, est=3.0, on=("k3", (3,)), start=now + 1))
    plan_both(index, now + 2, layout, many)
