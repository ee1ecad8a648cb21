"""What a policy sees and what it returns.

A ``Snapshot`` is immutable and self-contained: the policy needs nothing else, and the same snapshot
always gives the same decisions. "Now" is part of it.

Its ``jobs`` are either a tuple (tests, what-if copies) or, from the orchestrator, the queue index's
``ActiveJobs``: the same jobs, but with the waiting ones already sorted in each policy's order, so a
snapshot costs nothing per waiting job and a policy reads only as far into the queue as it needs.
Every property answers the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterator, Mapping, Sequence

from policies.admission import Wait, begin_time_wait, dependency_wait, tasks_holding
from tools.index import IN_LINE_MESSAGE, IN_LINE_REASON, ActiveJobs, Ordering, SortedRuns, once
from tools.models import HOLDS_GPUS, Allocation, Gpu, GpuProcess, Job, JobStatus, Node, Reservation

from policies.rules import DEFAULT_RULES, Rules


# Its entry in ``ActiveJobs.carried``: (layout, held mark, free counts then, their sum, nodes by free count then)
_FREE_COUNT = "free_count"


@dataclass(frozen=True, eq=False)
class Layout:
    """What an inventory allows, worked out once per inventory (the orchestrator reuses it)."""

    nodes: tuple[Node, ...]

    @once
    def usable(self) -> Mapping[str, tuple[int, ...]]:
        """Per node, the GPUs a job may take: healthy, not drained, not used outside gpuherd."""
        return {n.name: tuple(g.index for g in n.gpus if g.healthy and not g.drained and not g.foreign)
                for n in self.nodes}

    @once
    def usable_set(self) -> Mapping[str, frozenset[int]]:
        return {name: frozenset(u) for name, u in self.usable.items()}

    @once
    def usable_count(self) -> Mapping[str, int]:
        return {name: len(u) for name, u in self.usable.items()}

    @once
    def usable_total(self) -> int:
        return sum(self.usable_count.values())

    @once
    def unusable(self) -> tuple[tuple[str, int], ...]:
        """(node, index) of every unhealthy, drained or foreign-used GPU."""
        return tuple((g.node, g.index) for n in self.nodes for g in n.gpus if not g.healthy or g.drained or g.foreign)

    @once
    def foreign(self) -> tuple[tuple[str, int, tuple[GpuProcess, ...]], ...]:
        """(node, index, processes) of every GPU that processes outside gpuherd use: it takes no job."""
        return tuple((g.node, g.index, g.foreign) for n in self.nodes for g in n.gpus if g.foreign)

    @once
    def size(self) -> Mapping[str, int]:
        return {n.name: len(n.gpus) for n in self.nodes}

    @once
    def gpus(self) -> Mapping[tuple[str, int], Gpu]:
        return {(g.node, g.index): g for n in self.nodes for g in n.gpus}

    @once
    def order(self) -> Mapping[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    @once
    def largest_usable_node(self) -> int:
        return max((len(u) for u in self.usable.values()), default=0)

    @once
    def width(self) -> int:
        return max(self.size.values(), default=0)

    @once
    def total_gpus(self) -> int:
        return sum(self.size.values())

    @once
    def whole(self) -> frozenset[str]:
        """Nodes whose every GPU is usable: the only ones a multi-node job may take."""
        return frozenset(name for name, u in self.usable.items() if u and len(u) == self.size[name])

    @once
    def whole_gpus(self) -> int:
        return sum(self.size[name] for name in self.whole)


@dataclass(frozen=True, init=False)
class Snapshot:
    now: float
    nodes: tuple[Node, ...]
    jobs: Sequence[Job]  # every active job (queued, scheduled, running): a tuple or ``ActiveJobs``
    usage: Mapping[str, float] = field(default_factory=dict)  # decayed GPU-seconds per user
    max_gpus_per_job: int | None = None
    multi_node: bool = False  # a job larger than any node may take several whole nodes (replays)
    rules: Rules = DEFAULT_RULES
    reservations: tuple[Reservation, ...] = ()  # those not yet over
    ended: Mapping[int, JobStatus] = field(default_factory=dict)  # how the ended jobs that waiting jobs depend on ended
    first: tuple[int, ...] = ()  # waiting jobs others were preempted for: offered before the policy's order
    known_layout: Layout | None = field(default=None, compare=False, repr=False)  # reused if it is of ``nodes``

    def __init__(self, now: float, nodes: tuple[Node, ...], jobs: Sequence[Job],
                 usage: Mapping[str, float] | None = None, max_gpus_per_job: int | None = None,
                 multi_node: bool = False, rules: Rules = DEFAULT_RULES,
                 reservations: tuple[Reservation, ...] = (), ended: Mapping[int, JobStatus] | None = None,
                 first: tuple[int, ...] = (), known_layout: Layout | None = None) -> None:
        # Every field in one write, where the generated ``__init__`` of a frozen dataclass makes a call per
        # field (half a snapshot's making, once a pass). The fields above, in their order.
        object.__setattr__(self, "__dict__", {
            "now": now, "nodes": nodes, "jobs": jobs, "usage": {} if usage is None else usage,
            "max_gpus_per_job": max_gpus_per_job, "multi_node": multi_node, "rules": rules,
            "reservations": reservations, "ended": {} if ended is None else ended, "first": first,
            "known_layout": known_layout,
        })

    @once
    def layout(self) -> Layout:
        known = self.known_layout
        return known if known is not None and known.nodes is self.nodes else Layout(self.nodes)

    @once
    def _index(self) -> ActiveJobs | None:
        return self.jobs if isinstance(self.jobs, ActiveJobs) else None

    @property
    def carried(self) -> dict | None:
        """Where a reader may keep work from one snapshot to the next of the same queue (None for a
        snapshot of a tuple of jobs); see ``ActiveJobs.carried``."""
        return self._index.carried if self._index is not None else None

    @once
    def queued(self) -> tuple[Job, ...]:
        if self._index is not None:
            return self._index.queued
        return tuple(j for j in self.jobs if j.status == JobStatus.QUEUED)

    @property
    def queued_count(self) -> int:
        return self._index.queued_count if self._index is not None else len(self.queued)

    @once
    def holding(self) -> tuple[Job, ...]:
        """Jobs that hold GPUs (scheduled or running)."""
        if self._index is not None:
            return self._index.holding
        return tuple(j for j in self.jobs if j.status in HOLDS_GPUS)

    @once
    def jobs_by_id(self) -> Mapping[int, Job]:
        if self._index is not None:
            return _JobsById(self._index)
        return {j.id: j for j in self.jobs}

    @once
    def holders(self) -> Mapping[tuple[str, int], int]:
        """(node, GPU index) -> the id of the job holding it."""
        return {ref: j.id for j in self.holding if j.allocation is not None for ref in j.allocation.pairs()}

    @once
    def held(self) -> Mapping[str, frozenset[int]]:
        """Per node with held GPUs, their indices."""
        if self._index is not None:
            return self._index.held
        held: dict[str, set[int]] = {}
        for node, gpu in self.holders:
            held.setdefault(node, set()).add(gpu)
        return {node: frozenset(gpus) for node, gpus in held.items()}

    @once
    def free(self) -> Mapping[str, tuple[int, ...]]:
        """Per node, the GPUs a new job may take: healthy, not drained, not held."""
        return {name: self.free_on(name) for name in self.layout.usable}

    def free_on(self, node: str) -> tuple[int, ...]:
        usable, held = self.layout.usable[node], self.held.get(node)
        return tuple(i for i in usable if i not in held) if held else usable

    @once
    def free_count(self) -> Mapping[str, int]:
        """Per node, how many GPUs are free; cheaper than ``free`` when the indices are not needed."""
        return self._free_counted[0]

    @once
    def _free_counted(self) -> tuple[Mapping[str, int], int, tuple[frozenset[str], ...] | None]:
        """``free_count``, its sum, and the nodes by free count (``by_free``; None until asked for, where
        there is no index). From the index, the last of each are kept (``carried``) and only the nodes
        whose held GPUs changed since are counted and moved again: a pass then costs what changed, not
        the number of nodes. None of them is changed in place: the views that read them share them."""
        index, layout = self._index, self.layout
        if index is None or layout.unusable:
            counts = self._free_count()
            return counts, sum(counts.values()), None
        kept = index.carried.get(_FREE_COUNT)
        changed = index.held_since(kept[1]) if kept is not None and kept[0] is layout else None
        if changed is None:
            counts = self._free_count()
            total, buckets = sum(counts.values()), _by_free(counts, layout.width)
        elif not changed:
            _, _, counts, total, buckets = kept
        else:
            then, total, held, size = kept[2], kept[3], self.held, layout.size
            counts, moved = dict(then), list(kept[4])
            for name in changed:
                if name in counts:  # (a node gone from the inventory keeps no count)
                    old, new = then[name], size[name] - len(held.get(name, ()))
                    if old != new:
                        counts[name], total = new, total + new - old
                        if old:
                            moved[old] = moved[old] - {name}
                        if new:
                            moved[new] = moved[new] | {name}
            buckets = tuple(moved)
        index.carried[_FREE_COUNT] = (layout, index.held_mark, counts, total, buckets)
        return counts, total, buckets

    def _free_count(self) -> dict[str, int]:
        layout, held = self.layout, self.held
        counts = dict(layout.usable_count)
        if not layout.unusable and held.keys() <= counts.keys():  # the usual case: size - held, in C loops
            counts.update(zip(held, map(int.__sub__, map(layout.size.__getitem__, held), map(len, held.values()))))
            return counts
        for name, gpus in held.items():
            if name in counts:
                counts[name] -= len(gpus & layout.usable_set[name])
        return counts

    @once
    def by_free(self) -> tuple[frozenset[str], ...]:
        """[c]: the nodes with c free GPUs, for c up to the widest node's size ([0]: none; a full node is
        never a candidate). From the index, kept with ``free_count``."""
        buckets = self._free_counted[2]
        return _by_free(self.free_count, self.layout.width) if buckets is None else buckets

    @once
    def free_total(self) -> int:
        """How many GPUs are free in all."""
        layout, held = self.layout, self.held
        if self._index is None and not layout.unusable and held.keys() <= layout.size.keys():
            return layout.usable_total - sum(map(len, held.values()))
        return self._free_counted[1]

    @property
    def largest_usable_node(self) -> int:
        """The most GPUs one job could ever get on one node: its healthy, undrained GPUs."""
        return self.layout.largest_usable_node

    def queued_groups(self, ordering: Ordering) -> Mapping[Hashable, SortedRuns]:
        """The waiting jobs' ``(key, id)`` entries sorted by ``ordering``, split into its groups."""
        if self._index is not None:
            return self._index.groups(ordering)
        if ordering not in self._groups:
            self._groups[ordering] = ordering.build(self.queued)
        return self._groups[ordering]

    @once
    def _groups(self) -> dict[Ordering, Mapping[Hashable, SortedRuns]]:
        return {}

    @once
    def in_use(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """GPUs held right now, per user and per group (quotas count these). From the index's totals
        when there is one: a pass then reads no running job for them."""
        if self._index is not None:
            users: Mapping[str, int] = self._index.user_gpus
        else:
            counts: dict[str, int] = {}
            for j in self.holding:
                counts[j.user] = counts.get(j.user, 0) + j.gpu_count
            users = counts
        groups: dict[str, int] = {}
        group_of = self.rules.group_of
        for user, count in users.items() if self.rules.groups else ():  # (no groups: no user has one)
            group = group_of(user)
            if group is not None:
                groups[group] = groups.get(group, 0) + count
        return users, groups

    @once
    def array_tasks(self) -> Mapping[int, int]:
        """Array id -> how many of its tasks hold GPUs."""
        if self._index is not None:
            return self._index.array_tasks
        return tasks_holding(self.holding)

    @once
    def preemption_relevant(self) -> tuple[Job, ...]:
        """Jobs holding GPUs that are preemptible or being stopped, in id order: all that preemption
        reads of the running jobs."""
        if self._index is not None:
            return self._index.preemption_relevant
        return tuple(j for j in self.holding if j.preemptible or j.stop_reason is not None)

    def usage_now(self, user: str) -> float:
        """GPU-seconds of ``user``: decayed finished attempts plus what running jobs used so far."""
        return self.usage.get(user, 0.0) + self.running_usage.get(user, 0.0)

    @once
    def running_usage(self) -> Mapping[str, float]:
        """Per user, GPU-seconds its jobs holding GPUs have used so far."""
        used: dict[str, float] = {}
        now, get = self.now, used.get  # read once per pass over every running job
        for j in self.holding:
            start = j.start_time
            if start is not None:  # ``gpu_count * max(0.0, now - start)``, without a call per job
                used[j.user] = get(j.user, 0.0) + (j.gpu_count * (now - start) if now > start else 0.0)
        return used


def _by_free(counts: Mapping[str, int], width: int) -> tuple[frozenset[str], ...]:
    nodes: list[set[str]] = [set() for _ in range(width + 1)]
    for name, count in counts.items():
        if count:
            nodes[count].add(name)
    return tuple(map(frozenset, nodes))


class _JobsById(Mapping[int, Job]):
    def __init__(self, index: ActiveJobs) -> None:
        self._index = index

    def __getitem__(self, job_id: int) -> Job:
        job = self._index.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def get(self, job_id: int, default=None):  # type: ignore[override]
        job = self._index.get(job_id)
        return default if job is None else job

    def __iter__(self) -> Iterator[int]:
        return (j.id for j in self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True, init=False)
class Proposal:
    """A claim that ``job_id`` should start now on ``gpus`` ((node, index) pairs), and who says so."""

    job_id: int
    gpus: tuple[tuple[str, int], ...]
    by: str = "policy"
    reason: str = ""
    # The allocation it was made from (``on``): the validator hands it on where it names the same GPUs,
    # rather than building and checking the same allocation again.
    allocation: Allocation | None = field(default=None, compare=False, repr=False)

    def __init__(self, job_id: int, gpus: tuple[tuple[str, int], ...], by: str = "policy", reason: str = "",
                 allocation: Allocation | None = None) -> None:
        # Every field in one write, as ``Snapshot``'s: a pass makes one per start.
        object.__setattr__(self, "__dict__", {"job_id": job_id, "gpus": gpus, "by": by, "reason": reason,
                                              "allocation": allocation})

    @classmethod
    def on(cls, job_id: int, allocation: Allocation, *, by: str = "policy", reason: str = "") -> Proposal:
        return cls(job_id, allocation.pairs(), by, reason, allocation)


IN_LINE = Wait(IN_LINE_REASON, IN_LINE_MESSAGE)


def standing_wait(snapshot: Snapshot, job: Job) -> Wait:
    """Why a waiting job that no policy examined in a pass waits: its begin time, the jobs it runs after,
    else its turn. Asked alike whether the pass read it or not, so that its reason does not flip
    between ``Dependency`` and ``Priority`` from one pass to the next while nothing changed."""
    wait = begin_time_wait(job, snapshot.now)
    if wait is None and job.depends_on:
        def status_of(job_id: int) -> JobStatus | None:
            active = snapshot.jobs_by_id.get(job_id)
            return active.status if active is not None else snapshot.ended.get(job_id)
        wait = dependency_wait(job, status_of)
    return wait or IN_LINE


class Reasons(Mapping[int, Wait]):
    """Why each queued job of a snapshot that does not start waits.

    A policy stops examining the queue once nothing more can start; the jobs it examined carry their
    own reason (``examined``), every other one waits for its begin time or in line (``IN_LINE``).
    Lookups are cheap; iterating lists every waiting job.
    """

    def __init__(self, snapshot: Snapshot, examined: Mapping[int, Wait], started: frozenset[int]) -> None:
        self.snapshot = snapshot
        self.examined = examined
        self.started = started

    def __getitem__(self, job_id: int) -> Wait:
        wait = self.examined.get(job_id)
        if wait is not None:
            return wait
        job = self.snapshot.jobs_by_id.get(job_id)
        if job is None or job.status != JobStatus.QUEUED or job_id in self.started:
            raise KeyError(job_id)
        return standing_wait(self.snapshot, job)

    def __iter__(self) -> Iterator[int]:
        return (j.id for j in self.snapshot.queued if j.id not in self.started)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"Reasons(examined={dict(self.examined)!r}, others={IN_LINE.reason.value})"


@dataclass(frozen=True)
class Preemption:
    """Stop running job ``job_id`` (SIGTERM, grace, SIGKILL) and requeue it, for ``why``."""

    job_id: int
    why: str
    for_job: int | None = None  # the waiting job it makes room for; None when a reservation begins


@dataclass(frozen=True, init=False)
class Decisions:
    starts: tuple[Proposal, ...]
    waiting: Mapping[int, Wait]  # a reason for every queued job that does not start (often ``Reasons``)
    notes: tuple[tuple[str, str], ...] = ()  # (event kind, message) for the audit log, e.g. a fallback
    preemptions: tuple[Preemption, ...] = ()
    planned: Mapping[int, float] = field(default_factory=dict)  # job id -> planned start (the backfill plan)

    def __init__(self, starts: tuple[Proposal, ...], waiting: Mapping[int, Wait], notes: tuple[tuple[str, str], ...] = (),
                 preemptions: tuple[Preemption, ...] = (), planned: Mapping[int, float] | None = None) -> None:
        # Every field in one write, as ``Snapshot``'s: one a pass.
        object.__setattr__(self, "__dict__", {"starts": starts, "waiting": waiting, "notes": notes,
                                              "preemptions": preemptions, "planned": {} if planned is None else planned})
