"""The watch end to end with real processes: a job run by the tmux executor puts a process on a (twin)
GPU, and so does someone outside gpuherd; the job's is told as the job's, the other as foreign."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from uuid import uuid4

import pytest

from tests.cores import make_core
from tests.fake_nvml import FakeNvml, FakeProcess, h100s
from tests.helpers import wait_until
from tools.clock import RealClock
from tools.door import jobs
from tools.door.cluster import GetClusterState, GpuState, get_cluster_state
from tools.door.context import OPERATOR, ToolContext
from tools.door.watch import IdleRules, watch
from tools.models import JobRequest, JobStatus
from tools.nvml import NvmlProbe
from tools.tmux_executor import TmuxExecutor

pytestmark = pytest.mark.tmux


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(comm, ppid, pgid, session) of a live process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = data[data.index("(") + 1:data.rindex(")")]
    fields = data.rsplit(")", 1)[1].split()
    return comm, int(fields[1]), int(fields[2]), int(fields[3])


def _descendant_in_own_session(root: int) -> int | None:
    """A process below ``root`` that made a session of its own (``setsid``), as some launchers do."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents[int(entry)] = st
    for pid, (comm, ppid, pgid, sid) in parents.items():
        if comm == "sleep" and sid == pid:
            up = ppid
            while up > 1 and up in parents:
                if up == root:
                    return pid
                up = parents[up][1]
    return None


def test_a_jobs_own_process_on_a_gpu_is_not_foreign_while_another_process_is(tmp_path):
    executor = TmuxExecutor(tmp_path / "work", socket_name=f"herd-test-{uuid4().hex[:8]}")
    nvml = FakeNvml(h100s(2))
    (tmp_path / "w").mkdir()
    core = make_core(clock=RealClock(), executor=executor, probe=NvmlProbe("local", nvml), workdir=tmp_path / "w")
    outsider = subprocess.Popen(["sleep", "60"])
    ctx = ToolContext(core, OPERATOR)
    try:
        # The job's GPU work runs in a session of its own: membership cannot rest on its process group alone.
        job_id = jobs.submit_job(ctx, JobRequest(command="setsid sleep 60 & wait", gpu_count=1), user="alice").job_id
        core.orchestrator.tick()
        job = core.store.get_job(job_id)
        assert job.status == JobStatus.RUNNING
        groups = wait_until(lambda: executor.process_groups().get(job_id), 10, 0.05, what="the job's process group")
        leader = min(groups)  # its wrapper (the session leader) starts before its process group
        worker = wait_until(lambda: _descendant_in_own_session(leader), 10, 0.05, what="the job's setsid'd worker")
        mine, other = job.allocation.gpus[0], 1 - job.allocation.gpus[0]
        nvml.gpus[mine].processes = [FakeProcess(worker, used_mib=5000)]
        nvml.gpus[other].processes = [FakeProcess(outsider.pid, used_mib=700)]
        core.resources.refresh_metrics(core.clock.now())
        watch(ctx, IdleRules())

        gpus = {g.index: g for g in get_cluster_state(ctx, GetClusterState()).nodes[0].gpus}
        assert [(p.pid, p.job_id, p.foreign) for p in gpus[mine].processes] == [(worker, job_id, False)]
        assert gpus[mine].state == GpuState.ALLOCATED and gpus[mine].in_use_by == []
        assert [(p.pid, p.job_id, p.foreign) for p in gpus[other].processes] == [(outsider.pid, None, True)]
        assert gpus[other].state == GpuState.FOREIGN
        assert gpus[other].in_use_by == [f"{gpus[other].processes[0].user} (sleep {outsider.pid})"]
        # and the outsider's GPU takes no job while it is there
        waiting = jobs.submit_job(ctx, JobRequest(command="true", gpu_count=1), user="alice").job_id
        core.orchestrator.tick()
        assert core.store.get_job(waiting).status == JobStatus.QUEUED
    finally:
        outsider.kill()
        outsider.wait()
        for j in core.queue.active():
            if j.status == JobStatus.RUNNING:
                core.orchestrator.cancel(j.id)

        def ended() -> bool:
            core.orchestrator.tick()  # records the ends
            return not any(j.status == JobStatus.RUNNING for j in core.queue.active())

        wait_until(ended, 20, 0.1, what="the jobs to end")
        executor.close()
        executor.shutdown_server()


def test_a_node_agent_reports_its_gpus_processes_told_by_its_own_jobs(tmp_path):
    """With Ray the server never sees a node's process tree: the node's agent tells the processes apart."""
    from tools.node_agent import NodeAgent

    outsider = subprocess.Popen(["sleep", "60"])
    nvml = FakeNvml(h100s(1))
    nvml.gpus[0].processes = [FakeProcess(outsider.pid)]
    nvml.gpus[0].ecc_uncorrected = 3
    agent = NodeAgent("n1", str(tmp_path / "agent"), tmux_socket=f"herd-test-{uuid4().hex[:8]}",
                      probe=NvmlProbe("n1", nvml), watchdog=False)
    try:
        (gpu,) = agent.report()["gpus"]
        (process,) = gpu["metrics"]["processes"]
        assert (process["pid"], process["foreign"], process["job_id"]) == (outsider.pid, True, None)
        assert "lineage" not in process and gpu["metrics"]["ecc_uncorrected"] == 3
    finally:
        outsider.kill()
        outsider.wait()
        agent.close()
