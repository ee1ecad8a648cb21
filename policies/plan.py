"""The backfill plan: when each GPU is expected to be free, and the earliest start of a waiting job.

A ``Timeline`` knows, per node, the time each usable GPU is expected to come free: now if it is
free, else the expected end of the job holding it (time limit, else estimate, else the rules'
default). ``earliest`` finds the first time a job fits on one node (or, where allowed, on whole
nodes), keeping clear of reservations it is not admitted to; ``book`` then holds those GPUs for the
job's expected run time. Backfill plans the first jobs that must wait (``Rules.backfill_plans``), each
after the ones before it; ``estimate_starts`` plans every waiting job in a policy's order.

The plan is an estimate: jobs end early, estimates are wrong and new jobs arrive. A GPU booked for a
job counts as busy from the moment it comes free, even if the job starts a little later (waiting for
the rest of its GPUs), so estimates err late rather than early; only a job held back by its begin
time or dependencies leaves the gap before it open to others.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from itertools import count
from typing import Iterable, Mapping

from tools.index import ActiveJobs
from tools.models import HOLDS_GPUS, Job, JobStatus, PendingReason, Reservation


from policies.rules import overrun_end
from policies.snapshot import Snapshot

NEVER = float("inf")


@dataclass(frozen=True)
class Slot:
    """Where and when a job is planned: ``gpus`` are (node, index) pairs, all free by ``start``."""

    start: float
    end: float
    gpus: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Block:
    gpus: frozenset[int]
    start: float
    end: float
    reservation: Reservation | None  # None: planned for a job, closed to every other

    def against(self, user: str, group: str | None) -> bool:
        return self.reservation is None or not self.reservation.admits(user, group)


class Timeline:
    def __init__(self, snapshot: Snapshot, started: Iterable[tuple[Job, tuple[tuple[str, int], ...]]] = ()) -> None:
        now, rules, layout = snapshot.now, snapshot.rules, snapshot.layout
        self.now = now
        self.rules = rules
        self.multi_node = snapshot.multi_node
        self._layout = layout
        # Per node, GPUs kept from a time to a time: by a reservation (for those it does not admit) or
        # by a job planned to start later than they come free (the gap before it stays usable).
        self._blocks: dict[str, list[Block]] = {}
        for r in snapshot.reservations:
            if r.end > now:
                self._blocks.setdefault(r.node, []).append(Block(frozenset(r.gpus), r.start, r.end, r))
        free_at, kept_times = _running_ends(snapshot)
        self._free_at = free_at
        # Full nodes' ends and their order as the keeper of the running ends holds them, shared with it
        # and read only: copied before a change (``_own``).
        self._kept = set(kept_times)
        for job, gpus in started:
            end = now + rules.runtime(job)
            for node, gpu in gpus:
                self._own(node)[gpu] = end
        kept = self._kept
        self._times = {name: kept_times[name] if name in kept else sorted(at.values())  # each node's, in order
                       for name, at in free_at.items()}

    def _own(self, node: str) -> dict[int, float]:
        """``node``'s ends, to change."""
        if node in self._kept:
            self._kept.discard(node)
            self._free_at[node] = dict(self._free_at[node])
        return self._free_at[node]

    def earliest(self, job: Job, *, not_before: float | None = None) -> Slot | None:
        """The first slot where ``job`` fits, or None if it never does (e.g. too large)."""
        start = max(self.now, not_before or self.now)
        duration = self.rules.runtime(job)
        count = job.gpu_count
        if count > self._layout.largest_usable_node:
            return self._earliest_whole_nodes(job, start, duration) if self.multi_node else None
        if not self._blocks:
            node, t = self._first_free(count, start)
            return Slot(t, t + duration, self._pick(node, self._free_at[node], t, count, ()))
        group = self.rules.group_of(job.user)
        best: tuple[float, str] | None = None
        kept_best: Slot | None = None
        for node, times in self._times.items():  # in inventory order, so ties go to the first node
            if len(times) < count:
                continue
            if node in self._blocks:
                slot = self._earliest_around(node, job, group, start, duration)
                if slot is not None and (best is None or slot.start < best[0]):
                    best, kept_best = (slot.start, node), slot
            else:
                t = max(start, times[count - 1])  # the count-th GPU to come free decides
                if best is None or t < best[0]:
                    best, kept_best = (t, node), None
            if best is not None and best[0] == start:
                break  # nothing starts earlier than now
        if best is None:
            return None
        if kept_best is not None:
            return kept_best
        t, node = best
        return Slot(t, t + duration, self._pick(node, self._free_at[node], t, count, ()))

    def _first_free(self, count: int, start: float) -> tuple[str, float]:
        """With no blocks: the first node in inventory order where ``count`` GPUs are free earliest
        (from ``start`` on), and when. ``earliest``'s loop without blocks, in C loops: a plan is made
        in most passes that start a job while one waits, and reads every node."""
        times = self._times
        if count <= min(map(len, times.values())):
            names = list(times)
        else:  # (count is at most the largest node's: some node has enough)
            names = [name for name, at in times.items() if len(at) >= count]
        ends = [times[name][count - 1] for name in names]  # the count-th GPU to come free decides
        first = min(ends)
        if first <= start:  # it fits from ``start`` on the first node where it does
            return names[next(i for i, end in enumerate(ends) if end <= start)], start
        return names[ends.index(first)], first

    def _earliest_around(self, node: str, job: Job, group: str | None, start: float, duration: float) -> Slot | None:
        """On a node with blocks: the first time enough GPUs are free and kept by no block against
        ``job`` for the whole of its run."""
        free_at, count = self._free_at[node], job.gpu_count
        blocking = [b for b in self._blocks[node] if b.against(job.user, group)]
        candidates = sorted({max(start, t) for t in self._times[node]} | {b.end for b in blocking if b.end > start})
        for t in candidates:
            kept = {g for b in blocking if b.start < t + duration and b.end > t for g in b.gpus}
            ready = [g for g, at in free_at.items() if at <= t and g not in kept]
            if len(ready) >= count:
                return Slot(t, t + duration, self._pick(node, free_at, t, count, kept))
        return None

    @staticmethod
    def _pick(node: str, free_at: Mapping[int, float], t: float, count: int, kept) -> tuple[tuple[str, int], ...]:
        """The ``count`` GPUs free by ``t`` that came free last: the ones freed earlier stay for others."""
        ready = sorted((g for g, at in free_at.items() if at <= t and g not in kept), key=lambda g: (-free_at[g], g))
        return tuple(sorted((node, g) for g in ready[:count]))

    def _earliest_whole_nodes(self, job: Job, start: float, duration: float) -> Slot | None:
        """A multi-node job: whole nodes, every GPU usable, none kept by a reservation it may not use."""
        group = self.rules.group_of(job.user)
        nodes = []
        for name in self._layout.whole:
            if any(b.against(job.user, group) for b in self._blocks.get(name, ())):
                continue
            nodes.append((max(start, self._times[name][-1]), name))  # its last GPU to come free
        nodes.sort()
        size, total, chosen = self._layout.size, 0, []
        for t, name in nodes:
            chosen.append(name)
            total += size[name]
            if total >= job.gpu_count:
                gpus = tuple((n, g) for n in chosen for g in sorted(self._free_at[n]))
                return Slot(t, t + duration, gpus[: job.gpu_count])
        return None

    def occupy(self, gpus: Iterable[tuple[str, int]], end: float) -> None:
        """A job started now on ``gpus`` holds them until ``end``; a GPU booked for a later plan stays
        booked until that plan's end (the job was let start there only because it ends before)."""
        nodes = set()
        for node, gpu in gpus:
            at = self._own(node)
            at[gpu] = max(at[gpu], end)
            nodes.add(node)
        for node in nodes:
            self._times[node] = sorted(self._free_at[node].values())

    def book(self, slot: Slot, *, keep_gap: bool = False) -> None:
        """Hold the slot's GPUs for its job. With ``keep_gap`` (a job held back by its begin time or
        its dependencies, often for hours), a GPU that comes free before the slot starts stays open
        to others until then; otherwise the GPU counts as busy from when it comes free, as in plain
        list scheduling (the gaps are short, and ignoring them keeps planning cheap)."""
        later: dict[str, set[int]] = {}
        for node, gpu in slot.gpus:
            if keep_gap and self._free_at[node][gpu] < slot.start:
                later.setdefault(node, set()).add(gpu)
            else:
                self._own(node)[gpu] = slot.end
        for node, gpus in later.items():
            self._blocks.setdefault(node, []).append(Block(frozenset(gpus), slot.start, slot.end, None))
        for node in {node for node, _ in slot.gpus}:
            self._times[node] = sorted(self._free_at[node].values())


