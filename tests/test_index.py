"""The queue index: persistent structures stay as they were; views never change; orders stay sorted."""

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.ordering import fcfs_key, priority_key
from tools.index import IN_LINE_MESSAGE, IN_LINE_REASON, JobIndex, Ordering, SortedRuns, TableWriter
from tools.models import Allocation, JobStatus, PendingReason

from tests.builders import job


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=400))
def test_sorted_runs_match_a_sorted_list_and_old_versions_stay(ops):
    SortedRuns.RUN = 4  # small runs, so that splits and emptied runs happen
    try:
        runs, model, versions = SortedRuns(), [], []
        for add, value in ops:
            if add and value not in model:
                runs, model = runs.add(value), sorted(model + [value])
            elif not add and value in model:
                runs = runs.remove(value)
                model.remove(value)
            versions.append((runs, list(model)))
        for version, want in versions:
            assert list(version) == want and len(version) == len(want)
    finally:
        SortedRuns.RUN = 256


def test_job_table_set_leaves_the_old_table():
    writer = TableWriter()
    writer.set(3, job(3))
    t1 = writer.frozen()
    writer.set(3, None)
    writer.set(2000, job(2000))
    t2 = writer.frozen()
    assert t1.get(3).id == 3 and t1.get(2000) is None
    assert t2.get(3) is None and t2.get(2000).id == 2000 and t2.get(-1) is None
    assert writer.frozen() is t2  # nothing changed since


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(st.integers(1, 1300), st.booleans())), max_size=300))
def test_frozen_tables_never_change_whatever_is_written_after(ops):
    """Writes (an id, set or cleared) and freezes (None) in any order: each frozen table keeps what the
    writer held when it was frozen, however often its chunks are written after."""
    writer, model, frozen = TableWriter(), {}, []
    jobs = {}
    for op in ops:
        if op is None:
            frozen.append((writer.frozen(), dict(model)))
            continue
        job_id, present = op
        value = jobs.setdefault(job_id, job(job_id)) if present else None
        writer.set(job_id, value)
        model[job_id] = value
        assert writer.get(job_id) is value
    frozen.append((writer.frozen(), dict(model)))
    for table, want in frozen:
        assert all(table.get(i) is want.get(i) for i in range(0, 1400))


def test_a_view_never_changes_and_orders_follow_every_change():
    index = JobIndex()
    by_priority = Ordering(priority_key, lambda j: j.gpu_count)
    index.keep(by_priority)
    for i, prio in ((1, 5), (2, 9), (3, 5)):
        index.put(job(i, prio=prio, submit=i, gpus=1 + i % 2))
    before = index.view()
    index.put(job(2, prio=9, status=JobStatus.RUNNING, on=("n", (0, 1))))
    index.put(job(3, prio=10, submit=3, gpus=2))  # priority changed
    index.put(job(4, submit=4, gpus=2))
    after = index.view()
    assert [j.id for j in before.queued] == [1, 2, 3] and before.holding == ()
    assert {g: [i for _, i in e] for g, e in before.groups(by_priority).items()} == {2: [1, 3], 1: [2]}
    assert [j.id for j in after.queued] == [1, 3, 4] and [j.id for j in after.holding] == [2]
    assert {g: [i for _, i in e] for g, e in after.groups(by_priority).items()} == {2: [3, 1, 4]}
    assert after.held == {"n": frozenset({0, 1})} and before.held == {}
    assert [j.id for j in after] == [1, 2, 3, 4] and len(after) == 4


def test_an_order_asked_for_late_is_built_from_the_waiting_jobs():
    index = JobIndex([job(1, submit=5), job(2, submit=1), job(3, status=JobStatus.COMPLETED)])
    fifo = Ordering(fcfs_key)
    assert [i for _, i in index.view().groups(fifo)[None]] == [2, 1]  # built on the fly
    index.keep(fifo)
    index.put(job(4, submit=0))
    assert [i for _, i in index.view().groups(fifo)[None]] == [4, 2, 1]


def test_multi_node_holdings_are_released_on_every_node():
    index = JobIndex()
    wide = job(1, gpus=8, status=JobStatus.RUNNING).model_copy(
        update={"allocation": Allocation(node="a", gpus=(0, 1, 2, 3), more=(("b", (0, 1, 2, 3)),))}
    )
    index.put(wide)
    assert index.view().held == {"a": frozenset(range(4)), "b": frozenset(range(4))}
    index.put(wide.model_copy(update={"status": JobStatus.COMPLETED}))
    assert index.view().held == {} and index.view().holding == ()


def test_only_jobs_with_their_own_reason_are_tracked():
    index = JobIndex()
    index.put(job(1))  # a new job: "waiting for the scheduler's next pass" (None here) counts as its own
    index.put(job(2).model_copy(update={"pending_reason": IN_LINE_REASON, "pending_message": IN_LINE_MESSAGE}))
    index.put(job(3).model_copy(update={"pending_reason": PendingReason.RESOURCES, "pending_message": "full"}))
    assert index.explained_ids() == {1, 3}
    index.put(job(3, status=JobStatus.CANCELLED))
    assert index.explained_ids() == {1}


NODES = (("a", 4), ("b", 2), ("c", 4))


