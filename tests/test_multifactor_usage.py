"""Fair share's usage of running jobs, kept from one pass to the next of the same queue, gives the same
GPU-seconds as summing every running job afresh: however jobs start, end, get stopped or requeued,
however many change between two reads, however time moves, with two jobs on one GPU, from a snapshot
older than the last pass, and after the index's log was begun anew."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.multifactor import fair_share_factors
from policies.running_usage import RunningUsage, running_usage
from tools import index as index_module
from policies.snapshot import Snapshot
from tools.index import JobIndex
from tools.models import JobStatus, StopReason

from tests.builders import job, node

NODES = (node("n1", 8), node("n2", 8))
# What may happen next to a job (``JobQueue.transition``'s moves): scheduled onto its GPUs (keeping the
# start of an earlier attempt), running (started now, or a little before or after by another clock),
# asked to stop, requeued, ended.
step = st.tuples(
    st.integers(1, 8),  # job id
    st.sampled_from(("advance", "advance", "stop", "requeue", "end")),
    st.sampled_from((0.0, 0.001, 0.5, 37.25, 1e-9, -20.0)),  # how far back it started (-: after now)
    st.floats(-5.0, 3000.0),  # time passed before the pass (back in time now and then)
    st.booleans(),  # a pass follows (else the next change comes first: several changes per pass)
)
USERS = ("ann", "bob", "cy")


def next_version(old, job_id, action, back, now):
    """The job's next version, or None if the action does not apply to its state."""
    on = (f"n{job_id % 2 + 1}", (job_id // 2,))
    kw = dict(gpus=1 + job_id % 3, user=USERS[job_id % 3], submit=0.0)
    if old is None:
        return job(job_id, **kw)
    start = old.start_time
    if action == "advance" and old.status == JobStatus.QUEUED:
        return job(job_id, status=JobStatus.SCHEDULED, on=on, start=start, **kw) if start is not None else \
            old.model_copy(update={"status": JobStatus.SCHEDULED, "allocation": job(0, on=on).allocation})
    if action == "advance" and old.status == JobStatus.SCHEDULED:
        return old.model_copy(update={"status": JobStatus.RUNNING, "start_time": now - back})
    if action == "stop" and old.status == JobStatus.RUNNING:
        return old.model_copy(update={"stop_reason": StopReason.PREEMPT})
    if action == "requeue" and old.status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
        return old.model_copy(update={"status": JobStatus.QUEUED, "allocation": None, "stop_reason": None})
    if action == "end" and old.status == JobStatus.RUNNING:
        return old.model_copy(update={"status": JobStatus.COMPLETED, "allocation": None})
    return None


def kept_and_fresh(index: JobIndex, now: float):
    view = index.view()
    kept = running_usage(Snapshot(now=now, nodes=NODES, jobs=view))
    fresh = Snapshot(now=now, nodes=NODES, jobs=tuple(view)).running_usage
    return kept, fresh, view


def same(kept, fresh) -> None:
    # Two sums of the same terms in another order: equal but for the last bits; a user without a
    # started job counts nothing either way.
    assert {u for u, v in kept.items() if v} == {u for u, v in fresh.items() if v}
    for user, used in fresh.items():
        assert kept.get(user, 0.0) == pytest.approx(used, rel=1e-12, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40), st.integers(0, 39), st.sampled_from((2, index_module.HELD_LOG)))
def test_kept_usage_matches_a_fresh_sum_at_every_pass(steps, late, log_size):
    index, now, views = JobIndex(), 1000.0, []
    default, index_module.HELD_LOG = index_module.HELD_LOG, log_size  # (2: the log is begun anew often)
    try:
        for job_id, action, back, passed, look in steps:
            now += passed
            new = next_version(index.get(job_id), job_id, action, back, now)
            if new is None:
                continue
            index.put(new)
            if not look:
                continue
            kept, fresh, view = kept_and_fresh(index, now)
            same(kept, fresh)
            views.append((view, now))
        if views:  # an older pass read after later ones: counted afresh, the kept sums left as they were
            view, then = views[late % len(views)]
            same(running_usage(Snapshot(now=then, nodes=NODES, jobs=view)),
                 Snapshot(now=then, nodes=NODES, jobs=tuple(view)).running_usage)
            same(*kept_and_fresh(index, now)[:2])
    finally:
        index_module.HELD_LOG = default


def test_a_user_whose_last_job_ends_is_forgotten_and_the_kept_sums_are_reused():
    index = JobIndex()
    index.put(job(1, gpus=2, status=JobStatus.RUNNING, user="ann", on=("n1", (0, 1)), start=10.0))
    index.put(job(2, gpus=1, status=JobStatus.RUNNING, user="bob", on=("n1", (2,)), start=0.1))
    kept, _, view = kept_and_fresh(index, 100.0)
    assert kept == {"ann": 180.0, "bob": pytest.approx(99.9, rel=1e-15)}
    tracker = view.carried[RunningUsage]
    index.put(job(1, gpus=2, status=JobStatus.COMPLETED, user="ann", start=10.0))
    kept, _, view = kept_and_fresh(index, 200.0)
    assert kept == {"bob": pytest.approx(199.9, rel=1e-15)} and view.carried[RunningUsage] is tracker


def test_two_jobs_on_one_gpu_are_both_counted():
    index = JobIndex()
    index.put(job(1, gpus=2, status=JobStatus.RUNNING, user="ann", on=("n1", (0, 1)), start=10.0))
    same(*kept_and_fresh(index, 50.0)[:2])
    index.put(job(2, gpus=1, status=JobStatus.RUNNING, user="bob", on=("n1", (1,)), start=20.0))
    for now in (60.0, 70.0):
        kept, fresh, _ = kept_and_fresh(index, now)
        assert kept == fresh == {"ann": 2 * (now - 10.0), "bob": now - 20.0}
    index.put(job(2, gpus=1, status=JobStatus.COMPLETED, user="bob", start=20.0))
    for now in (80.0, 90.0):
        kept, fresh, _ = kept_and_fresh(index, now)
        assert kept == fresh == {"ann": 2 * (now - 10.0)}


def test_fair_share_without_groups_is_the_average_of_two_equal_factors():
    s = Snapshot(now=0.0, nodes=NODES, jobs=(), usage={"a": 30.0, "b": 10.0, "c": 0.0})
    got = fair_share_factors(s, {"a", "b", "c"})
    assert got == {"a": 2.0 ** -(30 / 40 * 3), "b": 2.0 ** -(10 / 40 * 3), "c": 1.0}


def test_a_job_ending_and_another_of_the_same_size_starting_between_two_passes_are_both_seen():
    # The GPUs per user do not change: only the nodes where GPUs were taken or freed tell.
    index = JobIndex()
    index.put(job(1, gpus=1, status=JobStatus.RUNNING, user="ann", on=("n1", (0,)), start=10.0))
    assert kept_and_fresh(index, 20.0)[0] == {"ann": 10.0}
    index.put(job(1, gpus=1, status=JobStatus.COMPLETED, user="ann", start=10.0))
    index.put(job(2, gpus=1, status=JobStatus.RUNNING, user="ann", on=("n2", (3,)), start=50.0))
    kept, fresh, _ = kept_and_fresh(index, 60.0)
    assert kept == fresh == {"ann": 10.0}


def test_jobs_started_over_several_passes_unread_are_followed_without_counting_afresh(monkeypatch):
    # A pass with one user's jobs waiting reads no usage, yet starts jobs: the next read finds them.
    index = JobIndex()
    index.put(job(1, gpus=1, status=JobStatus.RUNNING, user="ann", on=("n1", (0,)), start=10.0))
    assert kept_and_fresh(index, 20.0)[0] == {"ann": 10.0}
    recounts = []
    monkeypatch.setattr(RunningUsage, "_recount", lambda self, holding, now: recounts.append(now))
    for job_id, gpu, now in ((2, 1, 30.0), (3, 2, 40.0), (4, 3, 50.0)):
        index.put(job(job_id, gpus=1, status=JobStatus.SCHEDULED, user="bob", on=("n2", (gpu,))))
        index.put(job(job_id, gpus=1, status=JobStatus.RUNNING, user="bob", on=("n2", (gpu,)), start=now))
    index.put(job(1, gpus=1, status=JobStatus.COMPLETED, user="ann", start=10.0))
    kept, fresh, _ = kept_and_fresh(index, 60.0)
    assert kept == fresh == {"bob": 30.0 + 20.0 + 10.0}
    assert recounts == []


def test_a_log_begun_anew_between_two_reads_is_counted_afresh(monkeypatch):
    monkeypatch.setattr(index_module, "HELD_LOG", 2)
    index = JobIndex()
    index.put(job(1, gpus=1, status=JobStatus.RUNNING, user="ann", on=("n1", (0,)), start=10.0))
    kept_and_fresh(index, 20.0)
    tracker = index.view().carried[RunningUsage]
    recounts = []
    recount = RunningUsage._recount
    monkeypatch.setattr(RunningUsage, "_recount",
                        lambda self, holding, now: (recounts.append(now), recount(self, holding, now)))
    for job_id, gpu, now in ((2, 1, 30.0), (3, 2, 40.0), (4, 3, 50.0)):
        index.put(job(job_id, gpus=1, status=JobStatus.RUNNING, user="bob", on=("n2", (gpu,)), start=now))
    kept, fresh, view = kept_and_fresh(index, 60.0)
    assert kept == fresh == {"ann": 50.0, "bob": 60.0}
    assert recounts == [60.0] and view.carried[RunningUsage] is tracker
