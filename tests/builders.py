"""Small builders for table tests: ``job(gpus=2, prio=7)``, ``node("a", 4)``, ``snap(...)``, ``spec(...)``;
and tables more than one test module reads."""

from __future__ import annotations

import itertools

from policies.snapshot import Snapshot
from tools.models import Allocation, Gpu, InventorySource, Job, JobSpec, JobStatus, Node

_ids = itertools.count(1)

# Durations as people write them, in seconds (``tools.timespec.parse_duration``, and the CLI's flags).
DURATIONS = [("30s", 30), ("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("1.5h", 5400), ("2H", 7200)]


def spec(gpus: int = 1, prio: int = 5, *, user: str = "alice", command: str = "true", **kw) -> JobSpec:
    """A submission: ``spec(2, prio=8, preemptible=True)``."""
    return JobSpec(user=user, command=command, gpu_count=gpus, priority=prio, **kw)


def job(
    id: int | None = None,
    *,
    gpus: int = 1,
    prio: int = 5,
    user: str = "alice",
    submit: float = 0.0,
    est: float | None = None,
    status: JobStatus = JobStatus.QUEUED,
    on: tuple[str, tuple[int, ...]] | None = None,
    start: float | None = None,
    not_before: float | None = None,
    **extra,
) -> Job:
    return Job(
        id=next(_ids) if id is None else id,
        user=user,
        command="true",
        gpu_count=gpus,
        priority=prio,
        submit_time=submit,
        est_duration_s=est,
        status=status,
        allocation=Allocation(node=on[0], gpus=on[1]) if on else None,
        start_time=start if start is not None else (submit if on else None),
        not_before=not_before,
        **extra,
    )


def running(id: int, node: str, gpus: tuple[int, ...], **kw) -> Job:
    return job(id, gpus=len(gpus), status=JobStatus.RUNNING, on=(node, gpus), **kw)


def node(name: str, count: int, *, drained: tuple[int, ...] = (), unhealthy: tuple[int, ...] = ()) -> Node:
    return Node(
        name=name,
        source=InventorySource.DECLARED,
        gpus=tuple(
            Gpu(node=name, index=i, uuid=f"GPU-{name}-{i}", drained=i in drained, healthy=i not in unhealthy)
            for i in range(count)
        ),
    )


def snap(
    *jobs: Job, nodes: tuple[Node, ...] = (), now: float = 100.0, usage=None, max_gpus_per_job=None,
    multi_node: bool = False, **extra,
) -> Snapshot:
    return Snapshot(
        now=now,
        nodes=nodes or (node("n1", 4),),
        jobs=tuple(jobs),
        usage=usage or {},
        max_gpus_per_job=max_gpus_per_job,
        multi_node=multi_node,
        **extra,
    )

