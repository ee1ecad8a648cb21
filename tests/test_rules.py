"""Table tests for the cluster's rules: quotas, reservations, dependencies, begin times, preemption."""

import pytest

from policies.ordering import get_policy
from policies.rules import Rules
from policies.snapshot import Preemption, Proposal
from policies.validator import Violation, check_preemption, validate
from tools.models import JobStatus, Reservation
from tools.models import PendingReason as R

from tests.builders import job, node, running, snap

HOUR = 3600.0
POLICIES = ["priority", "fcfs", "sjf", "fair_share", "backfill", "multifactor"]


def started(decisions) -> set[int]:
    return {p.job_id for p in decisions.starts}


# -- quotas --------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES)
def test_a_user_quota_blocks_and_then_admits(policy):
    rules = Rules(user_quota={"alice": 3})
    blocked = snap(running(9, "n1", (0, 1), user="alice"), job(1, gpus=2, user="alice"), job(2, gpus=1, user="bob"),
                   rules=rules, nodes=(node("n1", 8),))
    d = get_policy(policy).decide(blocked)
    assert started(d) == {2}
    assert d.waiting[1].reason == R.QUOTA_EXCEEDED
    assert d.waiting[1].message == "user alice uses 2 of a quota of 3 GPUs; this job's 2 would be 1 over"
    admitted = snap(job(1, gpus=2, user="alice"), rules=rules, nodes=(node("n1", 8),))  # job 9 ended
    assert started(get_policy(policy).decide(admitted)) == {1}


def test_a_group_quota_counts_every_member_and_the_pass_itself():
    rules = Rules(groups={"alice": "vision", "bob": "vision"}, group_quota={"vision": 4})
    s = snap(running(9, "n1", (0,), user="alice"), job(1, gpus=2, user="bob", submit=0),
             job(2, gpus=2, user="alice", submit=1), job(3, gpus=2, user="carol", submit=2),
             rules=rules, nodes=(node("n1", 8),))
    d = get_policy("priority").decide(s)
    assert started(d) == {1, 3}
    assert d.waiting[2].reason == R.QUOTA_EXCEEDED and "group vision uses 3 of a quota of 4" in d.waiting[2].message


def test_the_default_user_quota_applies_to_users_without_their_own():
    rules = Rules(default_user_quota=1, user_quota={"boss": 8})
    s = snap(job(1, gpus=2, user="alice"), job(2, gpus=2, user="boss"), rules=rules, nodes=(node("n1", 8),))
    d = get_policy("multifactor").decide(s)
    assert started(d) == {2} and d.waiting[1].reason == R.QUOTA_EXCEEDED


def test_the_validator_refuses_a_proposal_over_quota():
    rules = Rules(user_quota={"alice": 2})
    s = snap(running(9, "n1", (0,), user="alice"), job(1, gpus=2, user="alice"), rules=rules)
    verdict = validate(s, [Proposal(1, (("n1", 1), ("n1", 2)), by="agent")])
    assert verdict.rejected[0].codes == (Violation.QUOTA_EXCEEDED,)


# -- reservations --------------------------------------------------------------------------------
def reservation(**kw) -> Reservation:
    base = dict(id=1, node="n1", gpus=(0, 1), user="alice", start=HOUR, end=3 * HOUR)
    return Reservation(**(base | kw))


@pytest.mark.parametrize("policy", POLICIES)
def test_a_reservation_keeps_its_gpus_free_at_its_start(policy):
    decide = get_policy(policy).decide
    r = (reservation(),)  # GPUs 0 and 1 of n1, for alice, from 1h to 3h
    long_ = decide(snap(job(1, gpus=2, user="bob", est=2 * HOUR), reservations=r, now=0.0))
    assert [p.gpus for p in long_.starts] == [(("n1", 2), ("n1", 3))]  # not on the reserved GPUs
    too_big = decide(snap(job(1, gpus=4, user="bob", est=2 * HOUR), reservations=r, now=0.0))
    assert too_big.starts == () and too_big.waiting[1].reason == R.RESERVATION
    assert "reserved for user alice" in too_big.waiting[1].message
    short = decide(snap(job(1, gpus=4, user="bob", est=HOUR / 2), reservations=r, now=0.0))
    assert started(short) == {1}  # ends before the window: may use them
    holder = decide(snap(job(1, gpus=4, user="alice", est=2 * HOUR), reservations=r, now=0.0))
    assert started(holder) == {1}


def test_inside_the_window_only_the_holder_runs_on_reserved_gpus():
    r = reservation(group="vision", user=None)
    rules = Rules(groups={"alice": "vision"})
    s = snap(job(1, gpus=4, user="bob"), job(2, gpus=2, user="bob", submit=1), job(3, gpus=4, user="alice", submit=2),
             reservations=(r,), now=2 * HOUR, rules=rules, nodes=(node("n1", 4),))
    d = get_policy("priority").decide(s)
    assert {p.job_id: p.gpus for p in d.starts} == {2: (("n1", 2), ("n1", 3))}
    s2 = snap(job(3, gpus=4, user="alice"), reservations=(r,), now=2 * HOUR, rules=rules, nodes=(node("n1", 4),))
    assert started(get_policy("priority").decide(s2)) == {3}
    refused = validate(s, [Proposal(1, tuple(("n1", i) for i in range(4)), by="agent")])
    assert Violation.RESERVED in refused.rejected[0].codes


