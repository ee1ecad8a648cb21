"""``RayExecutor``: jobs on every node of a Ray cluster, through one node agent per node.

The server joins an existing Ray cluster as a driver (``herd serve --ray ADDRESS``; ``auto``: this
machine's cluster) and keeps on every Ray node one ``tools.node_agent.NodeAgent``: a named, detached
actor (``herd-agent:<tmux socket>:<node>`` in the namespace ``gpuherd``) pinned to the node, with no CPU and no Ray GPU
(gpuherd assigns GPUs itself). The executor interface routes to them: ``start``, ``stop``, ``poll``,
``forget``, ``recover`` and ``wait`` go to the agent of each node a job runs on, and ``nodes()`` (which
the orchestrator makes the inventory) is what the ready agents report. Nothing above this module knows
about Ray.

Node names: a node's label ``gpuherd-node`` (``ray start --labels gpuherd-node=gpu01``), else its host
name (with the start of its Ray node id where one host runs several Ray nodes). The name is the
agent's, so a restarted server finds each agent, and the jobs it runs, by the node names in its
database.

Nodes come and go. ``poll`` looks at the cluster every ``refresh_s``: a new node gets an agent, and its
GPUs appear once the agent reports ready. A node that left, or whose agent died, is lost with every part
of a job it ran: those ends are reported ``lost`` with the reason, so the orchestrator requeues the jobs
without using a retry, before the node's GPUs leave the inventory. (The agent's watchdog stops what ran
there, if the machine still runs.)

Gang jobs. A job larger than one node gets whole nodes (``Allocation.more``): one part per node, rank 0
on the first, each started by its node's agent with torchrun's variables (``MASTER_ADDR`` rank 0's
address, ``MASTER_PORT`` a port free there, ``WORLD_SIZE`` and ``NNODES`` the number of parts,
``NODE_RANK``) plus ``HERD_NODE_RANK`` and ``HERD_NNODES``. The job ends when every part has ended; a part
that fails (a non-zero code, or lost) stops the others (SIGTERM, SIGKILL after ``grace_s``); the job's
exit code is the first non-zero one, and it is lost if its first failure was a lost part. Each part
writes its own log on its node; ``read_log`` reads one part (``rank``) or all of them.

Ray is imported here and in what this module starts; ``agent.build`` imports this module only for
``--ray``, so the single-machine path never loads Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tools.executor import JobExit, StartError
from tools.logs import LogChunk, UnsafeLog
from tools.models import Allocation, Gpu, InventorySource, Job, Node
from tools.node_agent import NodeAgent

log = logging.getLogger(__name__)

NAMESPACE = "gpuherd"
NODE_LABEL = "gpuherd-node"  # ray start --labels gpuherd-node=gpu01: the node's name in gpuherd
GPUS_LABEL = "gpuherd-gpus"  # the GPU count of a node without an NVIDIA driver (else the server's --gpus)
AGENT_PREFIX = "herd-agent:"
CALL_TIMEOUT_S = 30.0  # an agent that answers nothing for this long is taken for dead
AGENT_WAIT_S = 10.0  # one wait call on an agent; the executor's wait asks again
AGENT_RETRY_S = 10.0  # after an agent died (or could not start), the next try on its node

_Agent = ray.remote(concurrency_groups={"wait": 2, "io": 4})(NodeAgent)


def connect(address: str | None, *, namespace: str = NAMESPACE) -> None:
    """Join the Ray cluster at ``address`` (``auto``: this machine's) as a driver, once per process."""
    if ray.is_initialized():
        return
    ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING,
             include_dashboard=None if address else False)


@dataclass
class _AgentRef:
    name: str  # the node's name in gpuherd
    node_id: str  # Ray's
    address: str  # the node's IP address (a gang's MASTER_ADDR)
    handle: Any
    report: dict[str, Any] | None = None  # the last one; None until the agent first answered
    pending: Any = None  # a report asked for and not yet read
    waiting: Any = None  # a wait call in flight
    dead: str | None = None  # why it is lost

    @property
    def ready(self) -> bool:
        return self.dead is None and self.report is not None and bool(self.report.get("ready"))


@dataclass
class _Part:
    node: str
    gpus: tuple[int, ...]
    rank: int
    end: JobExit | None = None
    seen: int = 0  # order in which ends came, for "the first non-zero"


@dataclass
class _Job:
    parts: list[_Part]
    stopping: bool = False  # a part failed: the others are being stopped
    end: JobExit | None = None
    first_failure: _Part | None = None
    extra: list[str] = field(default_factory=list)


