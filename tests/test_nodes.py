"""Nodes without Ray (issue 13): the single-machine path never loads Ray, and a node the executor cannot
reach never receives a job; the inventory that follows an executor's nodes (what Ray's agents report)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cores import make_core
from tools.door import cluster
from tools.door.context import OPERATOR, ToolContext
from tools.inventory import InventoryConflict, NodeDeclaration, ResourceManager, UnreachableNode, declared_nodes
from tools.models import Gpu, GpuMetrics, InventorySource, JobSpec, Node
from tools.store import MemoryStore
from tools.tmux_executor import TmuxExecutor


def test_the_single_machine_service_never_imports_ray():
    code = ("import sys; import agent.build, agent.service, agent.api, agent.cli, agent.cli.serve, tools.door.jobs; "
            "from agent.api import create_app; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m == 'tools.ray_executor'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_ray_a_second_node_cannot_be_declared(tmp_path):
    executor = TmuxExecutor(tmp_path / "work", socket_name="herd-test-unreachable")
    core = make_core(nodes={"local": 4}, executor=executor)
    ctx = ToolContext(core, OPERATOR)
    two = cluster.SetInventory(nodes=[NodeDeclaration(name="gpu01", gpus=2), NodeDeclaration(name="gpu02", gpus=2)])
    with pytest.raises(UnreachableNode, match="gpu01, gpu02: without Ray this server runs jobs on this machine only"):
        cluster.set_inventory(ctx, two)
    assert [n.name for n in core.resources.nodes()] == ["local"]
    # One node, whatever its name, is this machine.
    cluster.set_inventory(ctx, cluster.SetInventory(nodes=[NodeDeclaration(name="gpu01", gpus=2)]))
    assert [n.name for n in core.resources.nodes()] == ["gpu01"]


def test_without_ray_a_saved_inventory_of_two_nodes_keeps_only_the_first(tmp_path):
    store = MemoryStore()
    store.save_inventory(declared_nodes([NodeDeclaration(name="gpu01", gpus=2), NodeDeclaration(name="gpu02", gpus=2)]))
    executor = TmuxExecutor(tmp_path / "work", socket_name="herd-test-unreachable")
    core = make_core(nodes=[], executor=executor, store=store)
    assert [n.name for n in core.resources.nodes()] == ["gpu01"]
    assert "gpu02 left out: without Ray" in core.inventory_notice


def test_the_simulator_still_places_on_declared_nodes():
    core = make_core(nodes={"a": 2, "b": 2})
    ctx = ToolContext(core, OPERATOR)
    cluster.set_inventory(ctx, cluster.SetInventory(nodes=[NodeDeclaration(name="a", gpus=2),
                                                           NodeDeclaration(name="b", gpus=2)]))
    assert [n.name for n in core.resources.nodes()] == ["a", "b"]


def _node(name: str, gpus: int, source=InventorySource.DECLARED, metrics=None) -> Node:
    return Node(name=name, source=source, gpus=tuple(
        Gpu(node=name, index=i, uuid=f"GPU-{name}-{i}", metrics=metrics) for i in range(gpus)))


def test_follow_brings_and_takes_nodes_with_events_and_keeps_drains():
    store = MemoryStore()
    resources = ResourceManager(store, None)
    resources.followed = "the Ray cluster's"
    a, b = _node("a", 2), _node("b", 2)
    assert "node a joined with 2 GPU(s); node b joined" in resources.follow((a, b), now=1.0)
    resources.drain("b", 1, now=2.0)
    assert "node b left" in resources.follow((a,), now=3.0)
    assert [n.name for n in resources.nodes()] == ["a"]
    resources.follow((a, b), now=4.0)
    assert resources.gpu("b", 1).drained  # drained before it left: drained when it is back
    # New readings alone: no event, nothing stored.
    events = len(store.events())
    reading = GpuMetrics(utilization_pct=50)
    assert resources.follow((a, _node("b", 2, metrics=reading)), now=5.0) is None
    assert resources.gpu("b", 0).metrics == reading and len(store.events()) == events
    with pytest.raises(InventoryConflict, match="Ray cluster's"):
        resources.declare([NodeDeclaration(name="c", gpus=1)], now=6.0, held=set())


class NodesExecutor:
    """The simulated executor, reporting nodes as Ray's agents would."""

    def __init__(self, inner, nodes):
        self.inner, self.reported = inner, nodes

    def nodes(self):
        return self.reported

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_lost_node_hands_over_its_jobs_before_its_gpus_go():
    from tools.executor import JobExit
    from tools.sim_executor import SimExecutor

    sim = SimExecutor()
    executor = NodesExecutor(sim, (_node("a", 2), _node("b", 2)))
    core = make_core(nodes={"a": 2, "b": 2}, executor=executor, multi_node=True)
    orch = core.orchestrator
    orch.follow_nodes(core.clock.now())
    job = orch.submit(JobSpec(user="u", command="x", gpu_count=2, max_retries=0))
    other = orch.submit(JobSpec(user="u", command="x", gpu_count=2, max_retries=0))
    orch.tick()
    on_b = next(j for j in (job, other) if core.queue.get(j.id).allocation.node == "b")
    # Node b goes: its job's end comes as lost, with the reason, in the same pass as its GPUs leave.
    executor.reported = (_node("a", 2),)
    sim._running.pop(on_b.id)
    sim._ended[on_b.id] = JobExit(on_b.id, None, core.clock.now(), lost=True, why="node b left the Ray cluster")
    orch.tick()
    after = core.queue.get(on_b.id)
    assert after.status.value == "queued" and after.attempts == 0
    assert [n.name for n in core.resources.nodes()] == ["a"]
    messages = [e.message for e in core.store.events(job_id=on_b.id)]
    assert any("node b left the Ray cluster" in m and "no retry used" in m for m in messages)