def _running_ends(snapshot: Snapshot) -> tuple[dict[str, dict[int, float]], dict[str, list[float]]]:
    """Per node, when each usable GPU is expected to come free: now, or the expected end of the job
    holding it. From the running jobs kept since the last plan of the same queue where there is one;
    then, with them, the full nodes' ends in order, and those nodes' ends are the keeper's (read only)."""
    carried = snapshot.carried
    if carried is not None:
        kept = carried.get(_RunningEnds)
        if not (isinstance(kept, _RunningEnds) and kept.fits(snapshot)):
            kept = carried[_RunningEnds] = _RunningEnds(snapshot)
        ends = kept.ends(snapshot)
        if ends is not None:
            return ends
    return _count_ends(snapshot), {}


def _count_ends(snapshot: Snapshot) -> dict[str, dict[int, float]]:
    """``_running_ends`` read from every running job."""
    now, rules = snapshot.now, snapshot.rules
    free_at = {name: dict.fromkeys(usable, now) for name, usable in snapshot.layout.usable.items()}
    expected_end, default_runtime, unknown = rules.expected_end, rules.default_runtime_s, {}
    for job in snapshot.holding:  # the hot loop of a plan: no pairs built, one lookup per node
        a = job.allocation
        if a is None:
            continue
        # ``rules.expected_end`` written out for the usual case, a running job within its expected
        # run time (start + time limit, else estimate, else the default): the same sum, without
        # three calls per running job per plan. Anything else asks the rules.
        start = job.start_time
        if start is not None and job.stop_reason is None:
            runtime = job.time_limit_s
            if runtime is None:
                runtime = job.est_duration_s
                if runtime is None:
                    runtime = default_runtime
            end = start + runtime
            if end <= now:
                end = expected_end(job, now)
        else:
            end = expected_end(job, now)
        if a.more:
            for node, gpus in ((a.node, a.gpus), *a.more):
                at = free_at.get(node, unknown)
                for gpu in gpus:
                    if gpu in at:
                        at[gpu] = end
        else:
            at = free_at.get(a.node, unknown)
            for gpu in a.gpus:
                if gpu in at:
                    at[gpu] = end
    return free_at