class RayExecutor:
    """The ``Executor`` over a Ray cluster's node agents; see the module's doc.

    ``workdir``: the server's; each agent keeps its jobs in ``<workdir>/nodes/<node>`` on its own node.
    ``declared_gpus``: the GPU count of nodes without a driver (a node's ``gpuherd-gpus`` label wins).
    ``socket_per_node``: each agent gets its own tmux socket (``<tmux_socket>-<node>``), for several Ray
    nodes on one machine (``--ray-local-nodes``); otherwise it does where one host runs several nodes.
    ``allocation_of``: a job's allocation as stored, for ``recover`` after a restart."""

    def __init__(self, address: str | None, *, workdir: Path, tmux_socket: str = "gpuherd",
                 declared_gpus: int | None = None, run_as_owner: bool = False, grace_s: float = 10.0,
                 lost_grace_s: float = 10.0, namespace: str = NAMESPACE, refresh_s: float = 2.0,
                 socket_per_node: bool = False, allocation_of: Callable[[int], Allocation | None] | None = None,
                 start_timeout_s: float = 60.0, local_cluster: Any = None) -> None:
        connect(address, namespace=namespace)
        self.local_cluster = local_cluster  # started for this server (--ray-local-nodes): ended by close()
        self.workdir = Path(workdir).resolve()
        self.tmux_socket = tmux_socket
        self.declared_gpus = declared_gpus
        self.run_as_owner = run_as_owner
        self.grace_s = grace_s
        self.lost_grace_s = lost_grace_s
        self.refresh_s = refresh_s
        self.socket_per_node = socket_per_node
        self.allocation_of = allocation_of
        self._agents: dict[str, _AgentRef] = {}
        self._retry_at: dict[str, float] = {}  # node -> when a new agent may be tried after one died
        self._jobs: dict[int, _Job] = {}
        self._seen = 0
        self._next_refresh = float("-inf")
        self._nodes: tuple[Node, ...] = ()
        self._lock = threading.RLock()  # the tick thread and the REST threads (stop, read_log)
        self._closing = threading.Event()
        self.refresh(wait_s=start_timeout_s)

    # -- the cluster's nodes ---------------------------------------------------------------------
    def refresh(self, wait_s: float = 0.0) -> None:
        """Look at the cluster: give new nodes an agent, lose nodes that left, read the agents' reports
        (waiting up to ``wait_s`` for agents that have not answered yet)."""
        with self._lock:
            self._next_refresh = time.monotonic() + self.refresh_s
            alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
            names = _node_names(alive.values())
            now = time.monotonic()
            for node_id, name in names.items():
                known = self._agents.get(name)
                if known is not None and known.node_id == node_id and known.dead is None:
                    continue
                if known is not None and known.dead is None:
                    self._lose(known, f"node {name} was replaced by another Ray node of that name")
                if self._retry_at.get(name, 0.0) > now:
                    continue  # its agent died on a node that is still there: not again at once
                self._agents[name] = self._agent_for(name, alive[node_id])
            for ref in self._agents.values():
                if ref.dead is None and ref.node_id not in alive:
                    self._lose(ref, f"node {ref.name} left the Ray cluster")
            deadline = time.monotonic() + wait_s
            while True:
                live = [ref for ref in self._agents.values() if ref.dead is None]
                for ref in live:
                    if ref.pending is None:
                        ref.pending = ref.handle.report.remote(True)
                pending = {ref.pending: ref for ref in live}
                left = max(0.0, deadline - time.monotonic())
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=left) if pending else ([], [])
                for obj in ready:
                    ref = pending[obj]
                    ref.pending = None
                    try:
                        ref.report = ray.get(obj)
                    except RayError as exc:
                        self._lose(ref, self._why_lost(ref, exc))
                if time.monotonic() >= deadline or all(ref.ready for ref in live if ref.dead is None):
                    break
                time.sleep(0.1)  # an agent still stopping an earlier agent's jobs: ask it again
            self._agents = {name: ref for name, ref in self._agents.items() if ref.dead is None
                            or any(p.node == name and p.end is None for j in self._jobs.values() for p in j.parts)}
            self._rebuild_nodes()

    def _agent_for(self, name: str, info: dict[str, Any]) -> _AgentRef:
        """The node's agent: the one already there (a restarted server adopts it), else a new one."""
        labels = info.get("Labels") or {}
        declared = labels.get(GPUS_LABEL)
        gpus = int(declared) if declared is not None and str(declared).isdigit() else self.declared_gpus
        socket = f"{self.tmux_socket}-{name}" if self.socket_per_node else self.tmux_socket
        if not self.socket_per_node and info.get("_shared_host"):
            socket = f"{self.tmux_socket}-{name}"
        handle = _Agent.options(
            name=f"{AGENT_PREFIX}{self.tmux_socket}:{name}", lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(info["NodeID"], soft=False),
        ).remote(name, str(self.workdir / "nodes" / name), tmux_socket=socket, declared_gpus=gpus,
                 run_as_owner=self.run_as_owner, lost_grace_s=self.lost_grace_s)
        return _AgentRef(name=name, node_id=info["NodeID"], address=info.get("NodeManagerAddress", ""), handle=handle)

    def _lose(self, ref: _AgentRef, why: str) -> None:
        """A node left or its agent died: every part of a job still running there is lost."""
        if ref.dead is not None:
            return
        log.warning("%s; its jobs are requeued", why)
        ref.dead = why
        self._retry_at[ref.name] = time.monotonic() + AGENT_RETRY_S
        for job in self._jobs.values():
            for part in job.parts:
                if part.node == ref.name and part.end is None:
                    job_id = next(i for i, j in self._jobs.items() if j is job)
                    self._part_ended(job_id, job, part, JobExit(job_id, None, time.time(), lost=True, why=why))

    @staticmethod
    def _why_lost(ref: _AgentRef, exc: BaseException) -> str:
        """Why an agent that failed to answer is lost: its node left, or the agent alone died."""
        text = str(exc).lower()
        gone = "its node" in text or "node died" in text or "node has died" in text
        if not gone:
            try:
                gone = not any(n["NodeID"] == ref.node_id and n.get("Alive") for n in ray.nodes())
            except RayError:
                pass
        if gone:
            return f"node {ref.name} left the Ray cluster"
        return f"the node agent of {ref.name} died ({_short(exc)})"

    def _rebuild_nodes(self) -> None:
        nodes = []
        for name in sorted(self._agents):
            ref = self._agents[name]
            if not ref.ready or not ref.report["gpus"]:
                continue
            gpus = tuple(Gpu.model_validate(g) for g in ref.report["gpus"])
            nodes.append(Node(name=name, source=InventorySource(ref.report["source"]), gpus=gpus))
        nodes = tuple(nodes)
        if nodes != self._nodes:
            self._nodes = nodes

    def nodes(self) -> tuple[Node, ...]:
        """The nodes whose agents are ready, with their GPUs and readings (the same tuple while nothing
        changed)."""
        return self._nodes

    def agents(self) -> dict[str, dict[str, Any]]:
        """Every node's agent as it last reported (``None``: not yet), and why a lost one was lost."""
        return {name: {**(ref.report or {}), "dead": ref.dead, "ready": ref.ready} for name, ref in self._agents.items()}

    def _live(self, node: str) -> _AgentRef:
        ref = self._agents.get(node)
        if ref is None or ref.dead is not None:
            why = ref.dead if ref is not None else f"node {node} is not in the Ray cluster"
            raise StartError(f"cannot start on {node}: {why}")
        return ref

    # -- Executor -------------------------------------------------------------------------------
    def start(self, job: Job, allocation: Allocation, now: float) -> str:
        parts = [(allocation.node, tuple(allocation.gpus)), *((n, tuple(g)) for n, g in allocation.more)]
        with self._lock:
            if job.id in self._jobs and self._jobs[job.id].end is None:
                raise StartError(f"job {job.id} is already running")
            refs = [self._live(node) for node, _ in parts]
            envs: list[dict[str, str]] = [{} for _ in parts]
            if len(parts) > 1:
                try:
                    port = ray.get(refs[0].handle.free_port.remote(), timeout=CALL_TIMEOUT_S)
                except RayError as exc:
                    raise StartError(f"job {job.id}: cannot reach the agent of {parts[0][0]}: {_short(exc)}") from None
                n = str(len(parts))
                common = {"MASTER_ADDR": refs[0].address, "MASTER_PORT": str(port), "WORLD_SIZE": n, "NNODES": n,
                          "HERD_NNODES": n}
                envs = [{**common, "NODE_RANK": str(r), "HERD_NODE_RANK": str(r)} for r in range(len(parts))]
            record = job.model_dump(mode="json")
            calls = [ref.handle.start.remote(record, list(gpus), now, env) for ref, (_, gpus), env in zip(refs, parts, envs)]
            paths: list[str | None] = []
            errors: list[str] = []
            for (node, _), call in zip(parts, calls):
                try:
                    paths.append(ray.get(call, timeout=CALL_TIMEOUT_S))
                except (RayError, StartError) as exc:
                    paths.append(None)
                    errors.append(f"{node}: {_short(exc)}")
            if errors:
                # Stop the parts that started; their ends are forgotten as they come.
                started = [_Part(node, gpus, r) for r, ((node, gpus), p) in enumerate(zip(parts, paths)) if p is not None]
                for part in started:
                    self._call(part.node, "stop", job.id, now, 0.0)
                if started:
                    self._jobs[job.id] = _Job(parts=started, stopping=True, extra=["aborted"])
                raise StartError(f"job {job.id} could not start on " + "; ".join(errors))
            self._jobs[job.id] = _Job(parts=[_Part(node, gpus, r) for r, (node, gpus) in enumerate(parts)])
            return f"{parts[0][0]}:{paths[0]}"

    def stop(self, job_id: int, now: float, grace_s: float) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.end is not None:
                return
            for part in job.parts:
                if part.end is None:
                    self._call(part.node, "stop", job_id, now, grace_s)

    def poll(self, now: float) -> list[JobExit]:
        with self._lock:
            if time.monotonic() >= self._next_refresh:
                self.refresh()
            nodes = {p.node for j in self._jobs.values() if j.end is None for p in j.parts if p.end is None}
            calls = {}
            for node in nodes:
                ref = self._agents.get(node)
                if ref is not None and ref.dead is None:
                    calls[node] = ref.handle.poll.remote(now)
            for node, call in calls.items():
                try:
                    ends = ray.get(call, timeout=CALL_TIMEOUT_S)
                except (RayActorError, GetTimeoutError) as exc:
                    self._lose(self._agents[node], self._why_lost(self._agents[node], exc))
                    self._rebuild_nodes()
                    continue
                except RayError as exc:  # the agent failed to answer this once; it is asked again next time
                    log.warning("polling the agent of %s failed: %s", node, _short(exc))
                    continue
                for end in ends:
                    self._agent_end(node, end)
            self._finish_aborted()
            return [j.end for j in self._jobs.values() if j.end is not None and "aborted" not in j.extra]

    def forget(self, job_id: int) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                for part in job.parts:
                    self._call(part.node, "forget", job_id, wait=False)

    def recover(self, job_ids: Iterable[int], now: float) -> list[JobExit]:
        """After a restart: each job's parts from its stored allocation; the agents of their nodes adopt
        what still runs and report what ended; a part whose node is not in the cluster is lost."""
        job_ids = list(job_ids)
        with self._lock:
            asked: dict[str, list[int]] = {}
            missing: list[tuple[int, _Job, _Part, str]] = []
            for job_id in job_ids:
                if job_id in self._jobs:
                    continue
                allocation = self.allocation_of(job_id) if self.allocation_of is not None else None
                if allocation is None:
                    self._jobs[job_id] = _Job(parts=[], end=JobExit(job_id, None, now, lost=True,
                                                                    why="its allocation is not known"))
                    continue
                parts = [(allocation.node, allocation.gpus), *allocation.more]
                job = self._jobs[job_id] = _Job(parts=[_Part(n, tuple(g), r) for r, (n, g) in enumerate(parts)])
                for part in job.parts:
                    ref = self._agents.get(part.node)
                    if ref is None or ref.dead is not None:
                        why = ref.dead if ref is not None else f"node {part.node} is not in the Ray cluster"
                        missing.append((job_id, job, part, why))
                    else:
                        asked.setdefault(part.node, []).append(job_id)
            # The agents adopt their parts first, so that a gang that lost a part can stop the others.
            calls = {node: self._agents[node].handle.recover.remote(ids, now) for node, ids in asked.items()}
            for node, call in calls.items():
                try:
                    ends = ray.get(call, timeout=CALL_TIMEOUT_S)
                except RayError as exc:
                    self._lose(self._agents[node], self._why_lost(self._agents[node], exc))
                    continue
                for end in ends:
                    self._agent_end(node, end)
            for job_id, job, part, why in missing:
                if part.end is None:
                    self._part_ended(job_id, job, part, JobExit(job_id, None, now, lost=True, why=why))
            return [self._jobs[i].end for i in job_ids if i in self._jobs and self._jobs[i].end is not None]

    def wait(self, timeout_s: float) -> None:
        """Until an agent says a job may have ended, or ``timeout_s``."""
        if self._closing.is_set():
            return
        refs = {}
        try:
            for ref in list(self._agents.values()):
                if ref.dead is not None:
                    continue
                if ref.waiting is None:
                    ref.waiting = ref.handle.wait.options(concurrency_group="wait").remote(AGENT_WAIT_S)
                refs[ref.waiting] = ref
            if not refs:
                self._closing.wait(timeout_s)
                return
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout_s)
        except Exception:  # Ray shutting down under us (close), or the connection lost: the next poll says
            self._closing.wait(min(timeout_s, 0.5))
            return
        for obj in ready:
            ref = refs[obj]
            ref.waiting = None
            try:
                ray.get(obj)
            except RayError:
                self._next_refresh = float("-inf")  # the next poll looks at the cluster at once
                self._closing.wait(min(timeout_s, 0.5))

    def close(self) -> None:
        """The agents and their jobs go on, and a restarted server adopts them; except on a local cluster
        this server started, which ends with it (its agents' watchdogs stop the jobs)."""
        self._closing.set()
        if self.local_cluster is not None:
            ray.shutdown()
            self.local_cluster.shutdown()
            self.local_cluster = None

    def shutdown_agents(self) -> None:
        """End every agent of this server (its watchdog then stops its jobs): tests' cleanup, not part of
        ``Executor``."""
        with self._lock:
            for ref in self._agents.values():
                try:
                    ray.kill(ref.handle, no_restart=True)
                except (RayError, ValueError):
                    pass
            self._agents.clear()
            self._nodes = ()

    def window(self, job_id: int) -> tuple[str, str, str] | None:
        """Where a running job's tmux window is on its node (a gang job: rank 0's), for ``herd attach``
        there; None if it has none."""
        job = self._jobs.get(job_id)
        if job is None or job.end is not None or not job.parts:
            return None
        ref = self._agents.get(job.parts[0].node)
        if ref is None or ref.dead is not None:
            return None
        try:
            found = ray.get(ref.handle.window.options(concurrency_group="io").remote(job_id), timeout=CALL_TIMEOUT_S)
        except RayError:
            return None
        return tuple(found) if found is not None else None

    # -- logs ---------------------------------------------------------------------------------------
    def read_log(self, job: Job, *, tail: int | None = None, offset: int | None = None, length: int | None = None,
                 rank: int | None = None) -> LogChunk:
        """A job's log, read on its node. A gang job: one part's (``rank``), or, without ``rank`` and
        ``offset``, every part's after a header line each; a follower (``offset``) reads rank 0's
        unless it names another."""
        allocation = job.allocation
        if allocation is None:
            return LogChunk(text="", next_offset=offset or 0, size=0)
        parts = [(allocation.node, allocation.gpus), *allocation.more]
        if rank is not None and not 0 <= rank < len(parts):
            raise ValueError(f"rank: job {job.id} has {len(parts)} part(s), ranks 0 to {len(parts) - 1}")
        if len(parts) == 1 or rank is not None or offset is not None:
            return self._read_part(job.id, parts[rank or 0][0], tail, offset, length)
        chunks = [(r, node, self._read_part(job.id, node, tail, None, length)) for r, (node, _) in enumerate(parts)]
        text = "".join(f"==> rank {r} on {node} <==\n{c.text}{'' if c.text.endswith(chr(10)) or not c.text else chr(10)}"
                       for r, node, c in chunks)
        first = chunks[0][2]
        return LogChunk(text=text, next_offset=first.next_offset, size=first.size, offset=first.offset)

    def _read_part(self, job_id: int, node: str, tail: int | None, offset: int | None, length: int | None) -> LogChunk:
        ref = self._agents.get(node)
        if ref is None or ref.dead is not None:
            note = "" if offset else f"gpuherd: this log is on node {node}, which is not in the Ray cluster now\n"
            return LogChunk(text=note, next_offset=offset or 0, size=0)
        try:
            return ray.get(ref.handle.read_log.options(concurrency_group="io").remote(job_id, tail, offset, length),
                           timeout=CALL_TIMEOUT_S)
        except UnsafeLog as exc:
            raise UnsafeLog(str(exc).splitlines()[-1]) from None
        except RayError as exc:
            return LogChunk(text="" if offset else f"gpuherd: cannot read the log on {node}: {_short(exc)}\n",
                            next_offset=offset or 0, size=0)

    # -- gang bookkeeping ---------------------------------------------------------------------------
    def _agent_end(self, node: str, end: JobExit) -> None:
        job = self._jobs.get(end.job_id)
        part = next((p for p in job.parts if p.node == node), None) if job is not None else None
        if part is None:
            self._call(node, "forget", end.job_id, wait=False)  # not a job this server runs there
            return
        if part.end is None:
            self._part_ended(end.job_id, job, part, end)

    def _part_ended(self, job_id: int, job: _Job, part: _Part, end: JobExit) -> None:
        self._seen += 1
        part.end, part.seen = end, self._seen
        failed = end.lost or end.exit_code != 0
        if failed and job.first_failure is None:
            job.first_failure = part
        if failed and not job.stopping and any(p.end is None for p in job.parts):
            job.stopping = True
            for other in job.parts:
                if other.end is None:
                    log.info("job %s: part %s on %s failed; stopping the others", job_id, part.rank, part.node)
                    self._call(other.node, "stop", job_id, end.end_time, self.grace_s)
        if all(p.end is not None for p in job.parts):
            job.end = self._gang_end(job_id, job)

    @staticmethod
    def _gang_end(job_id: int, job: _Job) -> JobExit:
        if len(job.parts) == 1:
            return job.parts[0].end
        end_time = max(p.end.end_time for p in job.parts)
        first = job.first_failure
        if first is None:
            return JobExit(job_id, 0, end_time)
        code = first.end.exit_code
        why = f"rank {first.rank} on {first.node} " + ("was lost" if first.end.lost else f"exited {code}")
        if first.end.why:
            why += f" ({first.end.why})"
        return JobExit(job_id, code, end_time, lost=first.end.lost, why=why + "; the other parts were stopped")

    def _finish_aborted(self) -> None:
        for job_id, job in list(self._jobs.items()):
            if "aborted" in job.extra and all(p.end is not None for p in job.parts):
                self.forget(job_id)

    def _call(self, node: str, method: str, *args: Any, wait: bool = True) -> None:
        ref = self._agents.get(node)
        if ref is None or ref.dead is not None:
            return
        call = getattr(ref.handle, method).remote(*args)
        if wait:
            try:
                ray.get(call, timeout=CALL_TIMEOUT_S)
            except RayError as exc:
                log.warning("%s on the agent of %s failed: %s", method, node, _short(exc))


