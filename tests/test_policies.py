"""Table tests for the deterministic policies: who starts, where, and why the rest wait."""

import pytest

from policies.ordering import POLICIES, get_policy
from policies.snapshot import IN_LINE
from policies.validator import validate
from tools.models import PendingReason as R

from tests.builders import job, node, running, snap

HOUR_S = 3600.0


def starts(policy: str, snapshot):
    d = get_policy(policy).decide(snapshot)
    return [(p.job_id, p.gpus[0][0], tuple(i for _, i in p.gpus)) for p in d.starts], d.waiting


CASES = [
    # id, policy, snapshot, want_starts, want_reasons
    pytest.param(
        "priority",
        snap(job(1, gpus=2, prio=3, submit=1), job(2, gpus=2, prio=9, submit=2), job(3, gpus=2, prio=5, submit=0)),
        [(2, "n1", (0, 1)), (3, "n1", (2, 3))],
        {1: R.RESOURCES},
        id="priority-higher-first-then-submit-order",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=4, prio=9, submit=0), job(2, gpus=1, prio=1, submit=1), running(9, "n1", (0, 1))),
        [(2, "n1", (2,))],
        {1: R.RESOURCES},
        id="priority-skips-a-job-that-does-not-fit",
    ),
    pytest.param(
        "fcfs",
        snap(job(1, gpus=1, submit=0), job(2, gpus=4, submit=1), job(3, gpus=1, submit=2), running(9, "n1", (0,))),
        [(1, "n1", (1,))],
        {2: R.RESOURCES, 3: R.PRIORITY},
        id="fcfs-head-of-line-blocks-later-jobs",
    ),
    pytest.param(
        "fcfs",
        snap(job(1, gpus=2, prio=1, submit=0), job(2, gpus=2, prio=10, submit=5)),
        [(1, "n1", (0, 1)), (2, "n1", (2, 3))],
        {},
        id="fcfs-ignores-priority",
    ),
    pytest.param(
        "sjf",
        snap(job(1, gpus=2, est=300, submit=0), job(2, gpus=2, submit=1), job(3, gpus=2, est=60, submit=2)),
        [(3, "n1", (0, 1)), (1, "n1", (2, 3))],
        {2: R.RESOURCES},
        id="sjf-shortest-first-no-estimate-last",
    ),
    pytest.param(
        "fair_share",
        snap(
            job(1, user="heavy", submit=0), job(2, user="heavy", submit=1), job(3, user="light", submit=2),
            usage={"heavy": 1000.0, "light": 10.0}, nodes=(node("n1", 2),),
        ),
        [(3, "n1", (0,)), (1, "n1", (1,))],
        {2: R.RESOURCES},
        id="fair-share-least-recent-usage-first",
    ),
    pytest.param(
        "fair_share",
        snap(
            job(1, user="a", submit=0), job(2, user="a", submit=1), job(3, user="a", submit=2),
            job(4, user="b", submit=3), job(5, user="b", submit=4), nodes=(node("n1", 4),),
        ),
        [(1, "n1", (0,)), (4, "n1", (1,)), (2, "n1", (2,)), (5, "n1", (3,))],
        {3: R.RESOURCES},
        id="fair-share-equal-users-take-turns",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=2), nodes=(node("a", 8), node("b", 4), node("c", 2)), ),
        [(1, "c", (0, 1))],
        {},
        id="best-fit-prefers-the-tightest-node",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=3), running(8, "a", (0, 1, 2, 3, 4, 5)), nodes=(node("a", 8), node("b", 4))),
        [(1, "b", (0, 1, 2))],
        {},
        id="best-fit-counts-free-not-total",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=2), nodes=(node("n1", 4, drained=(0, 1), unhealthy=(2,)),)),
        [],
        {1: R.INFEASIBLE},
        id="drained-and-unhealthy-gpus-are-not-used",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=1, not_before=200.0), job(2, gpus=1)),
        [(2, "n1", (0,))],
        {1: R.BEGIN_TIME},
        id="retry-backoff-waits-for-its-begin-time",
    ),
    pytest.param(
        "fcfs",
        snap(job(1, gpus=8, submit=0), job(2, gpus=1, submit=1)),
        [(2, "n1", (0,))],
        {1: R.INFEASIBLE},
        id="infeasible-job-does-not-block-the-line",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=3), max_gpus_per_job=2),
        [],
        {1: R.INFEASIBLE},
        id="per-job-gpu-limit",
    ),
]


