"""The job lifecycle: legal moves, retries with backoff, priority and usage."""

import pytest

from tools.models import (
    TERMINAL,
    TRANSITIONS,
    Allocation,
    EstimateSource,
    IdempotencyKey,
    Job,
    JobSpec,
    JobStatus,
    PendingReason,
    StopReason,
)
from tools.queue import _NEW_JOB, MAX_LOSSES, Backoff, IllegalTransition, JobNotFound, JobQueue, changed, decayed, new_job
from tools.store import MemoryStore, QueueFull

S = JobStatus
ALLOC = Allocation(node="n", gpus=(0,))


@pytest.fixture
def queue():
    return JobQueue(MemoryStore(), max_queued=3, backoff=Backoff(base_s=10, factor=2, max_s=25))


def submit(queue, **kw):
    return queue.submit(JobSpec(**{"user": "alice", "command": "true", "gpu_count": 1, **kw}), now=0.0)


def run(queue, job, now=1.0):
    job = queue.transition(job, S.SCHEDULED, now=now, allocation=ALLOC)
    return queue.transition(job, S.RUNNING, now=now)


def test_a_new_job_is_queued_with_a_reason(queue):
    job = submit(queue)
    assert job.status == S.QUEUED and job.pending_reason == PendingReason.PRIORITY and job.pending_message


@pytest.mark.parametrize("fields", [
    {},
    {"name": "n", "env": {"A": "1"}, "est_duration_s": 60.0, "time_limit_s": 120.0, "after": (1,), "preemptible": True},
    {"array": "0-3%2", "priority": 9, "notify": "off", "notify_on": ("end",)},
    {"begin_at": 50.0, "idempotency": IdempotencyKey(scope="alice", key="k", fingerprint="f")},
])
def test_a_new_job_is_the_job_a_full_validation_makes(fields):
    """``new_job`` skips checking the spec's fields again; the job it makes is the one validating
    them all would make, field for field, and reads back from its own dump."""
    spec = JobSpec(**{"user": "alice", "command": "true", "gpu_count": 1, **fields})
    given = {"est_source": EstimateSource.USER, "id": 7, "submit_time": 3.0, "not_before": spec.begin_at,
             "pending_reason": PendingReason.PRIORITY, "pending_message": "m"}
    made = new_job(spec, **given)
    validated = Job(**spec.model_dump(), **given)
    assert made == validated and made.model_dump() == validated.model_dump()
    assert Job.model_validate(made.model_dump()) == made and set(made.__dict__) == set(Job.model_fields)
    for default in _NEW_JOB.values():  # shared by every new job: nothing mutable
        hash(default)


def test_a_changed_job_is_what_model_copy_makes_and_the_old_one_stays():
    old = Job(user="alice", command="true", gpu_count=2, id=3, submit_time=1.0)
    fields = {"status": JobStatus.SCHEDULED, "allocation": ALLOC, "attempts": 1, "pending_reason": None}
    new, copied = changed(old, fields), old.model_copy(update=fields)
    assert new == copied and type(new) is Job and new.model_fields_set == copied.model_fields_set
    assert old.status == JobStatus.QUEUED and old.allocation is None and "allocation" not in old.model_fields_set


@pytest.mark.parametrize("src", list(S), ids=str)
@pytest.mark.parametrize("dst", list(S), ids=str)
def test_only_table_transitions_are_legal(queue, src, dst):
    job = submit(queue).model_copy(update={"status": src, "allocation": ALLOC})
    queue.store.save_job(job, None)
    if dst in TRANSITIONS[src]:
        changed = queue.transition(job, dst, now=5.0, allocation=ALLOC)
        assert changed.status == dst
        assert queue.get(job.id).status == dst
        if dst in TERMINAL:
            assert changed.end_time == 5.0
    else:
        with pytest.raises(IllegalTransition):
            queue.transition(job, dst, now=5.0, allocation=ALLOC)
        assert queue.get(job.id).status == src


def test_terminal_states_have_no_way_out():
    assert all(not TRANSITIONS[s] for s in TERMINAL)


