"""Placement: put jobs on free GPUs in a policy's order, and say why a job cannot start.

``Placer`` keeps per-node free GPUs in buckets by free count, so best-fit (the node where the job fits
most tightly) costs O(GPUs per node), not O(nodes). A job of up to one node's usable GPUs runs on one
node. With ``snapshot.multi_node`` (eval replays) a larger job takes whole free nodes, the largest
first; all of them but the last are used whole.

``offer_groups`` walks waiting jobs in a policy's order, already sorted and split by GPU count. Free
GPUs only shrink during a pass, so once a size does not fit, no later job of that size will: its first
job records why, and the jobs behind it are never read (they wait in line). A pass therefore reads
the queue only as far as something can still start, however long the queue is.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Mapping

from tools.models import Allocation, Job, PendingReason

from policies.snapshot import Decisions, Proposal, Reasons, Snapshot, Wait, begin_time_wait

Entries = Iterable[tuple[tuple, int]]  # (sort key, job id), in order


class Placer:
    def __init__(self, snapshot: Snapshot, *, head_of_line: bool = False) -> None:
        self.snapshot = snapshot
        self.head_of_line = head_of_line  # strict order: once a job waits for GPUs, all later jobs wait
        layout = self._layout = snapshot.layout
        # Built on first need (a pass over an empty queue or a full cluster needs none of it):
        self._count: dict[str, int] | None = None  # free GPUs per node
        self._by_free: list[set[str]] = []  # nodes by their number of free GPUs (not 0), once one is taken
        self._free: dict[str, list[int]] = {}  # free GPU indices, of the nodes this pass took from
        self._free_total = snapshot.free_total
        self._whole: set[str] | None = None  # whole nodes with nothing held (for multi-node jobs)
        self._whole_gpus = 0
        most = layout.largest_usable_node
        if snapshot.multi_node:
            most = max(most, layout.whole_gpus)
        cap = snapshot.max_gpus_per_job
        self.limit = most if cap is None else min(most, cap)  # a job asking for more can never start
        self._blocked_by: int | None = None
        self.starts: list[Proposal] = []
        self.waiting: dict[int, Wait] = {}

    @property
    def free_gpus(self) -> int:
        return self._free_total

    def fits(self, count: int) -> bool:
        """Whether a job of ``count`` GPUs could start now; the same for every job of that size."""
        if count > self._layout.largest_usable_node:
            return self.snapshot.multi_node and count <= self._whole_free()[1]
        if count > self._free_total:
            return False
        if not self._by_free:  # no GPU taken yet in this pass: a C-level max beats building buckets
            return max(self._counts().values(), default=0) >= count
        return any(self._by_free[c] for c in range(count, len(self._by_free)))

    def _whole_free(self) -> tuple[set[str], int]:
        if self._whole is None:  # not the nodes this pass took GPUs from (they are in ``_free``)
            self._whole = set(self._layout.whole - self.snapshot.held.keys() - self._free.keys())
            self._whole_gpus = sum(self._layout.size[name] for name in self._whole)
        return self._whole, self._whole_gpus

    def _counts(self) -> dict[str, int]:
        if self._count is None:
            self._count = dict(self.snapshot.free_count)
        return self._count

    def _buckets(self) -> list[set[str]]:
        if not self._by_free:
            self._by_free = [set() for _ in range(self._layout.width + 1)]
            for name, count in self._counts().items():
                if count:  # a full node is never a candidate
                    self._by_free[count].add(name)
        return self._by_free

    def offer(self, job: Job) -> bool:
        """Start ``job`` now if it may and fits; otherwise record why it waits. True if it starts."""
        wait = begin_time_wait(job, self.snapshot.now)
        if wait is not None:
            self.waiting[job.id] = wait
            return False
        if job.gpu_count > self.limit:
            self.waiting[job.id] = Wait(PendingReason.INFEASIBLE, self._infeasible(job))
            return False
        if self._blocked_by is not None:
            self.waiting[job.id] = Wait(PendingReason.PRIORITY, f"waits behind job {self._blocked_by}, first in line")
            return False
        if not self.fits(job.gpu_count):
            self.waiting[job.id] = Wait(PendingReason.RESOURCES, self._missing(job.gpu_count))
            if self.head_of_line:
                self._blocked_by = job.id
            return False
        self._take(job)
        return True

    def offer_groups(self, groups: Mapping[int, Entries]) -> None:
        """Offer waiting jobs in the order of their entries, merged across groups (one per GPU count).

        A size that no longer fits is left after its first job; under ``head_of_line`` the pass ends
        there. Sizes that can never fit are read through, so each such job says so.
        """
        jobs = self.snapshot.jobs_by_id
        heap = []
        for gpus, entries in groups.items():
            it = iter(entries)
            if gpus > self.limit:
                for _, job_id in it:
                    self.offer(jobs[job_id])
                continue
            first = next(it, None)
            if first is not None:
                heap.append((first, gpus, it))
        heapq.heapify(heap)
        while heap and self._blocked_by is None:
            (_, job_id), gpus, it = heap[0]
            if not self.offer(jobs[job_id]) and self.waiting[job_id].reason == PendingReason.RESOURCES:
                heapq.heappop(heap)
                continue
            after = next(it, None)
            if after is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (after, gpus, it))

    def decisions(self) -> Decisions:
        started = frozenset(p.job_id for p in self.starts)
        return Decisions(starts=tuple(self.starts), waiting=Reasons(self.snapshot, self.waiting, started))

    def _infeasible(self, job: Job) -> str:
        cap = self.snapshot.max_gpus_per_job
        if cap is not None and job.gpu_count > cap:
            return f"asks for {job.gpu_count} GPUs; a job may have at most {cap}"
        if self.snapshot.multi_node:
            return (
                f"asks for {job.gpu_count} GPUs; the largest node has {self._layout.largest_usable_node} usable "
                f"and the whole usable nodes together {self._layout.whole_gpus}"
            )
        return (
            f"asks for {job.gpu_count} GPUs; the largest node has {self._layout.largest_usable_node} "
            "usable (healthy, not drained)"
        )

    def _missing(self, count: int) -> str:
        if count > self._layout.largest_usable_node:
            whole, gpus = self._whole_free()
            return f"needs {count} GPUs on whole free nodes; {len(whole)} whole node(s) with {gpus} GPUs are free"
        most = max(self._counts().values(), default=0)
        return f"needs {count} free GPU(s) on one node; the most free on any node is {most}"

    def _best_fit(self, count: int) -> str | None:
        by_free = self._buckets()
        for free_count in range(count, len(by_free)):
            bucket = by_free[free_count]
            if bucket:
                return min(bucket, key=self._layout.order.__getitem__)
        return None

    def _take(self, job: Job) -> None:
        count = job.gpu_count
        if count <= self._layout.largest_usable_node:
            node = self._best_fit(count)
            assert node is not None  # fits() said so
            parts = [(node, self._take_from(node, count))]
        else:
            size, order = self._layout.size, self._layout.order
            parts = []
            for node in sorted(self._whole_free()[0], key=lambda n: (-size[n], order[n])):
                parts.append((node, self._take_from(node, min(count, size[node]))))
                count -= len(parts[-1][1])
                if count == 0:
                    break
        (node, gpus), *more = parts
        self.starts.append(Proposal.on(job.id, Allocation(node=node, gpus=gpus, more=tuple(more))))

    def _take_from(self, node: str, count: int) -> tuple[int, ...]:
        by_free, counts = self._buckets(), self._counts()
        free = self._free.get(node)
        if free is None:
            free = list(self.snapshot.free_on(node))
        by_free[len(free)].discard(node)
        taken, self._free[node] = free[:count], free[count:]
        counts[node] = len(free) - count
        if counts[node]:
            by_free[counts[node]].add(node)
        self._free_total -= count
        if self._whole is not None and node in self._whole:
            self._whole.discard(node)
            self._whole_gpus -= self._layout.size[node]
        return tuple(taken)