# Multi-node jobs (eval replays): a job larger than any node takes whole free nodes, the largest first,
# all but the last used whole; only where the snapshot allows it.
MULTI = (node("a", 4), node("b", 4), node("c", 4))
MULTI_CASES = [
    pytest.param(
        "priority",
        snap(job(1, gpus=6), running(9, "a", (0,)), nodes=MULTI, multi_node=True),
        [(1, (("b", 0), ("b", 1), ("b", 2), ("b", 3), ("c", 0), ("c", 1)))],
        {},
        id="multi-node-takes-whole-free-nodes",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=8), job(2, gpus=1), running(9, "a", (0,)), running(8, "b", (0,)), nodes=MULTI,
             multi_node=True),
        [(2, (("a", 1),))],
        {1: R.RESOURCES},
        id="multi-node-waits-for-whole-nodes",
    ),
    pytest.param(
        "fcfs",
        snap(job(1, gpus=8, submit=0), job(2, gpus=1, submit=1), running(9, "a", (0,)), running(8, "b", (0,)),
             nodes=MULTI, multi_node=True),
        [],
        {1: R.RESOURCES, 2: R.PRIORITY},
        id="fcfs-multi-node-job-blocks-the-line",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=1, submit=0), job(2, gpus=8, submit=1), nodes=MULTI, multi_node=True),
        [(1, (("a", 0),)), (2, (("b", 0), ("b", 1), ("b", 2), ("b", 3), ("c", 0), ("c", 1), ("c", 2), ("c", 3)))],
        {},
        id="multi-node-skips-a-node-taken-earlier-in-the-pass",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=8), nodes=MULTI),
        [],
        {1: R.INFEASIBLE},
        id="multi-node-off-by-default",
    ),
    pytest.param(
        "priority",
        snap(job(1, gpus=8), nodes=(node("a", 4), node("b", 4, drained=(3,))), multi_node=True),
        [],
        {1: R.INFEASIBLE},
        id="multi-node-needs-wholly-usable-nodes",
    ),
    pytest.param(
        "sjf",
        snap(job(1, gpus=3), running(9, "a", (0, 1)), running(8, "b", (0, 1)), running(7, "c", (0, 1)),
             nodes=MULTI, multi_node=True),
        [],
        {1: R.RESOURCES},
        id="a-job-that-fits-a-node-never-spans-nodes",
    ),
    pytest.param(
        "fair_share",
        snap(job(1, gpus=5, user="x"), job(2, gpus=2, user="y"), nodes=MULTI, multi_node=True,
             usage={"x": 0.0, "y": 10.0}),
        [(1, (("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0))), (2, (("b", 1), ("b", 2)))],
        {},
        id="fair-share-multi-node",
    ),
]


@pytest.mark.parametrize("policy, snapshot, want_starts, want_reasons", MULTI_CASES)
def test_multi_node_decisions(policy, snapshot, want_starts, want_reasons):
    d = get_policy(policy).decide(snapshot)
    assert [(p.job_id, p.gpus) for p in d.starts] == want_starts
    assert {i: w.reason for i, w in d.waiting.items()} == want_reasons
    assert validate(snapshot, d.starts).rejected == ()


def test_multi_node_resources_reason_counts_whole_nodes():
    s = snap(job(1, gpus=8), running(9, "a", (0,)), running(8, "b", (3,)), nodes=MULTI, multi_node=True)
    waiting = get_policy("priority").decide(s).waiting
    assert waiting[1].message == "needs 8 GPUs on whole free nodes; 1 whole node(s) with 4 GPUs are free"


def test_a_full_cluster_reads_one_waiting_job_per_size():
    """The pass stops as soon as nothing can start: the rest wait in line, unread."""
    queued = [job(i, gpus=1 + i % 2, submit=i) for i in range(1, 2001)]
    s = snap(*queued, running(9999, "n1", (0, 1, 2, 3)))
    for name in ("priority", "fcfs", "sjf", "fair_share"):
        d = get_policy(name).decide(s)
        assert d.starts == ()
        assert len(d.waiting.examined) <= 2  # the first job of each size, or just the head for fcfs
        assert d.waiting[2000] == IN_LINE and len(d.waiting) == 2000


@pytest.mark.parametrize("policy, snapshot, want_starts, want_reasons", CASES)
def test_policy_decisions(policy, snapshot, want_starts, want_reasons):
    got_starts, waiting = starts(policy, snapshot)
    assert got_starts == want_starts
    assert {i: w.reason for i, w in waiting.items()} == want_reasons


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_queued_job_gets_a_start_or_a_reason(name):
    s = snap(*[job(i, gpus=1 + i % 3, prio=1 + i % 10, submit=i, est=i * 10.0 or None, user=f"u{i % 3}") for i in range(1, 30)])
    d = get_policy(name).decide(s)
    started = {p.job_id for p in d.starts}
    assert started.isdisjoint(d.waiting)
    assert started | set(d.waiting) == {j.id for j in s.queued}
    assert all(w.message for w in d.waiting.values())


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_same_snapshot_same_decisions(name):
    s = snap(*[job(i, gpus=1 + i % 2, prio=1 + i % 4, submit=i % 5, user=f"u{i % 2}") for i in range(1, 12)])
    assert get_policy(name).decide(s) == get_policy(name).decide(s)


def test_resources_reason_says_what_is_missing():
    _, waiting = starts("priority", snap(job(1, gpus=3), running(2, "n1", (0, 1))))
    assert waiting[1].message == "needs 3 free GPU(s) on one node; the most free on any node is 2"


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown policy 'lottery'; choose one of: priority, fcfs, sjf, fair_share"):
        get_policy("lottery")


def test_fair_share_holds_gpus_back_for_a_light_users_whole_node_job():
    # bo (no usage) waits for all 4 GPUs; ana's job ends at 1 h. ana (heavy) has a 3-hour job and a
    # 10-minute one waiting, and 2 GPUs are free now: the 3-hour job would still run when bo's job is
    # planned to start, so only the 10-minute one may use them (EASY backfill), and bo's job starts then.
    s = snap(
        running(1, "n1", (0, 1), user="ana", est=HOUR_S, start=0.0),
        job(2, gpus=4, user="bo", submit=10.0, est=HOUR_S),
        job(3, gpus=1, user="ana", submit=20.0, est=3 * HOUR_S),
        job(4, gpus=1, user="ana", submit=30.0, est=600.0),
        now=60.0, usage={"ana": 100 * HOUR_S},
    )
    d = get_policy("fair_share").decide(s)
    assert [p.job_id for p in d.starts] == [4]
    assert d.planned == {2: HOUR_S}
    assert "planned for job 2" in d.waiting[3].message
