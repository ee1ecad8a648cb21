"""The index's totals over the jobs holding GPUs (GPUs per user, tasks per array, the jobs preemption
reads, the GPUs held, the free GPUs per node) answer as a count over the jobs themselves would, in every view, however the jobs changed."""

from hypothesis import given, settings
from hypothesis import strategies as st

import tools.index as index_module
from policies.snapshot import Layout, Snapshot
from tools.index import JobIndex
from tools.models import JobStatus, StopReason

from tests.builders import job, node

NODES = tuple(node(f"n{i}", 3) for i in range(1, 9))  # job i runs on n{i} (see ``version``)
LAYOUT = Layout(NODES)  # one for every snapshot, as the orchestrator keeps it: free counts are kept per layout
STATES = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.COMPLETED)
change = st.tuples(
    st.integers(1, 8),  # job id
    st.sampled_from(STATES),
    st.sampled_from(("ana", "bo", "cy")),
    st.sampled_from((None, 100, 101)),  # array id
    st.booleans(),  # preemptible
    st.booleans(),  # being preempted
    st.integers(1, 3),  # GPUs
)


def version(job_id, status, user, array, preemptible, stopping, gpus):
    holds = status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
    # Job i holds GPUs 3i.. on its own node range, so that no two jobs claim the same GPU.
    on = (f"n{job_id}", tuple(range(gpus))) if holds else None
    extra = {"array_id": array, "array_index": 0, "array_size": 1} if array is not None else {}
    return job(job_id, gpus=gpus, user=user, status=status, on=on, preemptible=preemptible,
               stop_reason=StopReason.PREEMPT if holds and stopping else None, **extra)


def counted(holding):
    users, arrays = {}, {}
    for j in holding:
        users[j.user] = users.get(j.user, 0) + j.gpu_count
        if j.array_id is not None:
            arrays[j.array_id] = arrays.get(j.array_id, 0) + 1
    relevant = [j.id for j in holding if j.preemptible or j.stop_reason is not None]
    return users, arrays, relevant


@settings(max_examples=100, deadline=None)
@given(st.lists(change, max_size=60), st.sampled_from((4096, 3)))
def test_totals_match_a_count_over_the_holding_jobs_in_every_view(changes, log_size):
    index_module.HELD_LOG = log_size  # 3: the log of changed nodes begins anew every few changes
    try:
        index = JobIndex()
        views = []
        for c in changes:
            index.put(version(*c))
            views.append(index.view())
    finally:
        index_module.HELD_LOG = 4096
    # Older views kept theirs while the index went on changing; the free counts are read in order, then
    # backwards (a count kept from a later view is of no use to an earlier one).
    for view in views + views[::-1]:
        users, arrays, relevant = counted(view.holding)
        assert dict(view.user_gpus) == users
        assert dict(view.array_tasks) == arrays
        assert [j.id for j in view.preemption_relevant] == relevant
        from_index = Snapshot(now=0.0, nodes=NODES, jobs=view, known_layout=LAYOUT)
        from_tuple = Snapshot(now=0.0, nodes=NODES, jobs=tuple(view))
        assert from_index.in_use == from_tuple.in_use
        assert from_index.array_tasks == from_tuple.array_tasks
        assert from_index.preemption_relevant == from_tuple.preemption_relevant
        assert from_index.free_total == from_tuple.free_total == 8 * 3 - sum(j.gpu_count for j in view.holding)
        assert from_index.free_count == from_tuple.free_count
