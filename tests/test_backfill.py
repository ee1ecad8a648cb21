"""EASY backfill: the first job that must wait is planned, and no later job may delay that plan."""

import pytest

from policies.ordering import OrderedPolicy, fcfs_key, get_policy, priority_key, sjf_key
from policies.plan import Timeline, estimate_starts
from policies.rules import Rules
from policies.snapshot import IN_LINE
from policies.validator import validate
from tools.models import PendingReason as R

from tests.builders import job, node, running, snap

HOUR = 3600.0


def started(decisions) -> dict[int, tuple]:
    return {p.job_id: p.gpus for p in decisions.starts}


def test_a_short_job_backfills_and_a_long_one_would_delay_the_head():
    # n1 has 4 GPUs: 2 held until t=1h. The head needs 4, so it is planned for t=1h on all four.
    s = snap(
        running(9, "n1", (0, 1), est=HOUR, start=0.0),
        job(1, gpus=4, submit=0),
        job(3, gpus=2, est=3 * HOUR, submit=1),  # would still run at the head's planned start: may not
        job(2, gpus=2, est=HOUR / 2, submit=2),  # ends before it: may start
        now=0.0,
    )
    d = get_policy("backfill").decide(s)
    assert set(started(d)) == {2}
    assert d.planned == {1: HOUR}
    assert d.waiting[1].reason == R.RESOURCES and "GPUs are held back for it" in d.waiting[1].message
    assert d.waiting[3].reason == R.PRIORITY and "job 1" in d.waiting[3].message


def test_a_job_may_backfill_on_gpus_the_plan_does_not_need():
    # Two nodes; the head (8 GPUs) is planned on n2, where a job ends first. A long job may use n1.
    s = snap(
        running(8, "n1", (0, 1, 2, 3), est=10 * HOUR, start=0.0),
        running(9, "n2", (0, 1, 2, 3), est=HOUR, start=0.0),
        job(1, gpus=8, submit=0),
        job(2, gpus=4, est=20 * HOUR, submit=1),
        nodes=(node("n1", 8), node("n2", 8)),
        now=0.0,
    )
    d = get_policy("backfill").decide(s)
    assert started(d) == {2: (("n1", 4), ("n1", 5), ("n1", 6), ("n1", 7))}
    assert d.planned == {1: HOUR}


def test_strict_fcfs_blocks_where_backfill_does_not():
    s = snap(running(9, "n1", (0,), est=HOUR, start=0.0), job(1, gpus=4, submit=0), job(2, gpus=1, est=60, submit=1),
             now=0.0)
    assert started(get_policy("fcfs").decide(s)) == {}
    assert set(started(get_policy("backfill").decide(s))) == {2}


@pytest.mark.parametrize("key", [fcfs_key, priority_key, sjf_key], ids=["fcfs", "priority", "sjf"])
def test_backfill_works_with_every_queue_order(key):
    policy = OrderedPolicy("test", key, backfill=True)
    s = snap(
        running(9, "n1", (0, 1, 2), est=HOUR, start=0.0),
        job(1, gpus=4, prio=9, est=HOUR, submit=0),
        job(2, gpus=1, prio=1, est=2 * HOUR, submit=1),
        now=0.0,
    )
    d = policy.decide(s)
    assert started(d) == {}  # job 2 would hold GPU 3 past job 1's planned start
    assert d.planned == {1: HOUR}


def test_backfill_never_delays_the_head_job_plan():
    """Whatever later jobs backfill, a replan after their start gives the head the same start."""
    s = snap(
        running(7, "n1", (0, 1, 2), est=2 * HOUR, start=0.0),
        running(8, "n2", (0,), est=HOUR, start=0.0),
        job(1, gpus=4, submit=0),
        *(job(10 + i, gpus=1 + i % 3, est=(i + 1) * 1800.0, submit=1 + i) for i in range(8)),
        nodes=(node("n1", 4), node("n2", 4)),
        now=0.0,
    )
    d = get_policy("backfill").decide(s)
    before = d.planned[1]
    assert d.starts
    with_starts = snap(
        *(j for j in s.jobs if j.id not in started(d)),
        *(running(p.job_id, p.gpus[0][0], tuple(g for _, g in p.gpus), est=s.jobs_by_id[p.job_id].est_duration_s,
                  start=0.0) for p in d.starts),
        nodes=s.nodes, now=0.0,
    )
    assert Timeline(with_starts).earliest(with_starts.jobs_by_id[1]).start == before


def test_running_jobs_past_their_estimate_are_expected_to_run_on_for_half_as_long_again():
    # Estimated at a minute, it has run an hour: it is likely a long job, expected to free its GPUs in
    # another half hour, not any moment; never past its time limit.
    s = snap(running(9, "n1", (0, 1, 2, 3), est=60.0, start=0.0), job(1, gpus=4, submit=0), now=HOUR)
    assert get_policy("backfill").decide(s).planned == {1: 1.5 * HOUR}
    rules = Rules()
    overran = running(9, "n1", (0, 1), est=60.0, start=0.0)
    assert rules.expected_end(overran, now=HOUR) == 1.5 * HOUR
    assert rules.expected_end(overran, now=2 * HOUR) == 3 * HOUR
    assert rules.expected_end(overran.model_copy(update={"time_limit_s": 1.2 * HOUR}), now=HOUR) == 1.2 * HOUR
    assert rules.expected_end(overran, now=30.0) == 60.0  # within its estimate: start + estimate


