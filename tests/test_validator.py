"""Table tests for the validator: one case per hard constraint, plus batches."""

import pytest

from policies.rules import Rules
from policies.snapshot import Proposal
from policies.validator import Violation as V
from policies.validator import Verdict, validate
from tools.models import JobStatus

from tests.builders import job, node, running, snap

NODES = (node("a", 4, drained=(3,), unhealthy=(2,)), node("b", 4))


def on(job_id, *gpus, by="agent"):
    return Proposal(job_id, tuple(gpus), by=by)


CASES = [
    pytest.param(on(1, ("b", 0), ("b", 1)), (), id="valid"),
    pytest.param(on(42, ("b", 0), ("b", 1)), (V.UNKNOWN_JOB,), id="unknown-job"),
    pytest.param(on(5, ("b", 0), ("b", 1)), (V.JOB_NOT_QUEUED,), id="running-job-not-queued"),
    pytest.param(on(1, ("b", 0)), (V.WRONG_GPU_COUNT,), id="too-few-gpus"),
    pytest.param(on(1, ("b", 0), ("b", 1), ("a", 0)), (V.WRONG_GPU_COUNT, V.SPLIT_ACROSS_NODES), id="too-many-gpus"),
    pytest.param(on(1, ("a", 0), ("b", 0)), (V.SPLIT_ACROSS_NODES,), id="across-nodes"),
    pytest.param(on(1, ("b", 0), ("b", 0)), (V.DUPLICATE_GPU,), id="same-gpu-twice"),
    pytest.param(on(1, ("b", 0), ("b", 9)), (V.UNKNOWN_GPU,), id="unknown-gpu"),
    pytest.param(on(1, ("c", 0), ("c", 1)), (V.UNKNOWN_GPU, V.UNKNOWN_GPU), id="unknown-node"),
    pytest.param(on(1, ("a", 0), ("a", 2)), (V.GPU_UNHEALTHY,), id="unhealthy-gpu"),
    pytest.param(on(1, ("a", 0), ("a", 3)), (V.GPU_DRAINED,), id="drained-gpu"),
    pytest.param(on(1, ("b", 0), ("b", 2)), (V.GPU_BUSY,), id="busy-gpu"),
    pytest.param(on(3, ("b", 0)), (V.NOT_YET,), id="before-begin-time"),
    pytest.param(on(4, ("b", 0), ("b", 1), ("a", 0)), (V.TOO_MANY_GPUS, V.SPLIT_ACROSS_NODES), id="over-per-job-limit"),
    pytest.param(on(6, ("b", 0)), (V.JOB_NOT_QUEUED,), id="completed-job"),
]


def snapshot():
    return snap(
        job(1, gpus=2),
        job(3, gpus=1, not_before=500.0),
        job(4, gpus=3),
        running(5, "b", (2, 3)),
        job(6, gpus=1, status=JobStatus.COMPLETED),
        nodes=NODES,
        max_gpus_per_job=2,
    )


@pytest.mark.parametrize("proposal, want_codes", CASES)
def test_each_rule(proposal, want_codes):
    verdict = validate(snapshot(), [proposal])
    if want_codes:
        assert verdict.accepted == ()
        (rejection,) = verdict.rejected
        assert rejection.codes == want_codes
        assert rejection.explain()
    else:
        assert verdict.rejected == ()
        (accepted,) = verdict.accepted
        assert (accepted.allocation.node, accepted.allocation.gpus) == ("b", (0, 1))


def test_a_batch_cannot_double_book():
    s = snap(job(1, gpus=2), job(2, gpus=2), nodes=(node("n", 4),))
    verdict = validate(s, [on(1, ("n", 0), ("n", 1)), on(2, ("n", 1), ("n", 2))])
    assert [a.proposal.job_id for a in verdict.accepted] == [1]
    assert verdict.rejected[0].codes == (V.GPU_BUSY,)
    assert "held by job 1" in verdict.rejected[0].explain()


def test_a_batch_cannot_place_a_job_twice():
    s = snap(job(1, gpus=1), nodes=(node("n", 4),))
    verdict = validate(s, [on(1, ("n", 0)), on(1, ("n", 1))])
    assert len(verdict.accepted) == 1
    assert verdict.rejected[0].codes == (V.DUPLICATE_JOB,)