class _Overlap(Exception):
    """Two running jobs hold the same GPU: the kept ends cannot say which one frees it."""


class _RunningEnds:
    """The expected ends of the running jobs, kept from one plan to the next (in the queue's
    ``carried``), so that a plan reads only the jobs that started or ended since the last one, and
    those whose end moves with the clock.

    A running job within its expected run time ends at start + run time whatever the time ("fixed");
    a job stopped, not started, or past that end is expected to end at a time that moves with now
    ("moving", asked of the rules at each plan). A fixed job turns moving once now reaches its end
    (a heap of ends). The jobs to look at again are those the index logged since the last plan
    (``ActiveJobs.holders_changed``), or, where its log cannot tell, every job holding GPUs. Time may
    only go forward, and the layout and the rules must be those it was made for, or equal ones
    (``fits``); otherwise, and while another thread reads it, a plan counts afresh."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._lock = threading.Lock()
        self._layout, self._rules = snapshot.layout, snapshot.rules
        self._usable = snapshot.layout.usable_set
        self._now = snapshot.now
        self._jobs: dict[int, Job] = {}  # job id -> the version holding GPUs at the last plan
        self._mark: tuple[list[int], int] | None = None  # the index's log of holders at the last plan
        self._placed: dict[int, tuple[int, float | None, tuple[tuple[str, int], ...]]] = {}  # job id -> (token, fixed end or None, usable GPUs)
        self._owner: dict[tuple[str, int], int] = {}  # (node, GPU) -> id of the job holding it
        # node -> GPU -> end, of fixed jobs. A node's dict is handed to the timelines of a plan while the
        # node is full, so it is replaced, never changed (``_changing``), and so is its order of ends:
        self._fixed: dict[str, dict[int, float]] = {}
        self._changed: set[str] = set()  # nodes whose dict was replaced in this plan: changed in place
        self._sorted: dict[str, list[float]] = {}  # full node -> its ends in order
        self._moving: dict[int, tuple[Job, tuple[tuple[str, int], ...]]] = {}  # job id -> (job whose end moves with now, its GPUs)
        self._due: list[tuple[float, int, int]] = []  # (fixed end, token, job id): when a fixed job turns moving
        self._tokens = count()

    def fits(self, snapshot: Snapshot) -> bool:
        """Made for this snapshot's usable GPUs and rules (equal will do: an inventory read afresh
        each pass gives a new but equal layout), and time has not gone back."""
        layout, rules = snapshot.layout, snapshot.rules
        return ((layout is self._layout or layout.usable == self._layout.usable)
                and (rules is self._rules or rules == self._rules) and snapshot.now >= self._now)

    def ends(self, snapshot: Snapshot) -> tuple[dict[str, dict[int, float]], dict[str, list[float]]] | None:
        """As ``_count_ends``; None if it cannot tell (the caller counts)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if snapshot.now < self._now:  # another plan went further meanwhile
                return None
            return self._ends(snapshot)
        except _Overlap:
            self._forget()
            return None
        finally:
            self._lock.release()

    def _ends(self, snapshot: Snapshot) -> tuple[dict[str, dict[int, float]], dict[str, list[float]]]:
        now = self._now = snapshot.now
        self._changed.clear()
        jobs = self._jobs
        # A couple of jobs start or end between two plans, of some 300: only those are looked at. The
        # versions gone first, then the new ones in id order (the order a full read adds them in).
        view = snapshot.jobs
        assert isinstance(view, ActiveJobs)  # (a snapshot carries work only from the index's view)
        current = view.holders_changed(self._mark)
        self._mark = view.holders_mark
        if current is None:
            current = {job.id: job for job in snapshot.holding}
            changed = current.keys() | jobs.keys()
        else:
            changed = current.keys()
        for job_id in changed:
            if job_id in jobs and current.get(job_id) is not jobs[job_id]:
                del jobs[job_id]
                self._drop(job_id)
        for job_id in sorted(changed):
            job = current.get(job_id)
            if job is not None and job_id not in jobs and job.status in HOLDS_GPUS:
                jobs[job_id] = job
                self._add(job_id, job, now)
        due, placed = self._due, self._placed
        while due and due[0][0] <= now:
            _, token, key = heapq.heappop(due)
            kept = placed.get(key)
            if kept is not None and kept[0] == token:  # still the same job, still fixed
                for node, gpu in kept[2]:
                    del self._changing(node)[gpu]
                placed[key] = (token, None, kept[2])
                self._moving[key] = (jobs[key], kept[2])
        free_at, fixed, full, in_order = {}, self._fixed, {}, self._sorted
        for name, usable in self._layout.usable.items():
            ends = fixed.get(name)
            if ends is not None and len(ends) == len(usable):  # a full node (most, when a plan is needed)
                free_at[name] = ends
                times = in_order.get(name)
                if times is None:
                    times = in_order[name] = sorted(ends.values())
                full[name] = times
            else:
                at = free_at[name] = dict.fromkeys(usable, now)
                if ends:
                    at.update(ends)
        expected_end = self._rules.expected_end
        for job, gpus in self._moving.values():
            start = job.start_time
            # A moving job neither stopped nor waiting to start is past start + run time (most of some
            # 70 a plan): its end needs no run time worked out.
            end = (overrun_end(job, start, now) if start is not None and job.stop_reason is None
                   else expected_end(job, now))
            for node, gpu in gpus:  # (never on a full node: its GPUs are all fixed jobs')
                free_at[node][gpu] = end
        return free_at, full

    def _changing(self, node: str) -> dict[int, float]:
        """``node``'s fixed ends, to change: replaced by a copy once a plan, since the timelines of
        the last plan may hold them."""
        if node not in self._changed:
            self._changed.add(node)
            self._fixed[node] = dict(self._fixed.get(node, ()))
            self._sorted.pop(node, None)
        return self._fixed[node]

    def _add(self, key: int, job: Job, now: float) -> None:
        a = job.allocation
        if a is None:
            return
        usable, owner = self._usable, self._owner
        gpus = tuple((node, g) for node, held in ((a.node, a.gpus), *a.more) if node in usable
                     for g in held if g in usable[node])
        for ref in gpus:
            if ref in owner:
                raise _Overlap
            owner[ref] = key
        token, end = next(self._tokens), None
        if job.start_time is not None and job.stop_reason is None:
            end = job.start_time + self._rules.runtime(job)
            if end <= now:
                end = None
        self._placed[key] = (token, end, gpus)
        if end is None:
            self._moving[key] = (job, gpus)
        else:
            for node, gpu in gpus:
                self._changing(node)[gpu] = end
            heapq.heappush(self._due, (end, token, key))

    def _drop(self, key: int) -> None:
        kept = self._placed.pop(key, None)
        if kept is None:
            return  # held no GPU
        _, end, gpus = kept
        for ref in gpus:
            del self._owner[ref]
        if end is None:
            del self._moving[key]
        else:
            for node, gpu in gpus:
                del self._changing(node)[gpu]

    def _forget(self) -> None:
        self._mark = None
        self._jobs, self._placed, self._owner, self._fixed, self._moving, self._due = {}, {}, {}, {}, {}, []
        self._sorted = {}


