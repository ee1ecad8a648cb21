"""The node agent: one per Ray node, the owner of that node's jobs and GPUs for a server elsewhere.

``tools.ray_executor`` runs a ``NodeAgent`` on every node of a Ray cluster as a named, detached actor pinned
to the node (no CPU, no Ray GPU: gpuherd assigns GPUs itself). The agent is the same tmux executor a
single machine uses (wrapper, exit-code files, logs, ``tmux -L <socket> attach`` on that node), plus the
node's GPUs: detected through NVML where a driver works, else the count declared for it (none: the node
takes no jobs). Everything it is asked crosses Ray as plain data (dicts, ``JobExit``, ``LogChunk``).

This module never imports Ray: the agent is a plain class, which the Ray executor wraps in an actor, and
which tests can drive without Ray.

Jobs die with their agent. The agent ties the tmux server to its own life with a watchdog window: when
the agent's process ends (its node left the cluster, ``ray stop``, a crash), the watchdog kills the tmux
server, so every job's wrapper marks it lost and stops it. The server has requeued those jobs by then,
so no job runs on twice where nobody watches it. An agent that starts on a node where an earlier one's
jobs still run (``orphans``) stops them first and says it is not ``ready`` until none of them lives: only
then do its GPUs take jobs again.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from tools.executor import JobExit
from tools.logs import LogChunk, read_log
from tools.models import STORED, Allocation, Gpu, InventorySource, Job
from tools.nvml import AttributedProbe, ProbeUnavailable, local_probe
from tools.tmux_executor import TmuxExecutor

log = logging.getLogger(__name__)

WATCHDOG_WINDOW = "herd-watchdog"


class NodeAgent:
    """One node's jobs (a ``TmuxExecutor`` in ``workdir``) and GPUs, for the server that drives it.

    ``declared_gpus``: the GPU count where NVML finds none (None or 0: no GPUs then). ``probe``: tests
    may pass one (``tools.nvml.GpuProbe``); the default is NVML on this node."""

    def __init__(self, node: str, workdir: str, *, tmux_socket: str = "gpuherd", declared_gpus: int | None = None,
                 run_as_owner: bool = False, lost_grace_s: float = 10.0, probe: Any = None,
                 watchdog: bool = True) -> None:
        self.node = node
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmux_socket = tmux_socket
        self._lock = threading.RLock()  # every call but wait and read_log: the executor is one protocol
        self.executor = TmuxExecutor(self.workdir, socket_name=tmux_socket, run_as_owner=run_as_owner,
                                     lost_grace_s=lost_grace_s)
        # Its jobs' processes on the GPUs are told from anyone else's here, where they run.
        self._probe = AttributedProbe(probe if probe is not None else local_probe(node), self.executor.process_groups)
        self._gpus, self.source, self.notice = self._discover(declared_gpus)
        self._orphans: set[int] = set()
        self._stop_orphans()
        if watchdog:
            self._start_watchdog()

    # -- what the node is ----------------------------------------------------------------------------
    def _discover(self, declared: int | None) -> tuple[list[Gpu], InventorySource, str]:
        try:
            gpus = self._probe.discover()
        except ProbeUnavailable as exc:
            why = str(exc)
        else:
            if gpus:
                gpus = [g.model_copy(update={"node": self.node}) for g in gpus]
                return gpus, InventorySource.NVML, f"{len(gpus)} GPU(s) detected through NVML"
            why = "NVML works but reports no GPUs"
        if declared:
            gpus = [Gpu(node=self.node, index=i, uuid=f"GPU-declared-{self.node}-{i}") for i in range(declared)]
            return gpus, InventorySource.DECLARED, f"{declared} GPU(s) declared, not detected ({why})"
        return [], InventorySource.DECLARED, f"no GPUs: none detected ({why}) and none declared"

    def report(self, metrics: bool = True) -> dict[str, Any]:
        """Who and where the agent is, whether it takes jobs (``ready``), and its GPUs with live
        readings (``metrics``: read NVML now; a GPU that gives no reading is unhealthy)."""
        gpus = self._gpus
        if metrics and self.source == InventorySource.NVML:
            try:
                readings = self._probe.metrics()
            except ProbeUnavailable:
                readings = None
            if readings is not None:
                gpus = [g.model_copy(update={"metrics": readings.get(g.index), "healthy": g.index in readings})
                        for g in gpus]
        with self._lock:
            if self._orphans:
                self._poll_orphans()
            ready = not self._orphans
        return {
            "node": self.node, "pid": os.getpid(), "host": socket.gethostname(), "ready": ready,
            "source": self.source.value, "notice": self.notice, "tmux_socket": self.tmux_socket,
            "workdir": str(self.workdir), "gpus": [g.model_dump(mode="json") for g in gpus],
        }

    # -- the executor, for the server -----------------------------------------------------------------
    def start(self, job: dict[str, Any], gpus: list[int], now: float, extra_env: dict[str, str]) -> str:
        """Start ``job`` (a ``Job``'s dump) on ``gpus`` of this node, with ``extra_env`` (a gang's part:
        torchrun's variables) added to its environment; returns the log's path. ``StartError`` as the
        tmux executor raises it."""
        record = Job.model_validate(job, context=STORED)
        if extra_env:
            # Set by gpuherd, not asked for: not validated as a request's env would be.
            record = record.model_copy(update={"env": {**record.env, **extra_env}})
        with self._lock:
            self._orphans.discard(record.id)
            return self.executor.start(record, Allocation(node=self.node, gpus=tuple(gpus)), now)

    def stop(self, job_id: int, now: float, grace_s: float) -> None:
        with self._lock:
            self.executor.stop(job_id, now, grace_s)

    def poll(self, now: float) -> list[JobExit]:
        with self._lock:
            ends = self.executor.poll(now)
            if self._orphans:
                ends = [e for e in ends if e.job_id not in self._orphans]
                self._poll_orphans(now)
            return ends

    def forget(self, job_id: int) -> None:
        with self._lock:
            self.executor.forget(job_id)

    def recover(self, job_ids: Iterable[int], now: float) -> list[JobExit]:
        """After the server restarted: adopt these jobs (also ones this agent took for orphans)."""
        job_ids = list(job_ids)
        with self._lock:
            self._orphans.difference_update(job_ids)
            return self.executor.recover(job_ids, now)

    def wait(self, timeout_s: float) -> bool:
        """Block until a job of this node may have ended, or ``timeout_s``."""
        self.executor.wait(timeout_s)
        return True

    def read_log(self, job_id: int, tail: int | None = None, offset: int | None = None,
                 length: int | None = None) -> LogChunk:
        return read_log(self.executor.log_path(job_id), tail=tail, offset=offset, length=length)

    def window(self, job_id: int) -> tuple[str, str, str] | None:
        """(tmux socket, session, window) of a job running here, for ``herd attach`` on this node."""
        where = getattr(self.executor, "window", None)
        with self._lock:
            return where(job_id) if where is not None else None

    @staticmethod
    def free_port() -> int:
        """A TCP port free on this node now: a gang job's ``MASTER_PORT``."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def close(self) -> None:
        self.executor.close()

    # -- the agent's life ----------------------------------------------------------------------------
    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        tmux = shutil.which("tmux") or "tmux"
        return subprocess.run([tmux, "-L", self.tmux_socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=10, stdin=subprocess.DEVNULL)

    def _stop_orphans(self) -> None:
        """Jobs of an earlier agent on this node that may still run: the server has requeued them
        (their agent died), so they are stopped as lost (the tmux server goes, each wrapper stops its
        job), and this agent is not ready until none of them lives."""
        jobs_dir = self.workdir / "jobs"
        ids = [int(d.name) for d in jobs_dir.iterdir() if d.name.isdigit()] if jobs_dir.is_dir() else []
        ids = [i for i in ids if not (jobs_dir / str(i) / "exit_code").exists()]
        if self._tmux("has-session").returncode == 0:
            log.warning("node %s: an earlier agent's tmux server %r still runs; stopping its jobs %s",
                        self.node, self.tmux_socket, ids)
            self._tmux("kill-server")
        if ids:
            self._orphans = set(ids)
            self.executor.recover(ids, time.time())
            self._poll_orphans()

    def _poll_orphans(self, now: float | None = None) -> None:
        for end in self.executor.poll(time.time() if now is None else now):
            if end.job_id in self._orphans:
                self._orphans.discard(end.job_id)
                self.executor.forget(end.job_id)

    def _start_watchdog(self) -> None:
        """A window beside the jobs that kills the tmux server (and so stops every job, as lost) once
        this process has ended."""
        pid = os.getpid()
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
        tmux = shutil.which("tmux") or "tmux"
        script = (
            f"alive() {{ local line f; {{ read -r line < /proc/{pid}/stat; }} 2>/dev/null || return 1; "
            f'read -ra f <<< "${{line##*) }}"; [[ ${{f[19]}} == {start} && ${{f[0]}} != Z ]]; }}; '
            f"while alive; do sleep 1; done; "
            f"{shlex.quote(tmux)} -L {shlex.quote(self.tmux_socket)} -f /dev/null kill-server"
        )
        bash = shutil.which("bash") or "/bin/bash"
        env = shutil.which("env") or "/usr/bin/env"
        keep = [f"{k}={os.environ[k]}" for k in ("PATH", "TMUX_TMPDIR") if k in os.environ]
        self.executor.side_window(WATCHDOG_WINDOW, shlex.join([env, "-i", *keep, bash, "--noprofile", "--norc",
                                                               "-c", script]))
