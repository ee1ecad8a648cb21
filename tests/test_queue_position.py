"""A waiting job's position, counted by the policy in its sorted groups (``position``), is its place in the
policy's ``order``: for every job of random queues, under every policy that counts, with usage that
shifts users' fair shares."""

from __future__ import annotations

import random

import pytest

from policies.ordering import POLICIES
from tests.builders import spec
from tests.cores import make_core
from tools.door.context import OPERATOR, ToolContext
from tools.door.jobs import queue_position
from tools.models import JobStatus

COUNTING = sorted(name for name, policy in POLICIES.items() if hasattr(policy, "position"))


def test_the_ordered_policies_and_multifactor_count_positions():
    assert {"priority", "fcfs", "sjf", "backfill", "multifactor"} <= set(COUNTING)


@pytest.mark.parametrize("name", COUNTING)
@pytest.mark.parametrize("seed", range(4))
def test_position_is_the_place_in_order(name, seed):
    rng = random.Random(seed)
    core = make_core(nodes={"n1": 4}, policy=name, orchestration_enabled=False, max_queue_size=1000)
    users = ["ann", "bob", "cat", "dan"]
    for user in users[:3]:  # recent use, so that fair shares differ and shift whole users
        core.store.set_usage(user, rng.uniform(0, 50_000), 0.0)
    for _ in range(rng.randint(30, 120)):
        core.clock.advance(rng.choice([0.0, 0.5, 30.0]))  # ties of submit time too
        core.orchestrator.submit(spec(rng.choice([1, 1, 2, 4]), prio=rng.randint(1, 10), user=rng.choice(users),
                                      est_duration_s=rng.choice([None, 60.0, 3600.0])))
    core.clock.advance(100.0)
    orch = core.orchestrator
    snapshot = orch.snapshot()
    order = orch.policy.order(snapshot)
    assert len(order) == snapshot.jobs.queued_count > 0
    for place, job in enumerate(order, start=1):
        assert orch.policy.position(snapshot, job) == place, (name, job.id)


def test_the_door_reports_positions_and_none_for_a_job_that_does_not_wait():
    core = make_core(nodes={"n1": 2}, policy="priority", max_queue_size=100)
    ctx = ToolContext(core, OPERATOR)
    low = core.orchestrator.submit(spec(2, prio=2))
    high = core.orchestrator.submit(spec(2, prio=9))
    assert (queue_position(ctx, high.id), queue_position(ctx, low.id)) == (1, 2)
    core.orchestrator.tick()
    assert core.queue.get(high.id).status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
    assert (queue_position(ctx, high.id), queue_position(ctx, low.id)) == (None, 1)
    assert queue_position(ctx, 999) is None