def test_failed_attempts_retry_with_backoff_then_fail(queue):
    job = run(queue, submit(queue, max_retries=2))
    job = queue.finish(job, 1, now=100.0)
    assert (job.status, job.not_before, job.pending_reason) == (S.QUEUED, 110.0, PendingReason.BEGIN_TIME)
    assert "retry 1/2" in job.pending_message
    job = queue.finish(run(queue, job, now=120.0), 1, now=130.0)
    assert job.not_before == 150.0  # doubled
    job = queue.finish(run(queue, job, now=150.0), 7, now=160.0)
    assert (job.status, job.exit_code, job.attempts) == (S.FAILED, 7, 3)


def test_backoff_is_capped():
    assert [Backoff(base_s=10, factor=2, max_s=25).delay(a) for a in (1, 2, 3, 4)] == [10, 20, 25, 25]


def test_success_completes(queue):
    job = queue.finish(run(queue, submit(queue)), 0, now=50.0)
    assert (job.status, job.exit_code, job.end_time) == (S.COMPLETED, 0, 50.0)


def test_a_vanished_job_counts_as_a_failed_attempt(queue):
    job = queue.finish(run(queue, submit(queue, max_retries=0)), None, now=50.0)
    assert (job.status, job.exit_code) == (S.FAILED, None)


def test_a_job_lost_again_and_again_fails_at_its_last_loss_without_using_a_retry(queue):
    job = submit(queue, max_retries=0)
    for loss in range(1, MAX_LOSSES):
        job = queue.finish(run(queue, job, now=10.0 * loss), None, now=10.0 * loss + 5, lost=True)
        assert (job.status, job.losses, job.attempts, job.not_before) == (S.QUEUED, loss, 0, None)
        assert f"loss {loss} of {MAX_LOSSES}" in queue.store.events(job_id=job.id)[-1].message
    job = queue.finish(run(queue, job, now=100.0), None, now=105.0, lost=True)
    assert (job.status, job.losses) == (S.FAILED, MAX_LOSSES)
    assert f"lost by the executor {MAX_LOSSES} times" in queue.store.events(job_id=job.id)[-1].message


@pytest.mark.parametrize("reason, want", [(StopReason.CANCEL, S.CANCELLED), (StopReason.TIME_LIMIT, S.FAILED)])
def test_a_stopped_job_ends_as_its_stop_reason_says_and_is_not_retried(queue, reason, want):
    job = run(queue, submit(queue, max_retries=3, time_limit_s=60))
    job = queue.update(job, now=2.0, kind="stopping", message="stop", stop_reason=reason)
    assert queue.finish(job, 143, now=3.0).status == want


def test_queue_limit(queue):
    for _ in range(3):
        submit(queue)
    with pytest.raises(QueueFull):
        submit(queue)


def test_priority_change_only_while_queued(queue):
    job = submit(queue, priority=3)
    assert queue.set_priority(job.id, 8, now=1.0).priority == 8
    with pytest.raises(ValueError, match="between 1 and 10"):
        queue.set_priority(job.id, 11, now=1.0)
    run(queue, queue.get(job.id))
    with pytest.raises(IllegalTransition, match="only a queued job's priority"):
        queue.set_priority(job.id, 2, now=1.0)
    with pytest.raises(JobNotFound):
        queue.set_priority(999, 2, now=1.0)


def test_usage_decays_by_half_each_half_life(queue):
    job = run(queue, submit(queue, gpu_count=2), now=0.0)
    queue.finish(job, 0, now=100.0)  # 2 GPUs x 100 s
    assert queue.usage(100.0) == {"alice": pytest.approx(200.0)}
    assert queue.usage(100.0 + queue.usage_half_life_s) == {"alice": pytest.approx(100.0)}
    assert decayed(8.0, 20.0, 10.0) == pytest.approx(2.0)


def test_stats(queue):
    a, _ = submit(queue, gpu_count=2), submit(queue, gpu_count=3)
    run(queue, a)
    stats = queue.stats(now=10.0)
    assert (stats.counts["queued"], stats.counts["running"]) == (1, 1)
    assert (stats.queued_gpus, stats.running_gpus, stats.oldest_wait_s) == (3, 2, 10.0)