def estimate_starts(snapshot: Snapshot, order: Iterable[Job], *, limit: int = 500) -> dict[int, float]:
    """Planned start of each waiting job, taking them in ``order`` (the policy's), each planned as
    early as it fits after the ones before it (and after the jobs it depends on). Jobs that cannot be
    planned (never fit, a dependency that will never be met, past ``limit``) are left out, and so are
    jobs a quota holds back: when they may start depends on their user's other jobs ending, which
    the plan does not follow."""
    timeline = Timeline(snapshot)
    planned_end: dict[int, float] = {j.id: snapshot.rules.expected_end(j, snapshot.now) for j in snapshot.holding}
    starts: dict[int, float] = {}
    for i, job in enumerate(order):
        if i >= limit:
            break
        if job.pending_reason == PendingReason.QUOTA_EXCEEDED:
            continue
        after = _dependencies_end(snapshot, job, planned_end)
        if after is None:
            continue
        not_before = max(job.not_before or 0.0, after)
        slot = timeline.earliest(job, not_before=not_before)
        if slot is None:
            continue
        timeline.book(slot, keep_gap=not_before > snapshot.now)
        starts[job.id] = slot.start
        planned_end[job.id] = slot.end
    return starts


def _dependencies_end(snapshot: Snapshot, job: Job, planned_end: Mapping[int, float]) -> float | None:
    """When the jobs ``job`` runs after are expected to have ended; None if unknown or never."""
    latest = 0.0
    for dep in job.depends_on:
        if dep in planned_end:
            latest = max(latest, planned_end[dep])
            continue
        status = snapshot.ended.get(dep)
        if status is None or (dep in job.after and status != JobStatus.COMPLETED):
            return None
    return latest
