"""Without reservations or gaps kept open, the plan's earliest slot is the first node in inventory order
where the job's count-th GPU comes free soonest (from its earliest start on): what a walk over every node,
ties to the first, finds."""

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.plan import Timeline
from policies.snapshot import Snapshot
from tools.models import JobStatus

from tests.builders import job, node

NODES = (node("a", 4), node("b", 2), node("c", 4, drained=(3,)), node("d", 4))
held = st.lists(st.tuples(st.sampled_from(NODES), st.integers(0, 3), st.sampled_from((5.0, 10.0, 40.0))), max_size=40)


def walked(timeline: Timeline, count: int, start: float):
    best = None
    for name, at in timeline._free_at.items():
        times = sorted(at.values())
        if len(times) >= count:
            t = max(start, times[count - 1])
            if best is None or t < best[0]:
                best = (t, name)
    return best


@settings(max_examples=200, deadline=None)
@given(held, st.integers(1, 4), st.sampled_from((None, 3.0, 12.0)))
def test_the_earliest_slot_is_the_walk_s(holds, count, not_before):
    now, running, taken = 0.0, [], set()
    for i, (n, gpu, est) in enumerate(holds, start=1):
        if (n.name, gpu) in taken or gpu >= len(n.gpus):
            continue
        taken.add((n.name, gpu))
        running.append(job(i, gpus=1, status=JobStatus.RUNNING, est=est, on=(n.name, (gpu,)), start=now))
    timeline = Timeline(Snapshot(now=now, nodes=NODES, jobs=tuple(running)))
    waiting = job(100, gpus=count, est=1.0)
    slot = timeline.earliest(waiting, not_before=not_before)
    t, name = walked(timeline, count, max(now, not_before or now))
    assert slot is not None and slot.start == t and {n for n, _ in slot.gpus} == {name} and len(slot.gpus) == count
