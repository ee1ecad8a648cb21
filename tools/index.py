"""The queue's index: the active jobs, kept ready for the scheduler and updated on every save.

``JobQueue`` is the one writer of jobs, so it tells the index about every change (``put``). The
scheduler then never scans or sorts the queue: a snapshot takes ``view()``, whose cost does not grow
with the number of waiting jobs, and a policy walks the waiting jobs in its own order, already sorted,
stopping as soon as nothing more can start.

A view must stay as it was while the policy decides (the queue goes on changing meanwhile), so the
big parts are persistent: a change builds a new version and leaves the old one intact, copying only
O(sqrt n) pointers. ``JobTable`` maps ids to jobs, ``SortedRuns`` keeps one queue order.
"""

from __future__ import annotations

import bisect
import threading
from itertools import chain
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

from tools.models import HOLDS_GPUS, Job, JobStatus, PendingReason

# Entries of a log of the index (the nodes whose held GPUs changed, the jobs holding GPUs that changed)
# after which it begins a new one, so that a service does not keep it for ever.
HELD_LOG = 4096

# What a waiting job that no policy looked at in the last pass shows (Slurm's "Priority"): a policy
# stops examining the queue once nothing more can start, so most of a long queue waits for this.
IN_LINE_REASON = PendingReason.PRIORITY
IN_LINE_MESSAGE = "waits for its turn: jobs ahead of it in the policy's order go first"

# Members read on every save, bound once: reading one through its enum class costs as much as the
# rest of a status test.
_QUEUED = JobStatus.QUEUED


