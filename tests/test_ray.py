"""Many nodes through Ray: the node agents, gang jobs, a node lost, a restart (issue 13).

One real Ray cluster of two local nodes (``node0``, ``node1``, 4 declared GPUs each) for the whole module,
started as ``herd serve --ray-local-nodes 2 --gpus 4`` starts one, and one server (``Service``) on it, as
``herd serve --ray ADDRESS`` runs. Each test leaves no job running behind it. The node-loss test adds a
third node and removes it, so the others keep their two.
"""

from __future__ import annotations

import getpass
import time
from uuid import uuid4

import pytest

ray = pytest.importorskip("ray")

from agent.service import Service  # noqa: E402
from agent.settings import Settings  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tools.door import jobs as door  # noqa: E402
from tools.models import JobRequest, JobStatus, TERMINAL  # noqa: E402
from tools.ray_executor import GPUS_LABEL, NODE_LABEL, start_local_cluster  # noqa: E402
from tools.tmux_executor import TmuxExecutor  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.tmux, pytest.mark.ray]

USER = getpass.getuser()  # a shared server (root) runs each job as its owner: one this machine knows


@pytest.fixture(scope="module")
def cluster():
    cluster = start_local_cluster(2, gpus=4)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


class Herd:
    """The server on the module's cluster; ``restart()`` stops it (the agents and jobs go on) and starts
    another on the same work directory."""

    def __init__(self, cluster, workdir) -> None:
        self.settings = Settings.plain(ray=cluster.address, workdir=workdir, gpus=4, grace_s=1.0,
                                       tmux_socket=f"herd-ray-{uuid4().hex[:6]}", tick_interval_s=0.2)
        self.service = Service(self.settings)
        self.service.start()

    def restart(self) -> None:
        self.service.stop()
        self.service = Service(self.settings)
        self.service.start()

    @property
    def tools(self):
        return self.service.tools()

    def submit(self, command: str, gpus: int = 1, **fields) -> int:
        request = JobRequest(command=command, gpu_count=gpus, **fields)
        return door.submit_job(self.tools, request, user=USER).job_id

    def job(self, job_id: int):
        return door.get_job(self.tools, door.GetJob(job_id=job_id))

    def log(self, job_id: int, **args) -> str:
        return door.job_logs(self.tools, door.JobLogs(job_id=job_id, **args)).text

    def ended(self, *job_ids: int, timeout_s: float = 30.0):
        return wait_until(lambda: all(self.job(i).status in TERMINAL for i in job_ids) and [self.job(i) for i in job_ids],
                          timeout_s, 0.1, what=lambda: f"jobs {job_ids} to end: {[self.job(i).status for i in job_ids]}")

    def running(self, job_id: int, timeout_s: float = 20.0):
        return wait_until(lambda: (j := self.job(job_id)).status == JobStatus.RUNNING and j, timeout_s, 0.1,
                          what=lambda: f"job {job_id} to run (it is {self.job(job_id).status})")

    def events(self, job_id: int) -> list[str]:
        return [e.message for e in door.job_events(self.tools, door.JobEvents(job_id=job_id))]


@pytest.fixture(scope="module")
def herd(cluster, tmp_path_factory):
    herd = Herd(cluster, tmp_path_factory.mktemp("ray-herd"))
    yield herd
    herd.service.executor.shutdown_agents()
    herd.service.stop()


def test_the_inventory_is_what_the_agents_report(herd):
    nodes = {n.name: len(n.gpus) for n in herd.service.resources.nodes()}
    assert nodes == {"node0": 4, "node1": 4}
    assert "Ray cluster" in herd.service.core.inventory_notice


def test_eight_one_gpu_jobs_spread_over_both_nodes(herd):
    ids = [herd.submit('echo "node=$HERD_NODE gpus=$CUDA_VISIBLE_DEVICES"; sleep 2') for _ in range(8)]
    jobs = herd.ended(*ids)
    assert all(j.status == JobStatus.COMPLETED for j in jobs)
    seen = {}
    for job in jobs:
        line = herd.log(job.id).strip()
        assert line == f"node={job.node} gpus={job.allocation.gpus[0]}", line
        seen.setdefault(job.node, set()).add(line)
    # All eight at once: four on each node, each on a GPU of its own there.
    assert {node: len(lines) for node, lines in seen.items()} == {"node0": 4, "node1": 4}


def test_a_gang_job_takes_both_nodes_with_torchruns_environment(herd):
    job_id = herd.submit('echo "rank=$NODE_RANK/$HERD_NODE_RANK world=$WORLD_SIZE nnodes=$NNODES node=$HERD_NODE '
                         'master=$MASTER_ADDR:$MASTER_PORT gpus=$CUDA_VISIBLE_DEVICES"', gpus=8)
    (job,) = herd.ended(job_id)
    assert job.status == JobStatus.COMPLETED and job.exit_code == 0
    assert job.allocation.gpu_count == 8 and {job.allocation.node, *(n for n, _ in job.allocation.more)} == {"node0", "node1"}
    text = herd.log(job_id)
    assert "==> rank 0 on" in text and "==> rank 1 on" in text
    lines = [line for line in text.splitlines() if line.startswith("rank=")]
    assert sorted(line.split()[0] for line in lines) == ["rank=0/0", "rank=1/1"]
    assert all("world=2 nnodes=2" in line and "gpus=0,1,2,3" in line for line in lines)
    assert len({line.split("master=")[1].split()[0] for line in lines}) == 1  # one rendezvous for both
    assert herd.log(job_id, rank=1).startswith(f"rank=1/1 world=2 nnodes=2 node={job.allocation.more[0][0]}")


