"""The nodes by free GPU count, kept by the queue from one view to the next (``Snapshot.by_free``), are
those a count over the jobs holding GPUs gives, in every view, however the jobs changed and whichever
views asked; and a pass that takes GPUs from them leaves the kept ones as they were."""

from hypothesis import given, settings
from hypothesis import strategies as st

import tools.index as index_module
from policies.placement import Placer
from policies.snapshot import Layout, Snapshot
from tools.index import JobIndex
from tools.models import JobStatus

from tests.builders import job, node

# Job i holds GPUs on n{i % 4}: jobs share nodes, so a node's free count goes up and down, to 0 as well.
NODES = tuple(node(f"n{i}", 6) for i in range(4))
LAYOUT = Layout(NODES)
STATES = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.COMPLETED)
change = st.tuples(st.integers(0, 11), st.sampled_from(STATES), st.integers(1, 2))


def version(i, status, gpus):
    holds = status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
    first = 2 * (i // 4)  # jobs 0-3 from GPU 0 of their node, 4-7 from 2, 8-11 from 4: never the same GPU
    on = (f"n{i % 4}", tuple(range(first, first + gpus))) if holds else None
    return job(i + 1, gpus=gpus, status=status, on=on)


def counted(snapshot):
    nodes = [set() for _ in range(LAYOUT.width + 1)]
    for n in NODES:
        free = len(n.gpus) - len(snapshot.held.get(n.name, ()))
        if free:
            nodes[free].add(n.name)
    return tuple(map(frozenset, nodes))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(change, st.booleans()), max_size=50), st.sampled_from((4096, 3)))
def test_kept_nodes_by_free_count_match_a_count_in_every_view(changes, log_size):
    index_module.HELD_LOG = log_size  # 3: the log of changed nodes begins anew every few changes
    try:
        index = JobIndex()
        views = []
        for c, asked in changes:
            index.put(version(*c))
            view = index.view()
            views.append(view)
            if asked:  # some views are never asked: the next one that is spans several changes
                snapshot = Snapshot(now=0.0, nodes=NODES, jobs=view, known_layout=LAYOUT)
                assert snapshot.by_free == counted(snapshot)
                # A pass that takes GPUs works on copies: the kept buckets stay the view's.
                placer = Placer(snapshot)
                placer.offer(job(1000, gpus=1))
                assert Snapshot(now=0.0, nodes=NODES, jobs=view, known_layout=LAYOUT).by_free == counted(snapshot)
    finally:
        index_module.HELD_LOG = 4096
    for view in views + views[::-1]:  # a kept count of a later view is of no use to an earlier one
        snapshot = Snapshot(now=0.0, nodes=NODES, jobs=view, known_layout=LAYOUT)
        assert snapshot.by_free == counted(snapshot) == Snapshot(now=0.0, nodes=NODES, jobs=tuple(view)).by_free