class once:
    """``functools.cached_property`` without its lock: Python 3.11 takes a lock on every first read,
    a real cost for snapshots, which are built each tick and read once or twice per property. Two
    threads reading at once would both compute the same pure value, which is harmless."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)  # later reads find it in the instance
        return value


class JobTable:
    """A map from job id to job that never changes: what a view holds (``TableWriter.frozen``).

    Store ids are dense (1, 2, 3, ...), so the table is a list of fixed-size chunks.
    """

    CHUNK = 512
    __slots__ = ("_chunks",)

    def __init__(self, chunks: Sequence[Sequence[Job | None]] = ()) -> None:
        self._chunks = chunks

    def get(self, job_id: int) -> Job | None:
        c, i = divmod(job_id, self.CHUNK)
        return self._chunks[c][i] if 0 <= c < len(self._chunks) else None

    def get_all(self, job_ids: Iterable[int]) -> tuple[Job | None, ...]:
        """The jobs of ``job_ids`` (all in the table), in one loop without a call per id."""
        chunks, size = self._chunks, self.CHUNK
        return tuple([chunks[i // size][i % size] for i in job_ids])


class TableWriter:
    """The index's own table, written in place between views: ``frozen`` hands out a ``JobTable``
    that never changes, and the first write after it to a chunk that table holds copies the chunk
    (512 entries) once; later writes to it go in place until the next ``frozen``. A pass writes the
    same few chunks many times (a job is scheduled, then running; new jobs go to the last chunk), so
    this copies far less than a new table per write would."""

    __slots__ = ("_chunks", "_own", "_frozen")

    def __init__(self) -> None:
        self._chunks: list[list[Job | None]] = []
        self._own: set[int] = set()  # chunks no frozen table holds: written in place
        self._frozen: JobTable | None = None  # the last one handed out, while nothing changed

    def get(self, job_id: int) -> Job | None:
        c, i = divmod(job_id, JobTable.CHUNK)
        return self._chunks[c][i] if 0 <= c < len(self._chunks) else None

    def set(self, job_id: int, job: Job | None) -> Job | None:
        """Write ``job`` (None: clear the entry); returns what the entry held, so that a change reads it
        without a second lookup."""
        c, i = divmod(job_id, JobTable.CHUNK)
        chunks = self._chunks
        if c not in self._own:
            if c < 0:
                raise KeyError(job_id)
            while c >= len(chunks):
                chunks.append([None] * JobTable.CHUNK)
            chunks[c] = list(chunks[c])  # a frozen table may hold it: copied once
            self._own.add(c)
        chunk = chunks[c]
        old, chunk[i] = chunk[i], job
        self._frozen = None
        return old

    def frozen(self) -> JobTable:
        if self._frozen is None:
            self._frozen = JobTable(tuple(self._chunks))
            self._own.clear()
        return self._frozen


class SortedRuns:
    """A persistent sorted sequence: ``add`` and ``remove`` return a new one, this one never changes.

    Entries are kept in sorted runs of at most ``2 * RUN``; a change copies one run and the list of
    runs, and iterating from the start costs only what is read.
    """

    RUN = 256
    __slots__ = ("_runs", "_maxes", "_len")

    def __init__(self, runs: tuple[tuple, ...] = (), maxes: tuple = (), length: int = 0) -> None:
        self._runs, self._maxes, self._len = runs, maxes, length

    @classmethod
    def of(cls, entries: Iterable) -> SortedRuns:
        ordered = sorted(entries)
        runs = tuple(tuple(ordered[i : i + cls.RUN]) for i in range(0, len(ordered), cls.RUN))
        return cls(runs, tuple(r[-1] for r in runs), len(ordered))

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator:
        return chain.from_iterable(self._runs)

    def rank(self, entry) -> int:
        """How many entries sort before ``entry`` (a job's place in this order, from 0): a search, not a walk."""
        r = bisect.bisect_left(self._maxes, entry)
        if r == len(self._runs):
            return self._len
        return sum(map(len, self._runs[:r])) + bisect.bisect_left(self._runs[r], entry)

    def add(self, entry) -> SortedRuns:
        runs, maxes = self._runs, self._maxes
        if not runs:
            return SortedRuns(((entry,),), (entry,), 1)
        if entry > maxes[-1] and len(runs[-1]) < 2 * self.RUN:  # at the end (a new job, by arrival)
            return SortedRuns(runs[:-1] + (runs[-1] + (entry,),), maxes[:-1] + (entry,), self._len + 1)
        r = min(bisect.bisect_left(maxes, entry), len(runs) - 1)
        run = list(runs[r])
        bisect.insort(run, entry)
        parts = (run,) if len(run) <= 2 * self.RUN else (run[: self.RUN], run[self.RUN :])
        return self._replace(r, tuple(tuple(p) for p in parts), self._len + 1)

    def remove(self, entry) -> SortedRuns:
        r = bisect.bisect_left(self._maxes, entry)
        run = self._runs[r] if r < len(self._runs) else ()
        i = bisect.bisect_left(run, entry)
        if i == len(run) or run[i] != entry:
            raise KeyError(entry)
        rest = run[1:] if i == 0 else run[:i] + run[i + 1 :]  # (the first: a waiting job that starts)
        return self._replace(r, (rest,) if rest else (), self._len - 1)

    def _replace(self, r: int, parts: tuple[tuple, ...], length: int) -> SortedRuns:
        runs, maxes = self._runs, self._maxes
        if len(parts) == 1:  # (most changes)
            top = parts[0][-1]
            if top is maxes[r]:  # (an entry removed before a run's last: the maxes stay as they were)
                return SortedRuns(runs[:r] + parts + runs[r + 1 :], maxes, length)
            tops: tuple = (top,)
        else:
            tops = tuple(p[-1] for p in parts)
        return SortedRuns(runs[:r] + parts + runs[r + 1 :], maxes[:r] + tops + maxes[r + 1 :], length)


@dataclass(frozen=True)
class Ordering:
    """An order of the waiting jobs: sorted by ``key`` (unique per job: end it with the id), split into
    groups by ``group`` (e.g. GPU count, so a policy can skip every job of a size that cannot fit).

    Compared by identity of the functions, so use module-level functions, not lambdas made per call.
    A key must not read a job's pending reason or message: a change of only those keeps its place.
    """

    key: Callable[[Job], tuple]
    group: Callable[[Job], Hashable] | None = None

    def entry(self, job: Job) -> tuple[tuple, int]:
        return (self.key(job), job.id)

    def group_of(self, job: Job) -> Hashable:
        return self.group(job) if self.group is not None else None

    def place(self, job: Job) -> tuple[Hashable, tuple[tuple, int]]:
        """``job``'s group and entry, in one call (the index asks on every save of a waiting job)."""
        group = self.group
        return (None if group is None else group(job)), (self.key(job), job.id)

    def build(self, jobs: Iterable[Job]) -> dict[Hashable, SortedRuns]:
        grouped: dict[Hashable, list] = {}
        for job in jobs:
            group, entry = self.place(job)
            grouped.setdefault(group, []).append(entry)
        return {g: SortedRuns.of(entries) for g, entries in grouped.items()}


def _by_id(job: Job) -> tuple:
    return (job.id,)


BY_ID = Ordering(_by_id)  # always kept: lists the waiting jobs for whoever wants them all


def explained(job: Job) -> bool:
    """Whether a waiting job shows a reason of its own rather than the shared "in line" one."""
    return job.status == JobStatus.QUEUED and (job.pending_reason, job.pending_message) != (
        IN_LINE_REASON,
        IN_LINE_MESSAGE,
    )


class ActiveJobs(Sequence[Job]):
    """The active jobs at one moment, as a snapshot holds them; never changes.

    A sequence in id order like the tuple it stands in for, but built lazily: a policy reads only the
    groups of waiting jobs it needs (``groups``) and looks jobs up by id (``get``).
    """

    def __init__(
        self,
        table: JobTable,
        holding: SortedRuns,
        held: Mapping[str, frozenset[int]],
        held_mark: tuple[list[str], int],
        holders_mark: tuple[list[int], int],
        queued_count: int,
        orders: Mapping[Ordering, Mapping[Hashable, SortedRuns]],
        version: int = 0,
        user_gpus: Mapping[str, int] | None = None,
        array_tasks: Mapping[int, int] | None = None,
        preemption_ids: tuple[int, ...] = (),
        carried: dict | None = None,
    ) -> None:
        self.version = version  # the index's version it was taken at: equal versions, equal views
        self._table = table
        self._holding = holding  # ids of the jobs holding GPUs
        self.held = held  # node -> indices of the GPUs held there
        self.held_mark = held_mark  # (the index's log of nodes whose held GPUs changed, its length then)
        self.holders_mark = holders_mark  # (its log of the jobs holding GPUs that changed, its length then)
        # Totals over the jobs holding GPUs, kept by the index so that a pass need not read them all:
        self.user_gpus = user_gpus if user_gpus is not None else {}  # user -> GPUs held
        self.array_tasks = array_tasks if array_tasks is not None else {}  # array id -> its tasks holding GPUs
        self._preemption_ids = preemption_ids  # holding jobs preemption reads (see ``preemption_relevant``)
        self.queued_count = queued_count
        self._orders = orders
        # Work a reader keeps from one view to the next (the backfill timeline's running jobs), shared
        # by every view of one index; each entry checks itself against the view it is used with.
        self.carried = carried if carried is not None else {}

    @once
    def holding(self) -> tuple[Job, ...]:
        """Scheduled and running jobs, in id order."""
        return self._table.get_all(self._holding)  # type: ignore[return-value]  # every holding job is there

    @once
    def preemption_relevant(self) -> tuple[Job, ...]:
        """Holding jobs that are preemptible or being preempted, in id order."""
        return self._table.get_all(self._preemption_ids)  # type: ignore[return-value]

    def get(self, job_id: int) -> Job | None:
        return self._table.get(job_id)

    def held_since(self, mark: tuple[list[str], int]) -> set[str] | None:
        """The nodes whose held GPUs changed from the view of ``mark`` (its ``held_mark``) to this one;
        None where the log cannot tell (it was begun anew between them, or that view is the later)."""
        return _logged_since(self.held_mark, mark)

    def holders_changed(self, mark: tuple[list[int], int] | None) -> dict[int, Job | None] | None:
        """The jobs that held GPUs in either view, or in both as other versions, from the view of ``mark``
        (its ``holders_mark``) to this one: id -> the job in this view (None: no longer active). None
        where the log cannot tell (as ``held_since``), or there is no ``mark``."""
        changed = _logged_since(self.holders_mark, mark) if mark is not None else None
        return None if changed is None else {job_id: self._table.get(job_id) for job_id in changed}

    def groups(self, ordering: Ordering) -> Mapping[Hashable, SortedRuns]:
        """The waiting jobs' (key, id) entries in ``ordering``, by group; built now if not kept."""
        kept = self._orders.get(ordering)
        return kept if kept is not None else ordering.build(self.queued)

    @once
    def queued(self) -> tuple[Job, ...]:
        return tuple(self._table.get(job_id) for _, job_id in self._orders[BY_ID].get(None, ()))

    @once
    def _all(self) -> tuple[Job, ...]:
        return tuple(sorted(self.holding + self.queued, key=lambda j: j.id))

    def __len__(self) -> int:
        return len(self._holding) + self.queued_count

    def __iter__(self) -> Iterator[Job]:
        return iter(self._all)

    def __getitem__(self, i):  # type: ignore[override]
        return self._all[i]


class JobIndex:
    """Mutable, owned by ``JobQueue``; every method takes the index's own lock."""

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self._lock = threading.Lock()
        self._table = TableWriter()
        self._holding = SortedRuns()  # ids of scheduled and running jobs
        self._held: dict[str, frozenset[int]] = {}
        self._held_log: list[str] = []  # nodes whose held GPUs changed, in order (``ActiveJobs.held_since``)
        # Jobs put while holding GPUs or after holding them, in order (``ActiveJobs.holders_changed``)
        self._holders_log: list[int] = []
        self._user_gpus: dict[str, int] = {}  # user -> GPUs its holding jobs hold
        self._array_tasks: dict[int, int] = {}  # array id -> its tasks holding GPUs
        self._preemption: set[int] = set()  # holding jobs that are preemptible or being preempted
        self._preemption_ids: tuple[int, ...] = ()  # the same, sorted, as views hold it
        self._queued = 0
        self._queued_gpus = 0
        self._orders: dict[Ordering, dict[Hashable, SortedRuns]] = {BY_ID: {}}
        self._orders_shared = False  # whether a view holds ``_orders``: copied before the next change
        self._explained: set[int] = set()  # waiting jobs whose reason is their own (see ``explained``)
        self._timed: set[int] = set()  # running jobs with a time limit
        self._dependent: set[int] = set()  # waiting jobs that run after other jobs
        self._preempted_for: dict[int, int] = {}  # active job stopped to make room -> the job it was stopped for
        self._shared = False  # whether a view holds ``_held``, ``_user_gpus`` and ``_array_tasks``
        self._carried: dict = {}  # handed to every view (``ActiveJobs.carried``)
        self.version = 0  # counts changes
        for job in jobs:
            self.put(job)

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        return self._table.get(job_id)

    @property
    def queued_count(self) -> int:
        return self._queued

    @property
    def queued_gpus(self) -> int:
        """GPUs the waiting jobs ask for, all together."""
        return self._queued_gpus

    def holding_gpus(self) -> int:
        """GPUs the scheduled and running jobs hold, all together."""
        with self._lock:
            return sum(self._user_gpus.values())

    def oldest_queued(self) -> Job | None:
        """The waiting job with the lowest id: the one waiting longest, since ids follow submission."""
        with self._lock:
            first = next(iter(self._orders[BY_ID].get(None, ())), None)
            return None if first is None else self._table.get(first[1])

    def explained_ids(self) -> set[int]:
        with self._lock:
            return set(self._explained)

    def timed(self) -> list[Job]:
        """Jobs holding GPUs under a time limit."""
        if not self._timed:
            return []  # (most queues: none)
        with self._lock:
            return [self._table.get(i) for i in self._timed]

    def dependent(self) -> list[Job]:
        """Waiting jobs that run after other jobs."""
        if not self._dependent:
            return []  # (most queues: none; a set's emptiness is read whole, without the lock)
        with self._lock:
            return [self._table.get(i) for i in self._dependent]

    def preempted_for(self) -> set[int]:
        """The jobs that active jobs were stopped (or are being stopped) to make room for."""
        if not self._preempted_for:
            return set()  # (most passes: none)
        with self._lock:
            return set(self._preempted_for.values())

    def view(self) -> ActiveJobs:
        with self._lock:
            self._shared = True  # the view keeps ``_held`` and the totals: copy them before the next change
            self._orders_shared = True  # and the orders (most passes change none of them)
            return ActiveJobs(
                table=self._table.frozen(),
                holding=self._holding,
                held=self._held,
                held_mark=(self._held_log, len(self._held_log)),
                holders_mark=(self._holders_log, len(self._holders_log)),
                queued_count=self._queued,
                orders=self._orders,
                version=self.version,
                user_gpus=self._user_gpus,
                array_tasks=self._array_tasks,
                preemption_ids=self._preemption_ids,
                carried=self._carried,
            )

    # -- changing ------------------------------------------------------------------------------
    def keep(self, ordering: Ordering) -> None:
        """Keep ``ordering`` up to date from now on (built once from the waiting jobs)."""
        with self._lock:
            if ordering not in self._orders:
                queued = (self._table.get(i) for _, i in self._orders[BY_ID].get(None, ()))
                self._orders = {**self._orders, ordering: ordering.build(queued)}  # (a view may hold the old)

    def put(self, job: Job) -> None:
        """Record the new version of ``job`` (inserted, changed, or ended); ``put_reason`` where only its
        pending reason changed."""
        status = job.status
        holds, is_queued = status in HOLDS_GPUS, status is _QUEUED
        with self._lock:
            self.version += 1
            job_id = job.id
            old = self._table.set(job_id, job if holds or is_queued else None)
            old_status = None if old is None else old.status
            held_before = old_status in HOLDS_GPUS
            if held_before or holds:
                if len(self._holders_log) > HELD_LOG:
                    self._holders_log = []  # as ``_held_log``
                self._holders_log.append(job_id)
            if (held_before or holds) and not (held_before and holds and _holds_alike(old, job)):
                # (scheduled -> running keeps the same GPUs: the table has the new version, no total moves)
                if self._shared:
                    self._held, self._shared = dict(self._held), False
                    self._user_gpus, self._array_tasks = dict(self._user_gpus), dict(self._array_tasks)
                if len(self._held_log) > HELD_LOG:
                    self._held_log = []  # a reader with a view of the old log counts afresh
                if held_before:
                    self._release(old)
                if holds:
                    self._hold(job)
            was_queued = old_status is _QUEUED
            if was_queued or is_queued:
                self._queued += is_queued - was_queued
                self._queued_gpus += (job.gpu_count if is_queued else 0) - (old.gpu_count if was_queued else 0)
                self._reorder(old if was_queued else None, job if is_queued else None)
            if is_queued and (job.after or job.after_any):
                self._dependent.add(job_id)
            elif self._dependent:
                self._dependent.discard(job_id)
            if job.preempted_for is not None and (holds or is_queued):
                self._preempted_for[job_id] = job.preempted_for
            elif self._preempted_for:
                self._preempted_for.pop(job_id, None)
            if is_queued and (job.pending_message != IN_LINE_MESSAGE or job.pending_reason != IN_LINE_REASON):
                self._explained.add(job_id)  # ``explained``, written out: this runs on every save
            else:
                self._explained.discard(job_id)

    def put_reason(self, job: Job) -> None:
        """Record a waiting job's new version that differs from the one the index holds only in its
        pending reason and message (``JobQueue.set_pending``, a pass's most frequent save): no order,
        count or total moves, so only the table and the jobs with a reason of their own change."""
        with self._lock:
            self.version += 1
            self._table.set(job.id, job)
            if job.pending_message != IN_LINE_MESSAGE or job.pending_reason != IN_LINE_REASON:
                self._explained.add(job.id)
            else:
                self._explained.discard(job.id)

    def _reorder(self, old: Job | None, new: Job | None) -> None:
        """Move a waiting job's entry in every kept order (``old``: its entry before, ``new``: after)."""
        if self._orders_shared:
            self._orders = {o: dict(groups) for o, groups in self._orders.items()}
            self._orders_shared = False
        for ordering, groups in self._orders.items():
            before = ordering.place(old) if old is not None else None
            after = ordering.place(new) if new is not None else None
            if before == after:
                continue  # the order is unchanged: the entry holds only the key and the id
            if before is not None:
                self._drop(groups, *before)
            if after is not None:
                group, entry = after
                groups[group] = groups.get(group, _NO_RUNS).add(entry)

    @staticmethod
    def _drop(groups: dict[Hashable, SortedRuns], group: Hashable, entry: tuple) -> None:
        runs = groups[group].remove(entry)
        if runs:
            groups[group] = runs
        else:
            del groups[group]

    def _hold(self, job: Job) -> None:
        self._holding = self._holding.add(job.id)
        if job.time_limit_s is not None:
            self._timed.add(job.id)
        self._user_gpus[job.user] = self._user_gpus.get(job.user, 0) + job.gpu_count
        if job.array_id is not None:
            self._array_tasks[job.array_id] = self._array_tasks.get(job.array_id, 0) + 1
        if _read_by_preemption(job):
            self._preemption.add(job.id)
            self._preemption_ids = tuple(sorted(self._preemption))
        if job.allocation is not None:
            for node, gpus in _by_node(job):
                self._held[node] = self._held.get(node, _NO_GPUS) | gpus
                self._held_log.append(node)

    def _release(self, job: Job) -> None:
        self._holding = self._holding.remove(job.id)
        self._timed.discard(job.id)
        _count_down(self._user_gpus, job.user, job.gpu_count)
        if job.array_id is not None:
            _count_down(self._array_tasks, job.array_id, 1)
        if job.id in self._preemption:
            self._preemption.discard(job.id)
            self._preemption_ids = tuple(sorted(self._preemption))
        if job.allocation is not None:
            for node, gpus in _by_node(job):
                left = self._held[node] - gpus
                self._held_log.append(node)
                if left:
                    self._held[node] = left
                else:
                    del self._held[node]


_NO_GPUS: frozenset[int] = frozenset()


def _logged_since(now: tuple[list, int], mark: tuple[list, int]):
    """What a log of the index holds from ``mark`` to ``now`` (two views' marks of it), as a set; None
    where it cannot tell: the log was begun anew between them, or ``mark`` is the later."""
    log, end = now
    if mark[0] is not log or mark[1] > end:
        return None
    return set(log[mark[1]:end])


_NO_RUNS = SortedRuns()  # (never changes: ``add`` returns a new one)


def _read_by_preemption(job: Job) -> bool:
    return job.preemptible or job.stop_reason is not None


def _holds_alike(old: Job, new: Job) -> bool:
    """Whether two versions of a job holding GPUs count alike in every total the index keeps."""
    return ((old.allocation is new.allocation or old.allocation == new.allocation)  # (is: scheduled -> running)
            and old.user == new.user and old.gpu_count == new.gpu_count
            and old.array_id == new.array_id and _read_by_preemption(old) == _read_by_preemption(new))


def _count_down(counts: dict, key: Hashable, n: int) -> None:
    left = counts[key] - n
    if left:
        counts[key] = left
    else:
        del counts[key]


def _by_node(job: Job) -> list[tuple[str, frozenset[int]]]:
    a = job.allocation
    assert a is not None
    if not a.more:  # (one node: most jobs)
        return [(a.node, frozenset(a.gpus))]
    return [(a.node, frozenset(a.gpus)), *((n, frozenset(g)) for n, g in a.more)]