def _node_names(alive: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Ray node id -> the node's name in gpuherd: its ``gpuherd-node`` label, else its host name (first
    part), with the start of its node id where one host has several unlabelled nodes."""
    alive = list(alive)
    hosts: dict[str, int] = {}
    for n in alive:
        host = str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress") or "node").split(".")[0]
        hosts[host] = hosts.get(host, 0) + 1
    names = {}
    for n in alive:
        label = (n.get("Labels") or {}).get(NODE_LABEL)
        host = str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress") or "node").split(".")[0]
        n["_shared_host"] = hosts[host] > 1  # several nodes on one machine: a tmux socket each
        if label:
            names[n["NodeID"]] = label
        elif hosts[host] > 1:
            names[n["NodeID"]] = f"{host}-{n['NodeID'][:6]}"
        else:
            names[n["NodeID"]] = host
    return names


def _short(exc: BaseException) -> str:
    """The first line of an error, without Ray's traceback (the agent's own exception where it raised one)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    if isinstance(exc, StartError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def start_local_cluster(nodes: int, *, gpus: int | None, object_store_mib: int = 100) -> Any:
    """A Ray cluster of ``nodes`` nodes on this machine (``ray.cluster_utils.Cluster``), named ``node0``,
    ``node1``, ... (label ``gpuherd-node``), each declaring ``gpus`` GPUs for machines without a driver:
    how one machine shows several nodes (``herd serve --ray-local-nodes N``, the tests). Returns the
    cluster; ``cluster.address`` joins it, ``cluster.shutdown()`` ends it."""
    from ray.cluster_utils import Cluster

    def args(i: int) -> dict[str, Any]:
        labels = {NODE_LABEL: f"node{i}"}
        if gpus:
            labels[GPUS_LABEL] = str(gpus)
        return {"num_cpus": 1, "labels": labels, "object_store_memory": object_store_mib << 20}

    cluster = Cluster(initialize_head=True, head_node_args=args(0))
    for i in range(1, nodes):
        cluster.add_node(**args(i))
    return cluster