def test_a_failing_part_stops_the_others_and_its_code_is_the_jobs(herd):
    job_id = herd.submit('if [ "$NODE_RANK" = 1 ]; then sleep 1; exit 3; fi; echo waiting; sleep 60; echo never',
                         gpus=8, max_retries=0)
    started = time.monotonic()
    (job,) = herd.ended(job_id, timeout_s=30)
    assert job.status == JobStatus.FAILED and job.exit_code == 3
    assert time.monotonic() - started < 20  # rank 0 was stopped, not waited for
    assert "never" not in herd.log(job_id, rank=0)
    assert any("rank 1 on" in m and "exited 3" in m for m in herd.events(job_id))


def test_cancel_a_job_on_the_second_node(herd):
    first = herd.submit("sleep 60", gpus=4)
    second = herd.submit("echo started; sleep 60", gpus=4)
    assert {herd.running(first).node, herd.running(second).node} == {"node0", "node1"}
    on_node1 = first if herd.job(first).node == "node1" else second
    if hasattr(TmuxExecutor, "window"):  # herd attach finds its window in node1's tmux
        socket, _, window = herd.service.executor.window(on_node1)
        assert socket.endswith(f"{herd.settings.tmux_socket}-node1") and window == f"job-{on_node1}"
    door.cancel_job(herd.tools, door.CancelJob(job_id=on_node1))
    (job,) = herd.ended(on_node1, timeout_s=15)
    assert job.status == JobStatus.CANCELLED
    other = second if on_node1 == first else first
    door.cancel_job(herd.tools, door.CancelJob(job_id=other))
    herd.ended(other, timeout_s=15)


def test_a_time_limit_stops_a_job_on_its_node(herd):
    job_id = herd.submit("echo going; sleep 60", time_limit_s=2.0, max_retries=0)
    (job,) = herd.ended(job_id, timeout_s=20)
    assert job.status == JobStatus.FAILED and job.end_reason.value == "timeout"
    assert herd.log(job_id).startswith("going")


def test_a_restarted_server_adopts_the_jobs_its_agents_run(herd):
    job_id = herd.submit('echo before; sleep 4; echo after')
    node = herd.running(job_id).node
    herd.restart()
    job = herd.job(job_id)
    assert job.status == JobStatus.RUNNING and job.node == node and job.attempts == 1
    (job,) = herd.ended(job_id)
    assert job.status == JobStatus.COMPLETED and job.attempts == 1
    assert herd.log(job_id) == "before\nafter\n"


def test_an_agent_that_dies_takes_its_jobs_with_it_and_a_new_one_takes_its_place(herd, monkeypatch):
    from tools import ray_executor

    monkeypatch.setattr(ray_executor, "AGENT_RETRY_S", 0.5)
    job_id = herd.submit('echo "start on $HERD_NODE"; sleep 5; echo "done on $HERD_NODE"', gpus=4, max_retries=0)
    node = herd.running(job_id).node
    ray.kill(ray.get_actor(f"{ray_executor.AGENT_PREFIX}{herd.settings.tmux_socket}:{node}"), no_restart=True)
    (job,) = herd.ended(job_id, timeout_s=40)
    assert job.status == JobStatus.COMPLETED and job.attempts == 1  # requeued, no retry used (it had none)
    assert any(f"the node agent of {node} died" in m for m in herd.events(job_id))
    # The first attempt did not go on where nobody watched it: the agent's watchdog stopped it.
    first_log = herd.settings.workdir / "nodes" / node / "logs" / f"job-{job_id}.log"
    assert first_log.read_text().count("done on") == (1 if job.node == node else 0)
    wait_until(lambda: node in {n.name for n in herd.service.resources.nodes()}, 30, 0.2,
               what=f"{node} to come back with a new agent")


def test_a_node_that_leaves_takes_its_gpus_and_its_jobs_are_requeued_without_a_retry(herd, cluster):
    extra = cluster.add_node(num_cpus=1, labels={NODE_LABEL: "node2", GPUS_LABEL: "4"}, object_store_memory=100 << 20)
    wait_until(lambda: "node2" in {n.name for n in herd.service.resources.nodes()}, 30, 0.2, what="node2's GPUs")
    # Both other nodes busy for a while, so the next 4-GPU job lands on node2.
    busy = [herd.submit("sleep 4", gpus=4) for _ in range(2)]
    for job_id in busy:
        herd.running(job_id)
    moved = herd.submit('echo "on $HERD_NODE"; sleep 3', gpus=4, max_retries=0)
    assert herd.running(moved).node == "node2"
    cluster.remove_node(extra)
    wait_until(lambda: "node2" not in {n.name for n in herd.service.resources.nodes()}, 30, 0.2,
               what="node2 to leave the inventory")
    (job,) = herd.ended(moved, timeout_s=40)
    assert job.status == JobStatus.COMPLETED and job.node in ("node0", "node1")
    assert job.attempts == 1  # the lost attempt is not counted: no retry used (it had none)
    assert any("node2" in m and "no retry used" in m for m in herd.events(moved))
    assert herd.log(moved).strip() == f"on {job.node}"
    herd.ended(*busy)
