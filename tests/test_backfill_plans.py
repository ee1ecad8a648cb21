"""Backfill planning more than the first waiting job (``Rules.backfill_plans``), and the starvation
guard (``Rules.starve_after_s``)."""

from policies.ordering import get_policy
from policies.plan import Timeline
from policies.rules import Rules
from policies.validator import validate
from tools.models import PendingReason as R

from tests.builders import job, node, running, snap

HOUR = 3600.0
DAY = 86_400.0


def started(decisions) -> set[int]:
    return {p.job_id for p in decisions.starts}


def two_wide_jobs(rules: Rules):
    # n1 is full until 1 h, n2 has one GPU free and three held until 2 h. Jobs 1 and 2 need a whole node.
    return snap(
        running(8, "n1", (0, 1, 2, 3), est=HOUR, start=0.0),
        running(9, "n2", (0, 1, 2), est=2 * HOUR, start=0.0),
        job(1, gpus=4, submit=0, est=2 * HOUR),  # n1 is then taken until 3 h: job 2 is planned on n2
        job(2, gpus=4, submit=1, est=HOUR),
        job(3, gpus=1, submit=2, est=5 * HOUR),  # would still run when n2 comes free
        job(4, gpus=1, submit=3, est=HOUR / 2),  # ends before
        nodes=(node("n1", 4), node("n2", 4)), now=0.0, rules=rules,
    )


def test_one_plan_leaves_the_second_wide_job_to_be_overtaken():
    d = get_policy("backfill").decide(two_wide_jobs(Rules(backfill_plans=1)))
    assert started(d) == {3}  # n2's free GPU goes to a 5-hour job: job 2 waits for it too
    assert d.planned == {1: HOUR}


def test_two_plans_keep_the_second_wide_jobs_node_for_it():
    s = two_wide_jobs(Rules(backfill_plans=2))
    d = get_policy("backfill").decide(s)
    assert started(d) == {4}
    assert d.planned == {1: HOUR, 2: 2 * HOUR}
    assert d.waiting[2].reason == R.RESOURCES and "GPUs are held back for it" in d.waiting[2].message
    assert d.waiting[3].reason == R.PRIORITY and "planned for 2 jobs ahead of it" in d.waiting[3].message
    assert validate(s, d.starts).rejected == ()


def test_a_job_that_could_start_but_would_delay_a_plan_is_planned_itself():
    # Job 3 fits now but would delay job 1's plan; with a plan to spare it is planned after job 1.
    s = snap(
        running(9, "n1", (0, 1, 2), est=HOUR, start=0.0),
        job(1, gpus=4, submit=0, est=HOUR),
        job(3, gpus=1, submit=2, est=5 * HOUR),
        now=0.0, rules=Rules(backfill_plans=2),
    )
    d = get_policy("backfill").decide(s)
    assert started(d) == set()
    assert d.planned == {1: 0.0 + HOUR, 3: 2 * HOUR}


def test_later_plans_never_move_earlier_ones():
    """With several plans, whatever backfills, a replan gives every planned job the same start."""
    s = snap(
        running(7, "n1", (0, 1, 2), est=2 * HOUR, start=0.0),
        running(8, "n2", (0,), est=HOUR, start=0.0),
        job(1, gpus=4, submit=0),
        job(2, gpus=4, submit=0.5),
        *(job(10 + i, gpus=1 + i % 3, est=(i + 1) * 1800.0, submit=1 + i) for i in range(8)),
        nodes=(node("n1", 4), node("n2", 4)), now=0.0, rules=Rules(backfill_plans=3),
    )
    d = get_policy("backfill").decide(s)
    assert d.starts and {1, 2} <= set(d.planned)
    with_starts = snap(
        *(j for j in s.jobs if j.id not in started(d)),
        *(running(p.job_id, p.gpus[0][0], tuple(g for _, g in p.gpus), est=s.jobs_by_id[p.job_id].est_duration_s,
                  start=0.0) for p in d.starts),
        nodes=s.nodes, now=0.0,
    )
    timeline = Timeline(with_starts)
    for job_id in (1, 2):
        slot = timeline.earliest(with_starts.jobs_by_id[job_id])
        assert slot is not None and slot.start == d.planned[job_id]
        timeline.book(slot)


def starving(rules: Rules):
    # Job 1 (bo, 4 GPUs) has waited two days; ana's small jobs were queued a minute ago and rank
    # above it (size). GPUs 0-1 come free in 50 minutes, GPUs 2-3 are free now.
    now = 2 * DAY
    return snap(
        running(9, "n1", (0, 1), est=HOUR, start=now - 600.0, user="cy"),
        job(1, gpus=4, user="bo", submit=0.0, est=4 * HOUR),
        job(2, gpus=1, user="ana", submit=now - 60.0, est=2 * HOUR),
        job(3, gpus=1, user="ana", submit=now - 30.0, est=600.0),
        now=now, rules=rules,
    )


def test_without_the_guard_small_jobs_ahead_in_order_push_an_old_wide_job_back():
    d = get_policy("multifactor").decide(starving(Rules()))
    assert started(d) == {2, 3}
    assert d.planned == {1: 2 * DAY + 2 * HOUR}  # after job 2, not when job 9 ends


def test_a_starving_job_goes_first_and_drains_its_gpus():
    s = starving(Rules(starve_after_s=DAY))
    d = get_policy("multifactor").decide(s)
    assert started(d) == set()  # even the 10-minute job, which would end before the plan
    assert d.planned == {1: 2 * DAY + 3000.0}
    assert d.waiting[3].reason == R.PRIORITY and "planned for job 1" in d.waiting[3].message
    young = starving(Rules(starve_after_s=3 * DAY))
    assert started(get_policy("multifactor").decide(young)) == {2, 3}
