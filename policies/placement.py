"""Placement: put one job on one node's free GPUs, and say why when it cannot.

``Placer`` walks jobs in the order a policy chose. It keeps per-node free GPUs in buckets by free
count, so best-fit (the node where the job fits most tightly) costs O(GPUs per node), not O(nodes).
"""

from __future__ import annotations

from tools.models import Allocation, Job, PendingReason

from policies.snapshot import Decisions, Proposal, Snapshot, Wait


class Placer:
    def __init__(self, snapshot: Snapshot, *, head_of_line: bool = False) -> None:
        self.snapshot = snapshot
        self.head_of_line = head_of_line  # strict order: once a job waits for GPUs, all later jobs wait
        self._node_order = {node.name: i for i, node in enumerate(snapshot.nodes)}
        self._free: dict[str, list[int]] = {name: list(gpus) for name, gpus in snapshot.free.items()}
        width = max((len(n.gpus) for n in snapshot.nodes), default=0)
        self._by_free: list[set[str]] = [set() for _ in range(width + 1)]
        for name, gpus in self._free.items():
            self._by_free[len(gpus)].add(name)
        self._limit = min(
            snapshot.largest_usable_node,
            snapshot.max_gpus_per_job if snapshot.max_gpus_per_job is not None else snapshot.largest_usable_node,
        )
        self._blocked_by: int | None = None
        self.starts: list[Proposal] = []
        self.waiting: dict[int, Wait] = {}

    @property
    def free_gpus(self) -> int:
        return sum(len(g) for g in self._free.values())

    def offer(self, job: Job) -> bool:
        """Start ``job`` now if it may and fits; otherwise record why it waits. True if it starts."""
        now = self.snapshot.now
        if job.not_before is not None and job.not_before > now:
            self.waiting[job.id] = Wait(
                PendingReason.BEGIN_TIME, job.pending_message if job.pending_reason == PendingReason.BEGIN_TIME
                else f"not before t={job.not_before:.0f} ({job.not_before - now:.0f} s from now)"
            )
            return False
        if job.gpu_count > self._limit:
            self.waiting[job.id] = Wait(PendingReason.INFEASIBLE, self._infeasible(job))
            return False
        if self._blocked_by is not None:
            self.waiting[job.id] = Wait(PendingReason.PRIORITY, f"waits behind job {self._blocked_by}, first in line")
            return False
        node = self._best_fit(job.gpu_count)
        if node is None:
            most = max((len(g) for g in self._free.values()), default=0)
            self.waiting[job.id] = Wait(
                PendingReason.RESOURCES,
                f"needs {job.gpu_count} free GPU(s) on one node; the most free on any node is {most}",
            )
            if self.head_of_line:
                self._blocked_by = job.id
            return False
        self._take(job, node)
        return True

    def decisions(self) -> Decisions:
        return Decisions(starts=tuple(self.starts), waiting=self.waiting)

    def _infeasible(self, job: Job) -> str:
        cap = self.snapshot.max_gpus_per_job
        if cap is not None and job.gpu_count > cap:
            return f"asks for {job.gpu_count} GPUs; a job may have at most {cap}"
        return (
            f"asks for {job.gpu_count} GPUs; the largest node has {self.snapshot.largest_usable_node} "
            "usable (healthy, not drained)"
        )

    def _best_fit(self, count: int) -> str | None:
        for free_count in range(count, len(self._by_free)):
            bucket = self._by_free[free_count]
            if bucket:
                return min(bucket, key=self._node_order.__getitem__)
        return None

    def _take(self, job: Job, node: str) -> None:
        free = self._free[node]
        self._by_free[len(free)].discard(node)
        taken, self._free[node] = free[: job.gpu_count], free[job.gpu_count :]
        self._by_free[len(self._free[node])].add(node)
        self.starts.append(Proposal.on(job.id, Allocation(node=node, gpus=tuple(taken))))
