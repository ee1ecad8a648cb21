"""Jobs larger than a node (trace replays): whole free nodes, held in the store on every node; the live
service keeps refusing them and tmux never starts one."""

import pytest

from tools.executor import StartError
from tools.models import Allocation, Job, JobStatus
from tools.orchestrator import InvalidJob
from tools.sim_executor import SimExecutor
from tools.store import GpuConflict, MemoryStore, SqliteStore

from tests.builders import spec
from tests.cores import make_core


def make(store, *, multi_node=True, durations=None):
    sim = SimExecutor(duration_of=lambda job: (durations or {}).get(job.id))
    core = make_core(nodes={"a": 4, "b": 4, "c": 4}, store=store, executor=sim, multi_node=multi_node)
    return core.orchestrator, core.clock


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_wide_job_holds_whole_nodes_in_the_store(tmp_path, store):
    store = SqliteStore(tmp_path / "herd.db") if store == "sqlite" else MemoryStore()
    orch, clock = make(store, durations={1: 10, 2: 10})
    wide, small = orch.submit(spec(6)), orch.submit(spec(4))
    assert orch.tick().started == (wide.id, small.id)
    wide = orch.queue.get(wide.id)
    assert wide.allocation == Allocation(node="a", gpus=(0, 1, 2, 3), more=(("b", (0, 1)),))
    assert orch.queue.get(small.id).allocation == Allocation(node="c", gpus=(0, 1, 2, 3))
    assert set(orch.snapshot().holders) == {(n, i) for n in "abc" for i in range(4)} - {("b", 2), ("b", 3)}
    clash = store.get_job(small.id).model_copy(update={"allocation": Allocation(node="b", gpus=(1, 2))})
    with pytest.raises(GpuConflict):
        store.save_job(clash, None)
    clock.advance(10)
    orch.tick()
    assert orch.queue.get(wide.id).status == JobStatus.COMPLETED and orch.snapshot().holders == {}


def test_the_service_refuses_a_job_larger_than_a_node(tmp_path):
    orch, _ = make(MemoryStore(), multi_node=False)
    with pytest.raises(InvalidJob, match="asks for 6 GPUs but the largest node has 4"):
        orch.submit(spec(6))


def test_even_a_replay_refuses_a_job_larger_than_the_cluster():
    orch, _ = make(MemoryStore())
    with pytest.raises(InvalidJob, match="asks for 13 GPUs but the cluster has 12"):
        orch.submit(spec(13))


@pytest.mark.tmux
def test_tmux_never_starts_a_job_across_nodes(tmp_path):
    from tools.tmux_executor import TmuxExecutor

    executor = TmuxExecutor(tmp_path / "work", socket_name="herd-test-multinode")
    job = Job(id=1, user="u", command="true", gpu_count=8, submit_time=0.0)
    with pytest.raises(StartError, match="spans nodes .*tmux runs jobs on one node"):
        executor.start(job, Allocation(node="a", gpus=(0, 1, 2, 3), more=(("b", (0, 1, 2, 3)),)), 0.0)