def test_a_batch_counts_its_accepted_jobs_against_quotas_and_leaves_the_snapshot_alone():
    """Each proposal is checked against the GPUs in use with the batch's earlier accepted ones (user and
    group quota); a rejected one adds nothing; the snapshot's own counts are not written to."""
    rules = Rules(user_quota={"alice": 3}, groups={"alice": "vision", "bob": "vision"}, group_quota={"vision": 5})
    s = snap(running(9, "n", (0,), user="alice"), job(1, gpus=2, user="alice"), job(2, gpus=1, user="alice"),
             job(3, gpus=1, user="bob"), job(4, gpus=2, user="bob"), job(5, gpus=1, user="bob"),
             rules=rules, nodes=(node("n", 8),))
    before = tuple(dict(m) for m in s.in_use)
    verdict = validate(s, [on(1, ("n", 1), ("n", 2)), on(2, ("n", 3)), on(3, ("n", 1)), on(4, ("n", 4), ("n", 5)),
                           on(5, ("n", 6))])
    assert [a.proposal.job_id for a in verdict.accepted] == [1, 4]
    assert {r.proposal.job_id: r.codes for r in verdict.rejected} == {
        2: (V.QUOTA_EXCEEDED,), 3: (V.GPU_BUSY,), 5: (V.QUOTA_EXCEEDED,)}
    assert tuple(dict(m) for m in s.in_use) == before == ({"alice": 1}, {"vision": 1})
    assert validate(s, []) == validate(s, ()) == Verdict((), ())

# Multi-node jobs (eval replays): only where the snapshot allows it, only for a job no one node can hold,
# only on whole free nodes, all but one used whole.
WIDE = (node("a", 4), node("b", 4), node("c", 4, drained=(3,)), node("d", 4))
A = tuple(("a", i) for i in range(4))
B = tuple(("b", i) for i in range(4))
MULTI_CASES = [
    pytest.param(on(1, *A, *B), True, (), id="whole-free-nodes"),
    pytest.param(on(2, *A, ("b", 0), ("b", 1)), True, (), id="last-node-partly-used"),
    pytest.param(on(1, *A, *B), False, (V.SPLIT_ACROSS_NODES,), id="multi-node-off"),
    pytest.param(on(3, ("a", 0), ("a", 1), ("b", 0)), True, (V.SPLIT_ACROSS_NODES,), id="fits-one-node-so-no-split"),
    pytest.param(on(2, ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)), True,
                 (V.NOT_WHOLE_NODES,), id="two-nodes-partly-used"),
    pytest.param(on(1, *A, *(("c", i) for i in range(4))), True,
                 (V.NOT_WHOLE_NODES, V.GPU_DRAINED), id="node-with-a-drained-gpu-is-not-whole"),
    pytest.param(on(2, *A, ("d", 0), ("d", 1)), True,
                 (V.NOT_WHOLE_NODES,), id="node-with-a-busy-gpu-elsewhere-is-not-whole"),
    pytest.param(on(1, *B, ("d", 0), ("d", 1), ("d", 2), ("d", 3)), True,
                 (V.NOT_WHOLE_NODES, V.GPU_BUSY), id="busy-gpu-in-the-proposal"),
]


@pytest.mark.parametrize("proposal, multi_node, want_codes", MULTI_CASES)
def test_multi_node_rules(proposal, multi_node, want_codes):
    s = snap(job(1, gpus=8), job(2, gpus=6), job(3, gpus=3), running(5, "d", (2,)), nodes=WIDE,
             multi_node=multi_node)
    verdict = validate(s, [proposal])
    if want_codes:
        (rejection,) = verdict.rejected
        assert rejection.codes == want_codes
    else:
        (accepted,) = verdict.accepted
        assert accepted.allocation.pairs() == proposal.gpus
        assert accepted.allocation.node == "a" and accepted.allocation.more[0][0] == "b"


def test_a_batch_cannot_give_a_whole_node_twice():
    s = snap(job(1, gpus=8), job(2, gpus=8), nodes=(node("a", 4), node("b", 4), node("c", 4)), multi_node=True)
    verdict = validate(s, [on(1, *A, *B), on(2, *B, *(("c", i) for i in range(4)))])
    assert [a.proposal.job_id for a in verdict.accepted] == [1]
    assert V.NOT_WHOLE_NODES in verdict.rejected[0].codes and V.GPU_BUSY in verdict.rejected[0].codes


def test_an_accepted_proposal_keeps_the_allocation_it_was_made_from_only_where_it_names_the_same_gpus():
    from tools.models import Allocation

    made = Allocation(node="b", gpus=(0, 1))
    verdict = validate(snapshot(), [Proposal.on(1, made)])
    assert verdict.accepted[0].allocation is made
    # A proposal whose GPUs are not those of the allocation it carries: the allocation is made from its GPUs.
    other = Proposal(1, (("b", 1), ("b", 0)), allocation=Allocation(node="b", gpus=(2, 3)))
    verdict = validate(snapshot(), [other])
    assert verdict.accepted[0].allocation == Allocation(node="b", gpus=(0, 1))