def test_a_job_still_running_on_reserved_gpus_when_the_window_begins_is_preempted():
    s = snap(running(9, "n1", (0,), user="bob", start=0.0), reservations=(reservation(),), now=HOUR)
    d = get_policy("multifactor").decide(s)
    assert d.preemptions == (Preemption(9, "reservation 1 for user alice began at "
                                           f"{d.preemptions[0].why.split(' began at ')[1].split(' on')[0]} on its GPUs"),)
    assert check_preemption(s, d.preemptions[0]) is None


def test_backfill_plans_around_a_reservation():
    # All four GPUs are reserved from 1h to 3h; a 4-GPU job of 2h is planned after the window.
    s = snap(job(1, gpus=4, user="bob", est=2 * HOUR), reservations=(reservation(gpus=(0, 1, 2, 3)),), now=0.0)
    d = get_policy("backfill").decide(s)
    assert d.planned == {1: 3 * HOUR}


# -- dependencies and begin times ----------------------------------------------------------------
def test_a_dependency_waits_and_then_runs():
    waiting = snap(running(1, "n1", (0,)), job(2, after=(1,)))
    d = get_policy("multifactor").decide(waiting)
    assert started(d) == set() and d.waiting[2].reason == R.DEPENDENCY and "1 (running)" in d.waiting[2].message
    done = snap(job(2, after=(1,)), ended={1: JobStatus.COMPLETED})
    assert started(get_policy("multifactor").decide(done)) == {2}


@pytest.mark.parametrize("status, runs", [(JobStatus.COMPLETED, True), (JobStatus.FAILED, False),
                                          (JobStatus.CANCELLED, False)])
def test_after_needs_success_and_after_any_needs_only_an_end(status, runs):
    s = snap(job(2, after=(1,)), job(3, after_any=(1,)), ended={1: status})
    d = get_policy("priority").decide(s)
    assert (2 in started(d)) == runs and 3 in started(d)
    if not runs:
        assert d.waiting[2].reason == R.DEPENDENCY_NEVER and status.value in d.waiting[2].message


def test_the_validator_refuses_a_job_whose_dependency_has_not_ended():
    s = snap(running(1, "n1", (0,)), job(2, after=(1,)))
    assert validate(s, [Proposal(2, (("n1", 1),))]).rejected[0].codes == (Violation.DEPENDENCY,)


def test_a_deferred_job_waits_for_its_begin_time():
    s = snap(job(1, not_before=500.0), now=100.0)
    d = get_policy("multifactor").decide(s)
    assert started(d) == set() and d.waiting[1].reason == R.BEGIN_TIME
    assert started(get_policy("multifactor").decide(snap(job(1, not_before=500.0), now=500.0))) == {1}


# -- preemption ----------------------------------------------------------------------------------
PREEMPT = Rules(preempt_priority_gap=2, preempt_min_runtime_s=600.0)


def test_preemption_picks_the_fewest_then_lowest_priority_victims():
    s = snap(
        running(11, "n1", (0,), prio=1, preemptible=True, start=0.0),
        running(12, "n1", (1,), prio=2, preemptible=True, start=0.0),
        running(13, "n1", (2, 3), prio=3, preemptible=True, start=0.0),  # one job freeing two: fewest
        running(21, "n2", (0, 1), prio=1, preemptible=True, start=0.0),  # also one job, lower priority
        running(22, "n2", (2, 3), prio=9, start=0.0),
        job(1, gpus=2, prio=8, submit=0),
        nodes=(node("n1", 4), node("n2", 4)), now=HOUR, rules=PREEMPT,
    )
    d = get_policy("priority").decide(s)
    assert [(p.job_id, p.for_job) for p in d.preemptions] == [(21, 1)]
    assert "preempting job(s) 21" in d.waiting[1].message


@pytest.mark.parametrize(
    "victim, why",
    [
        (running(11, "n1", (0, 1, 2, 3), prio=1, start=0.0), "not preemptible"),
        (running(11, "n1", (0, 1, 2, 3), prio=7, preemptible=True, start=0.0), "priority too close"),
        (running(11, "n1", (0, 1, 2, 3), prio=1, preemptible=True, start=HOUR - 60), "minimum runtime"),
    ],
)
def test_no_preemption_without_flag_gap_and_minimum_runtime(victim, why):
    s = snap(victim, job(1, gpus=2, prio=8), now=HOUR, rules=PREEMPT)
    assert get_policy("priority").decide(s).preemptions == (), why


def test_preemption_can_be_turned_off():
    s = snap(running(11, "n1", (0, 1, 2, 3), prio=1, preemptible=True, start=0.0), job(1, gpus=2, prio=9), now=HOUR,
             rules=Rules(preempt_priority_gap=None))
    assert get_policy("priority").decide(s).preemptions == ()


def test_a_job_waits_for_victims_already_stopping_instead_of_making_more():
    from tools.models import StopReason

    stopping = running(11, "n1", (0, 1), prio=1, preemptible=True, start=0.0).model_copy(
        update={"stop_reason": StopReason.PREEMPT})
    s = snap(stopping, running(12, "n1", (2, 3), prio=1, preemptible=True, start=0.0), job(1, gpus=2, prio=9),
             now=HOUR, rules=PREEMPT)
    d = get_policy("priority").decide(s)
    assert d.preemptions == () and "being preempted" in d.waiting[1].message


def test_the_validator_checks_a_preemption_against_the_rules():
    s = snap(running(11, "n1", (0,), prio=5, preemptible=True, start=0.0), job(1, prio=6), now=HOUR, rules=PREEMPT)
    assert "not far enough" in check_preemption(s, Preemption(11, "x", for_job=1))
    assert "not running" in check_preemption(s, Preemption(1, "x", for_job=1))