@st.composite
def cluster_states(draw):
    """Nodes with some drained or unhealthy GPUs, running jobs on free GPUs, and a queue."""
    from tests.builders import node

    nodes = tuple(
        node(name, size, drained=tuple(draw(st.sets(st.integers(0, size - 1), max_size=1))),
             unhealthy=tuple(draw(st.sets(st.integers(0, size - 1), max_size=1))))
        for name, size in NODES
    )
    jobs, next_id = [], 1
    for name, size in NODES:
        free = list(range(size))
        while free and draw(st.booleans()):
            take = free[: draw(st.integers(1, len(free)))]
            free = free[len(take):]
            jobs.append(job(next_id, gpus=len(take), status=JobStatus.RUNNING, on=(name, tuple(take)),
                            user=draw(st.sampled_from("xy"))))
            next_id += 1
    for _ in range(draw(st.integers(0, 12))):
        jobs.append(job(next_id, gpus=draw(st.sampled_from([1, 2, 3, 4, 6])), prio=draw(st.integers(1, 10)),
                        submit=draw(st.integers(0, 5)), est=draw(st.sampled_from([None, 10.0, 50.0])),
                        user=draw(st.sampled_from("xy")), not_before=draw(st.sampled_from([None, 50.0, 500.0]))))
        next_id += 1
    from policies.rules import Rules
    from tools.models import Reservation

    rules = Rules(user_quota=draw(st.sampled_from([{}, {"x": 3}, {"x": 1, "y": 4}])),
                  groups={"x": "g", "y": "g"}, group_quota=draw(st.sampled_from([{}, {"g": 5}])),
                  backfill_plans=draw(st.sampled_from([1, 2, 4])))
    reservations = tuple(
        Reservation(id=i + 1, node=draw(st.sampled_from("abc")), gpus=(0, 1), user=draw(st.sampled_from("xy")),
                    start=draw(st.sampled_from([0.0, 120.0, 1000.0])), end=2000.0)
        for i in range(draw(st.integers(0, 2)))
    )
    return nodes, jobs, draw(st.booleans()), rules, reservations


@settings(max_examples=80, deadline=None)
@given(cluster_states())
def test_a_snapshot_from_the_index_decides_like_one_from_a_tuple(state):
    from policies.ordering import POLICIES
    from policies.snapshot import Snapshot
    from policies.validator import validate

    nodes, jobs, multi_node, rules, reservations = state
    index = JobIndex(jobs)
    for policy in POLICIES.values():
        for o in getattr(policy, "orderings", ()):
            index.keep(o)
    plain = Snapshot(now=100.0, nodes=nodes, jobs=tuple(jobs), multi_node=multi_node, rules=rules,
                     reservations=reservations)
    live = Snapshot(now=100.0, nodes=nodes, jobs=index.view(), multi_node=multi_node, rules=rules,
                    reservations=reservations)
    assert live.free == plain.free
    assert live.free_count == plain.free_count == {n: len(g) for n, g in plain.free.items()}
    assert live.free_total == plain.free_total == sum(len(g) for g in plain.free.values())
    assert live.holders == plain.holders and live.queued == plain.queued
    for name, policy in POLICIES.items():
        a, b = policy.decide(plain), policy.decide(live)
        assert a.starts == b.starts == _every_job_offered(policy, plain), name
        assert validate(plain, a.starts).rejected == (), name  # a policy never proposes what the law refuses
        assert dict(a.waiting) == dict(b.waiting), name
        assert [j.id for j in policy.order(plain)] == [j.id for j in policy.order(live)], name


def _every_job_offered(policy, snapshot):
    """The starts of the plain algorithm, which offers every waiting job in the policy's order: what
    skipping the sizes that no longer fit must not change."""
    from policies.multifactor import MultifactorPolicy
    from policies.ordering import FairSharePolicy
    from policies.placement import Offer, Placer

    backfill = isinstance(policy, MultifactorPolicy) or getattr(policy, "backfill", False)
    placer = Placer(snapshot, head_of_line=getattr(policy, "head_of_line", False), backfill=backfill)
    if isinstance(policy, FairSharePolicy):
        for _ in policy._turns(snapshot, started=lambda job: placer.offer(job) == Offer.STARTED):
            pass
    else:
        for queued in policy.order(snapshot):
            placer.offer(queued)
    return tuple(placer.starts)


def test_a_new_reason_changes_the_table_and_the_explained_jobs_but_no_order():
    index = JobIndex()
    fifo = Ordering(fcfs_key, lambda j: j.gpu_count)
    index.keep(fifo)
    for i in (1, 2):
        index.put(job(i, submit=i))
    before = index.view()
    waits = job(1, submit=1).model_copy(update={"pending_reason": PendingReason.RESOURCES, "pending_message": "full"})
    index.put_reason(waits)
    after = index.view()
    assert before.get(1) is not waits and after.get(1) is waits and after.version == before.version + 1
    assert index.explained_ids() == {1, 2}  # (2 keeps the builder's own reason)
    assert after.groups(fifo) == before.groups(fifo) and [j.id for j in after.queued] == [1, 2]
    index.put_reason(waits.model_copy(update={"pending_reason": IN_LINE_REASON, "pending_message": IN_LINE_MESSAGE}))
    assert index.explained_ids() == {2}


def test_views_share_the_orders_until_the_next_change_and_never_see_it():
    index = JobIndex()
    fifo = Ordering(fcfs_key, lambda j: j.gpu_count)
    index.keep(fifo)
    index.put(job(1, submit=1))
    first, second = index.view(), index.view()
    assert first.groups(fifo) is second.groups(fifo)  # nothing changed between them: one copy
    index.put(job(2, submit=2))
    index.put(job(1, status=JobStatus.CANCELLED))
    third = index.view()
    assert [i for _, i in first.groups(fifo)[1]] == [1] and [i for _, i in second.groups(fifo)[1]] == [1]
    assert [i for _, i in third.groups(fifo)[1]] == [2]
    late = Ordering(priority_key)
    index.keep(late)  # a new order: the views taken before never show it
    assert [i for _, i in first.groups(late)[None]] == [1] and [i for _, i in index.view().groups(late)[None]] == [2]