def test_the_default_runtime_stands_in_for_a_missing_estimate():
    rules = Rules(default_runtime_s=2 * HOUR)
    s = snap(running(9, "n1", (0, 1), start=0.0), job(1, gpus=4, submit=0), now=0.0, rules=rules)
    assert get_policy("backfill").decide(s).planned == {1: 2 * HOUR}


def test_backfill_examines_at_most_the_configured_depth_past_the_head():
    rules = Rules(backfill_depth=2)
    s = snap(
        running(9, "n1", (0, 1, 2), est=HOUR, start=0.0),
        job(1, gpus=4, submit=0),
        job(2, gpus=1, est=5 * HOUR, submit=1),
        job(3, gpus=1, est=5 * HOUR, submit=2),
        job(4, gpus=1, est=60.0, submit=3),  # would fit, but lies past the depth
        now=0.0, rules=rules,
    )
    d = get_policy("backfill").decide(s)
    assert started(d) == {}
    assert d.waiting[4] == IN_LINE  # never examined


def test_time_limit_is_preferred_to_the_estimate_for_planning():
    s = snap(running(9, "n1", (0, 1, 2), est=10 * HOUR, time_limit_s=HOUR, start=0.0), job(1, gpus=4), now=0.0)
    assert get_policy("backfill").decide(s).planned == {1: HOUR}


def test_backfill_proposals_pass_the_validator():
    s = snap(
        running(9, "n1", (0, 1), est=HOUR, start=0.0),
        job(1, gpus=4, submit=0), job(2, gpus=1, est=60.0, submit=1), job(3, gpus=1, est=60.0, submit=2),
        now=0.0,
    )
    d = get_policy("multifactor").decide(s)
    assert len(d.starts) == 2 and validate(s, d.starts).rejected == ()


def test_estimates_plan_each_waiting_job_after_the_ones_before_it():
    s = snap(
        running(9, "n1", (0, 1, 2, 3), est=HOUR, start=0.0),
        job(1, gpus=4, est=2 * HOUR, submit=0),
        job(2, gpus=2, est=HOUR, submit=1),
        job(3, gpus=2, est=HOUR, submit=2),
        now=0.0,
    )
    policy = get_policy("fcfs")
    assert estimate_starts(s, policy.order(s)) == {1: HOUR, 2: 3 * HOUR, 3: 3 * HOUR}


def test_estimates_follow_dependencies_and_skip_what_never_fits():
    s = snap(
        running(9, "n1", (0, 1), est=HOUR, start=0.0),
        job(1, gpus=2, est=HOUR, submit=0, after=(9,)),
        job(2, gpus=8, submit=1),
        now=0.0,
    )
    assert estimate_starts(s, get_policy("fcfs").order(s)) == {1: HOUR}


def test_a_job_being_stopped_is_expected_to_free_its_gpus_now():
    from tools.models import StopReason

    stopping = running(9, "n1", (0, 1, 2, 3), est=10 * HOUR, start=0.0).model_copy(
        update={"stop_reason": StopReason.PREEMPT})
    s = snap(stopping, job(1, gpus=4, submit=0), now=60.0)
    assert get_policy("backfill").decide(s).planned == {1: 60.0}


def test_a_job_planned_for_later_leaves_the_gap_before_it_to_others():
    # Job 1 may not start before 10 h; job 2 (1 h, all 4 GPUs) fits before it, and is planned so.
    s = snap(job(1, gpus=1, est=HOUR, not_before=10 * HOUR, submit=0), job(2, gpus=4, est=HOUR, submit=1), now=0.0)
    assert estimate_starts(s, [s.jobs_by_id[1], s.jobs_by_id[2]]) == {1: 10 * HOUR, 2: 0.0}
    longer = snap(job(1, gpus=1, est=HOUR, not_before=10 * HOUR, submit=0),
                  job(2, gpus=4, est=12 * HOUR, submit=1), now=0.0)
    assert estimate_starts(longer, [longer.jobs_by_id[1], longer.jobs_by_id[2]]) == {1: 10 * HOUR, 2: 11 * HOUR}


def test_a_job_a_quota_holds_back_gets_no_estimate():
    from tools.models import PendingReason

    held = job(1, gpus=1, submit=0).model_copy(update={"pending_reason": PendingReason.QUOTA_EXCEEDED})
    s = snap(held, job(2, gpus=1, submit=1), now=0.0)
    assert estimate_starts(s, [s.jobs_by_id[1], s.jobs_by_id[2]]) == {2: 0.0}
