"""A submission to a busy queue costs the scheduler's next pass no write: a new job already carries the
reason a pass gives every waiting job it does not reach (in line), so the pass rewrites only the jobs it
examines (the first of each size that cannot start, the jobs that could fill a gap) and those that wait
for something else (other jobs, a begin time)."""

from __future__ import annotations

import pytest

from policies.ordering import POLICIES
from policies.snapshot import IN_LINE
from tests.builders import spec
from tests.cores import make_core
from tools.models import JobStatus, PendingReason


def busy_core(policy: str):
    """Both GPUs held by jobs that do not end (the simulator runs a job until told its duration), and a
    one-GPU job first in line, told it waits for a GPU: a pass examines no one-GPU job behind it."""
    core = make_core(nodes={"n1": 2}, policy=policy, max_queue_size=100)
    holders = [core.orchestrator.submit(spec(1, command="sleep 3600")) for _ in range(2)]
    core.orchestrator.tick()
    assert all(core.queue.get(j.id).status in (JobStatus.SCHEDULED, JobStatus.RUNNING) for j in holders)
    head = core.orchestrator.submit(spec(1, prio=9))
    core.orchestrator.tick()
    assert core.queue.get(head.id).pending_reason == PendingReason.RESOURCES
    return core


def saves_during(core, action) -> list[int]:
    """The ids of the jobs the store writes while ``action`` runs."""
    saved: list[int] = []
    save = core.store.save_job

    def counting(job, event):
        saved.append(job.id)
        return save(job, event)

    core.store.save_job = counting
    try:
        action()
    finally:
        core.store.save_job = save
    return saved


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_job_submitted_behind_others_is_not_written_again_by_the_pass(policy):
    core = busy_core(policy)
    new = core.orchestrator.submit(spec(1, prio=1))
    assert (new.pending_reason, new.pending_message) == (IN_LINE.reason, IN_LINE.message)
    assert new.id not in saves_during(core, core.orchestrator.tick)
    after = core.queue.get(new.id)
    assert after.status == JobStatus.QUEUED
    assert (after.pending_reason, after.pending_message) == (IN_LINE.reason, IN_LINE.message)


def test_a_job_that_waits_for_another_is_explained_by_the_pass():
    core = busy_core("priority")
    first = core.orchestrator.submit(spec(1, prio=1))
    then = core.orchestrator.submit(spec(1, prio=1, after=[first.id]))
    assert then.pending_message != IN_LINE.message  # not said to wait in line before the pass has looked
    assert then.id in saves_during(core, core.orchestrator.tick)
    assert core.queue.get(then.id).pending_reason == PendingReason.DEPENDENCY


def test_a_new_job_the_pass_can_start_is_started():
    core = make_core(nodes={"n1": 2}, policy="priority", max_queue_size=100)
    new = core.orchestrator.submit(spec(1))
    core.orchestrator.tick()
    assert core.queue.get(new.id).status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
