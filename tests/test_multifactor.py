"""Multifactor priority: each factor, the order they make, and the explanation people see."""

import pytest

from policies.multifactor import MultifactorPolicy, fair_share_factors
from policies.rules import Rules, Weights
from tools.index import JobIndex

from tests.builders import job, node, running, snap

HOUR = 3600.0
ONLY = {  # one factor at a time
    "priority": Weights(priority=1, age=0, fair_share=0, size=0),
    "age": Weights(priority=0, age=1, fair_share=0, size=0),
    "fair_share": Weights(priority=0, age=0, fair_share=1, size=0),
    "size": Weights(priority=0, age=0, fair_share=0, size=1),
}


def order(policy, snapshot) -> list[int]:
    return [j.id for j in policy.order(snapshot)]


@pytest.mark.parametrize(
    "factor, jobs, usage, want",
    [
        ("priority", [job(1, prio=2, submit=0), job(2, prio=9, submit=5)], {}, [2, 1]),
        ("age", [job(1, submit=50), job(2, submit=10)], {}, [2, 1]),
        ("fair_share", [job(1, user="heavy", submit=0), job(2, user="light", submit=5)],
         {"heavy": 10 * HOUR, "light": HOUR}, [2, 1]),
        ("size", [job(1, gpus=4, est=HOUR, submit=0), job(2, gpus=1, est=HOUR, submit=5)], {}, [2, 1]),
        ("size", [job(1, gpus=1, est=10 * HOUR, submit=0), job(2, gpus=1, est=HOUR, submit=5)], {}, [2, 1]),
    ],
)
def test_each_factor_ranks_on_its_own(factor, jobs, usage, want):
    policy = MultifactorPolicy(weights=ONLY[factor])
    s = snap(*jobs, usage=usage, nodes=(node("n1", 8),))
    assert order(policy, s) == want


def test_age_lets_an_old_low_priority_job_overtake_new_high_priority_ones():
    policy = MultifactorPolicy(weights=Weights(priority=1000, age=500, fair_share=0, size=0, age_unit_s=86_400))
    old = job(1, prio=1, submit=0.0)
    new = job(2, prio=10, submit=3 * 86_400.0)  # 1000 points of priority = 2 days of age
    assert order(policy, snap(old, new, now=3 * 86_400.0)) == [1, 2]
    assert order(policy, snap(old, job(2, prio=10, submit=86_400.0), now=3 * 86_400.0)) == [2, 1]


def test_fair_share_halves_at_a_fair_share_of_use_and_averages_user_and_group():
    s = snap(usage={"a": 50.0, "b": 50.0})
    assert fair_share_factors(s, {"a", "b"}) == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}
    grouped = snap(usage={"a": 50.0, "b": 50.0, "c": 0.0}, rules=Rules(groups={"a": "g", "c": "g"}))
    f = fair_share_factors(grouped, {"a", "b", "c"})
    # users: a and b used 1/2 each of a fair 1/3; groups: g and b (a group of one) used 1/2 each of 1/2
    assert f["a"] == pytest.approx((2 ** -1.5 + 0.5) / 2)
    assert f["c"] == pytest.approx((1.0 + 0.5) / 2)


def test_running_jobs_count_towards_recent_use():
    s = snap(running(9, "n1", (0, 1), user="busy", start=0.0), job(1, user="busy"), job(2, user="idle", submit=5),
             now=HOUR)
    assert order(MultifactorPolicy(weights=ONLY["fair_share"]), s) == [2, 1]


def test_order_from_the_queue_index_equals_a_plain_sort_by_total():
    policy = MultifactorPolicy()
    jobs = [job(i, gpus=1 + i % 4, prio=1 + i % 10, user=f"u{i % 3}", submit=float(i * 977 % 5000),
                est=None if i % 5 == 0 else 600.0 * (1 + i % 7)) for i in range(1, 60)]
    usage = {"u0": 5 * HOUR, "u1": HOUR}
    plain = snap(*jobs, usage=usage, now=6000.0, nodes=(node("n1", 8),))
    index = JobIndex(jobs)
    index.keep(policy.ordering)
    from policies.snapshot import Snapshot

    live = Snapshot(now=6000.0, nodes=plain.nodes, jobs=index.view(), usage=usage)
    by_total = sorted(jobs, key=lambda j: (-policy.explain(plain, j).total, j.submit_time, j.id))
    assert order(policy, plain) == order(policy, live) == [j.id for j in by_total]


def test_explain_lists_every_factor_with_its_points():
    policy = MultifactorPolicy(weights=Weights(priority=900, age=100, fair_share=500, size=200))
    s = snap(job(1, gpus=2, prio=10, est=4 * HOUR, submit=0.0), now=43_200.0)
    e = policy.explain(s, s.jobs_by_id[1])
    points = {f.name: f.points for f in e.factors}
    assert points == {"priority": 900.0, "age": 50.0, "fair_share": 500.0, "size": pytest.approx(100.0)}
    assert e.total == pytest.approx(1550.0)
    assert [f.detail for f in e.factors][0] == "priority 10 of 10"
