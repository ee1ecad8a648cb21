"""Placement: put jobs on free GPUs in a policy's order, and say why a job cannot start.

``Placer`` keeps per-node free GPUs in buckets by free count, so best-fit (the node where the job fits
most tightly) costs O(GPUs per node), not O(nodes). A job of up to one node's usable GPUs runs on one
node. With ``snapshot.multi_node`` (eval replays) a larger job takes whole free nodes, the largest
first; all of them but the last are used whole.

Before placing a job, ``offer`` checks in turn: its begin time, the jobs it runs after, whether it can
ever fit, strict order (``head_of_line``), its user's and group's quotas, then the free GPUs. Some
GPUs are closed to some jobs: those of a reservation the job is not admitted to, from the moment the
job would still be running at the window's start, and, under ``backfill``, the GPUs planned for the
first ``rules.backfill_plans`` jobs that must wait, for any job that would still be running when one
of them is planned to start (a later job may start now only if it delays none of those plans; with
one plan, EASY backfill; with more, nearer Slurm's, which plans every job it tests, so that a wide job
second in line is not starved by small jobs taking the GPUs it would need once the first has started).

``offer_groups`` walks waiting jobs in a policy's order, already sorted and split by GPU count. Free
GPUs only shrink during a pass, so once a size does not fit the free GPUs at all, no later job of that
size will: its first job records why, and the jobs behind it are never read (they wait in line). A
job kept out only by closed GPUs, a quota or its begin time says so and the pass reads on, since the
next job of its size may be someone else's or shorter. A pass therefore reads the queue only as far as
something can still start, and with backfill at most ``rules.backfill_depth`` jobs past the first one
that must wait.

One module, over 400 lines, because the checks share one pass's state (free GPUs, quotas in use,
the backfill plan) and their order is the policy's meaning; the rules themselves are in ``admission``.
"""

from __future__ import annotations

import heapq
import threading
from bisect import bisect_left
from enum import Enum
from typing import Iterable, Iterator, Mapping

from tools.index import once
from tools.models import Allocation, Job, JobStatus, PendingReason, Reservation
from tools.timespec import local_time

from policies.plan import Slot, Timeline
from policies.rules import expected_runtime
from policies.preemption import choose_preemptions
from policies.admission import (
    Wait,
    array_limit_wait,
    begin_time_wait,
    dependency_wait,
    has_quotas,
    quota_wait,
    reservations_against,
    reserved_for,
    size_wait,
)
from policies.snapshot import Decisions, Proposal, Reasons, Snapshot
from policies.watch import describe_foreign

Entries = Iterable[tuple[tuple, int]]  # (sort key, job id), in order
Closed = Mapping[str, frozenset[int]]  # node -> GPUs a job may not take


class Offer(Enum):
    STARTED = "started"
    WAITS = "waits"  # this job waits; the next job of its size may still start
    USER_FULL = "user_full"  # no later job of this size and user can start in this pass (quota, reservation)
    SIZE_FULL = "size_full"  # no job of this size can start in this pass


class Placer:
    # What a pass starts from, where it is a value a pass replaces rather than changes: read from the
    # class until then (a placer is made every pass, and most passes change few of them).
    _count: dict[str, int] | None = None  # free GPUs per node, once this pass took any
    _by_free: list[frozenset[str]] | tuple[()] = ()  # nodes by their number of free GPUs (not 0), once one is taken
    _whole: set[str] | None = None  # whole nodes with nothing held (for multi-node jobs), once read
    _whole_gpus = 0
    _blocked_by: int | None = None
    _most_free: int | None = None  # most free GPUs on one node, until this pass takes any
    head: Job | None = None  # the first job that must wait for GPUs (backfill, below)
    _timeline: Timeline | None = None
    # The first plan, not made until a later job or a reader needs its start (``_surely_fits_later``):
    # the job, and how many jobs of this pass had started before it.
    _unmade: tuple[Job, int] | None = None
    _planned_jobs = 0  # jobs planned, including those that fit nowhere ever (no slot)
    _after_head = 0  # jobs examined since the head was planned

    def __init__(self, snapshot: Snapshot, *, head_of_line: bool = False, backfill: bool = False) -> None:
        self.snapshot = snapshot
        self.head_of_line = head_of_line  # strict order: once a job waits for GPUs, all later jobs wait
        self.backfill = backfill  # EASY: plan the first job that must wait; later ones may not delay it
        layout = self._layout = snapshot.layout
        self._rules = snapshot.rules
        # Built on first need (a pass over an empty queue or a full cluster needs none of it), as the
        # free counts, the buckets and the whole nodes above:
        self._free: dict[str, list[int]] = {}  # free GPU indices, of the nodes this pass took from
        most = layout.largest_usable_node
        if snapshot.multi_node:
            most = max(most, layout.whole_gpus)
        cap = snapshot.max_gpus_per_job
        self.limit = most if cap is None else min(most, cap)  # a job asking for more can never start
        self._refused_around: dict[frozenset[int], int] = {}  # reservation ids -> smallest size that did not fit
        self._messages: dict[int, str] = {}  # reservation id -> why a job it keeps out waits
        self._user_full: dict[tuple[str, int], Wait] = {}  # (user, size) that cannot start in this pass, and why
        # Backfill: the jobs that must wait, planned in the order they were offered (at most
        # ``rules.backfill_plans``), each on a timeline holding the running jobs, those started in this
        # pass and the plans before it. Kept by planned start, with the GPUs closed by the plans that
        # start before a time (a prefix union), since a job may start only if it ends before them.
        # (``head``, ``_timeline``, ``_unmade`` and ``_planned_jobs`` above.)
        self._plans: list[tuple[float, Job, tuple[tuple[str, int], ...]]] = []  # (start, job, its GPUs)
        self._plan_starts: list[float] = []  # from when each plan closes its GPUs (its start; now if starving)
        self._closed_before: list[dict[str, frozenset[int]]] = []  # [i]: GPUs of the first i + 1 plans
        self._refused_behind_plans: dict[int, int] = {}  # plans run into -> the fewest GPUs that did not fit around them
        # (user, GPUs) whose last job got as far as the plans (within quota, fitting the free GPUs, no
        # reservation), since the last start or plan; and the reason given for running into ``before``
        # plans. A later such job that runs into the plans is refused without the checks between.
        self._up_to_plans: set[tuple[str, int]] = set()
        self._behind_waits: dict[int, Wait] = {}
        self._started_jobs: list[tuple[Job, tuple[tuple[str, int], ...]]] = []
        self.starts: list[Proposal] = []
        self.waiting: dict[int, Wait] = {}
        # Jobs others were preempted for go first, whatever the policy's order, so that the GPUs
        # freed for them are theirs; the policy's pass then finds them already offered.
        self._first: dict[int, Offer] = {}
        self._first_ids = frozenset(snapshot.first)
        self._offering_first: set[int] = set()  # being offered first now: a chain of preemptions
        self._deferred: dict[int, list[tuple[int, int]]] = {}  # job being offered first -> (victim, starts then)
        for job_id in snapshot.first:
            self._offer_first(job_id)

    # Read from the snapshot on first need, as the buckets are: most passes start nothing, and many
    # offer no job at all.
    @once
    def _free_total(self) -> int:  # taken from as the pass starts jobs
        return self.snapshot.free_total

    @once
    def _user_use(self) -> dict[str, int]:
        return dict(self.snapshot.in_use[0])

    @once
    def _group_use(self) -> dict[str, int]:
        return dict(self.snapshot.in_use[1])

    @once
    def _array_use(self) -> dict[int, int]:  # array id -> its tasks holding GPUs
        return dict(self.snapshot.array_tasks)

    @once
    def _reservations(self) -> tuple[Reservation, ...]:
        return tuple(r for r in self.snapshot.reservations if r.end > self.snapshot.now)

    @property
    def done(self) -> bool:
        """Whether no later job of the pass may start: strict order is blocked, or backfill has
        examined as many jobs past its plan as the rules allow."""
        return self._blocked_by is not None or (
            (bool(self._plans) or self._unmade is not None) and self._after_head >= self._rules.backfill_depth
        )

    def fits(self, count: int) -> bool:
        """Whether a job of ``count`` GPUs could start now if no GPU were closed to it; the same for
        every job of that size."""
        if count > self._layout.largest_usable_node:
            return self.snapshot.multi_node and count <= self._whole_free()[1]
        if count > self._free_total:
            return False
        if not self._by_free:  # no GPU taken yet in this pass: a C-level max beats building buckets
            if self._most_free is None:
                self._most_free = max(self._counts().values(), default=0)
            return self._most_free >= count
        by_free = self._by_free
        for c in range(count, len(by_free)):  # (a loop, not ``any``: asked of most jobs offered)
            if by_free[c]:
                return True
        return False

    def _whole_free(self) -> tuple[set[str], int]:
        if self._whole is None:  # not the nodes this pass took GPUs from (they are in ``_free``)
            self._whole = set(self._layout.whole - self.snapshot.held.keys() - self._free.keys())
            self._whole_gpus = sum(self._layout.size[name] for name in self._whole)
        return self._whole, self._whole_gpus

    def _counts(self) -> Mapping[str, int]:
        """Free GPUs per node: the snapshot's until this pass takes some (then a copy, ``_take_from``)."""
        return self.snapshot.free_count if self._count is None else self._count

    def _buckets(self) -> list[frozenset[str]]:
        if not self._by_free:  # kept by the queue from pass to pass: a take replaces the two it changes
            self._by_free = list(self.snapshot.by_free)
        return self._by_free

    def _free_on(self, node: str) -> list[int]:
        free = self._free.get(node)
        return free if free is not None else list(self.snapshot.free_on(node))

    def _offer_first(self, job_id: int) -> None:
        """Offer a waiting job others were preempted for, once, ahead of the policy's order; and
        before it, the job it was itself preempted for, if that one is also to be offered first. A
        job made room for once, then stopped for another, must not take back the GPUs freed for the
        other (``_made_room_wait`` reads the other's outcome, so the other must be offered before)."""
        if job_id in self._first or job_id in self._offering_first:
            return
        job = self.snapshot.jobs_by_id.get(job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return
        self._offering_first.add(job_id)
        if job.preempted_for in self._first_ids:
            self._offer_first(job.preempted_for)
        self._first[job_id] = self.offer(job)
        self._offering_first.discard(job_id)
        # A victim that found this job still being offered (a cycle: priorities changed since their
        # preemptions) waited for it. It is offered again if this job does not wait for GPUs and
        # nothing started since: a start since may be of a job that read the victim's wait as no
        # reason to wait itself (the next in the cycle), and the victim must then not wait for GPUs.
        for victim, starts in self._deferred.pop(job_id, ()):
            if len(self.starts) == starts and not self._waits_for_gpus(job_id):
                del self._first[victim], self.waiting[victim]
                self._offer_first(victim)

    def offer_ahead(self, job: Job) -> Offer:
        """Offer ``job`` ahead of the policy's order (one that has waited too long); offered again in
        order, it answers the same."""
        if job.id not in self._first:
            self._first[job.id] = self.offer(job)
        return self._first[job.id]

    def _waits_for_gpus(self, job_id: int) -> bool:
        wait = self.waiting.get(job_id)
        return wait is not None and wait.reason == PendingReason.RESOURCES

    def offer(self, job: Job) -> Offer:
        """Start ``job`` now if it may and fits; otherwise record why it waits."""
        first = self._first.get(job.id)
        if first is not None:
            return Offer.WAITS if first == Offer.SIZE_FULL else first  # its size may still fit others
        if self._plans or self._unmade is not None:  # a plan is made (or deferred): backfill from here on
            self._after_head += 1
            if (job.user, job.gpu_count) in self._up_to_plans and self._refused_again(job):
                return Offer.WAITS
        # Each check asked only of a job it may concern: most have no begin time, dependency, preemption
        # or array limit, and the array counts are not copied for them.
        wait = begin_time_wait(job, self.snapshot.now) if job.not_before is not None else None
        if wait is None and (job.after or job.after_any):
            wait = self._dependency_wait(job)
        if wait is None and job.preempted_for is not None:
            wait = self._made_room_wait(job)
        if wait is None and job.array_limit is not None:
            wait = array_limit_wait(job, self._array_use)
        if wait is not None:
            self.waiting[job.id] = wait
            return Offer.WAITS
        count = job.gpu_count
        if count > self.limit:
            wait = size_wait(count, self._layout, max_gpus_per_job=self.snapshot.max_gpus_per_job,
                             multi_node=self.snapshot.multi_node, usable=True)
            if self._layout.foreign and wait is not None:
                wait = Wait(wait.reason, f"{wait.message}; {describe_foreign(self._layout.foreign)}")
            self.waiting[job.id] = wait
            return Offer.WAITS
        if self._blocked_by is not None:
            self.waiting[job.id] = Wait(PendingReason.PRIORITY, f"waits behind job {self._blocked_by}, first in line")
            return Offer.WAITS
        full = self._user_full.get((job.user, count))
        if full is not None:  # an earlier job of this user and size could not start, and nor can this one
            self.waiting[job.id] = full
            return Offer.USER_FULL
        # (``quota_wait`` says None without quotas; asked only with some, so that the use is not copied)
        over = (quota_wait(self._rules, job.user, count, self._user_use, self._group_use)
                if has_quotas(self._rules) else None)
        if over is not None:  # the user's and group's use only grow during a pass
            self.waiting[job.id] = self._user_full[(job.user, count)] = over
            return Offer.USER_FULL
        if not self.fits(count):
            self.waiting[job.id] = Wait(PendingReason.RESOURCES, self._missing(count))
            # While more plans may be made, the next job of this size is read too, to be planned.
            return Offer.WAITS if self._must_wait(job) and self._may_plan() else Offer.SIZE_FULL
        end = self.snapshot.now + self._rules.runtime(job)
        keeping = self._reservations_against(job, end)
        reserved = self._closed_by(keeping) if keeping else {}
        if keeping and not self._fits_around(job, keeping, reserved):
            self.waiting[job.id] = Wait(PendingReason.RESERVATION, self._reserved_message(keeping))
            self._must_wait(job)
            # Windows that have begun keep the user's later jobs out however short they are.
            if all(r.start <= self.snapshot.now for r in keeping):
                self._user_full[(job.user, count)] = self.waiting[job.id]
                return Offer.USER_FULL
            return Offer.WAITS
        closed = reserved
        own = self._own_reserved(job)
        # The user's (or group's) reserved GPUs whose window is open are theirs first, whatever the plan
        # for another job: on them the job starts rather than wait behind that plan.
        if own and self._place(job, _union(self._all_but(own), reserved)):
            return Offer.STARTED
        self._settle()  # the job fits the free GPUs: whether it may take them depends on the plans
        before = bisect_left(self._plan_starts, end)  # the plans it would still run into
        if before:
            planned = self._closed_before[before - 1]
            closed = _union(reserved, _minus(planned, own) if own else planned)
        only_plans = not reserved and not own  # closed to it: the GPUs of the first ``before`` plans
        if (only_plans and self._refused_behind(before, count)) or not self._place(job, closed):
            assert before, "only a plan closes GPUs that fit it"
            if only_plans:
                self._refused_behind_plans[before] = min(count, self._refused_behind_plans.get(before, count))
                if not self.head_of_line and not self._may_plan() and not self._reservations:
                    self._up_to_plans.add((job.user, count))
            self.waiting[job.id] = self._behind_wait(before)
            self._must_wait(job)
            return Offer.WAITS
        return Offer.STARTED

    def _refused_again(self, job: Job) -> bool:
        """Refuse ``job`` as ``offer`` would, if it is sure to run into the plans as the last job of its
        user and size did: nothing started and nothing was planned since (so its quota and the free GPUs
        answer alike), there is no reservation, it waits for nothing of its own (begin time,
        dependencies, a job it was stopped for, its array's limit), and as large or smaller a job was
        refused around as few or fewer plans as it runs into. Most offers of a multifactor pass with a
        plan are such jobs: each user's next job of each size, read up to ``rules.backfill_depth``."""
        now = self.snapshot.now
        if ((job.not_before is not None and job.not_before > now) or job.after or job.after_any
                or job.preempted_for is not None or job.array_limit is not None):
            return False
        before = bisect_left(self._plan_starts, now + expected_runtime(job, self._rules.default_runtime_s))
        if not before or not self._refused_behind(before, job.gpu_count):
            return False
        self.waiting[job.id] = self._behind_wait(before)
        return True

    def _behind_wait(self, before: int) -> Wait:
        """Why a job that runs into the first ``before`` plans waits; the same words for each such job
        until the plans change."""
        wait = self._behind_waits.get(before)
        if wait is None:
            first = self._plans[0][1]
            where = ", first in line," if first is self.head else ""
            wait = self._behind_waits[before] = Wait(
                PendingReason.PRIORITY,
                f"the GPUs it would fit on are planned for job {first.id}{where} and it would not end "
                "before that job's planned start" if before == 1 else
                f"the GPUs it would fit on are planned for {before} jobs ahead of it, and it would not end "
                "before their planned starts",
            )
        return wait

    def _refused_behind(self, before: int, count: int) -> bool:
        """Whether a job of ``count`` GPUs is sure not to fit around the GPUs of the first ``before``
        plans: one as large or smaller did not fit around as few or fewer. Free GPUs only shrink during
        a pass, and the GPUs of more plans include those of fewer, so many waiting jobs kept out by the
        plans cost one try (a multifactor pass offers each user's next job of a size)."""
        for b, c in self._refused_behind_plans.items():  # (a loop, not ``any``: asked once per job refused)
            if b <= before and c <= count:
                return True
        return False

    def _may_plan(self) -> bool:
        return self.backfill and self._planned_jobs < self._rules.backfill_plans

    def _must_wait(self, job: Job) -> bool:
        """``job`` cannot start now: under strict order it blocks the rest; under backfill, the first
        ``rules.backfill_plans`` such jobs are planned and later jobs may not delay them. Whether it was
        planned."""
        if self.head_of_line:
            self._blocked_by = job.id
        if not self._may_plan():
            return False
        self._planned_jobs += 1
        if self.head is None:
            self.head = job
        if self._timeline is None and self._unmade is None and self._surely_fits_later(job):
            self._unmade = (job, len(self._started_jobs))
            self._say_planned(job)
            return True
        self._settle()
        if self._timeline is None:
            self._timeline = Timeline(self.snapshot, self._started_jobs)
        slot = self._timeline.earliest(job)
        if slot is None:
            return True
        self._plan(job, slot)
        self._say_planned(job)
        return True

    def _surely_fits_later(self, job: Job) -> bool:
        """Whether the plan is sure to find ``job`` a slot, so that working it out may wait: with no
        reservation to keep clear of, a job of one node fits once the GPUs of its largest node have
        come free, and a job of whole nodes (``multi_node``) once every whole node has. The plan is
        then made only when a later job fits the free GPUs (whether it may take them depends on when
        the plan starts) or its start is read (``decisions``); in most passes of a full cluster
        neither happens, and building the timeline is most of a pass."""
        count, layout = job.gpu_count, self._layout
        return not self._reservations and (
            count <= layout.largest_usable_node or (self.snapshot.multi_node and count <= layout.whole_gpus))

    def _settle(self) -> None:
        """Make the deferred plan, on the timeline as it was when the job was planned: the running jobs
        and those started before it; the jobs started since then occupy their GPUs after it, in turn,
        as they would have had the plan been made at once."""
        if self._unmade is None:
            return
        job, started_before = self._unmade
        self._unmade = None
        self._timeline = Timeline(self.snapshot, self._started_jobs[:started_before])
        slot = self._timeline.earliest(job)
        assert slot is not None, "a deferred plan always finds a slot"
        self._plan(job, slot)
        end_of = self._rules.runtime
        for started, gpus in self._started_jobs[started_before:]:
            self._timeline.occupy(gpus, self.snapshot.now + end_of(started))

    def _plan(self, job: Job, slot: Slot) -> None:
        """Book ``slot`` for ``job`` and close its GPUs to later jobs that would run into it."""
        assert self._timeline is not None
        self._timeline.book(slot)
        self._refused_behind_plans.clear()  # the first ``before`` plans are others now
        self._up_to_plans.clear()
        self._behind_waits.clear()
        # A job that has waited ``rules.starve_after_s`` drains its planned GPUs: no job may start on
        # them, however short its estimate. Its plan rests on the expected ends of running jobs, and
        # those of jobs that overran their estimates (or were let start before it, and will) slide
        # later every pass, so the plan may never come while short jobs keep taking the GPUs.
        starving = self._rules.starve_after_s is not None and (
            self.snapshot.now - job.submit_time >= self._rules.starve_after_s)
        closes_from = self.snapshot.now if starving else slot.start
        at = bisect_left(self._plan_starts, closes_from)
        self._plans.insert(at, (slot.start, job, slot.gpus))
        self._plan_starts.insert(at, closes_from)
        closed: dict[str, frozenset[int]] = dict(self._closed_before[at - 1]) if at else {}
        self._closed_before[at:] = []
        for _, _, gpus in self._plans[at:]:
            for node, gpu in gpus:
                closed[node] = closed.get(node, frozenset()) | {gpu}
            self._closed_before.append(dict(closed))

    def _say_planned(self, job: Job) -> None:
        wait = self.waiting[job.id]
        # No time here: the estimate is shown beside the reason, and a reason that changed each pass
        # would be rewritten each pass.
        where = "first in line" if job is self.head else "planned"
        self.waiting[job.id] = Wait(wait.reason, f"{wait.message}; {where}, GPUs are held back for it")

    def _made_room_wait(self, job: Job) -> Wait | None:
        """A job stopped to make room waits while the job it was stopped for (offered first) still
        waits for GPUs; not once that job has started, or waits for something room cannot give."""
        if job.preempted_for is None:
            return None
        message = f"was preempted for job {job.preempted_for}; starts again once that job has started"
        if job.preempted_for in self._offering_first:  # a cycle of victims: decided once that job is
            self._deferred.setdefault(job.preempted_for, []).append((job.id, len(self.starts)))
            return Wait(PendingReason.PRIORITY, message)
        if not self._waits_for_gpus(job.preempted_for):
            return None
        return Wait(PendingReason.PRIORITY, message)

    def _dependency_wait(self, job: Job) -> Wait | None:
        if not job.after and not job.after_any:
            return None
        return dependency_wait(job, self._status_of)

    def _status_of(self, job_id: int) -> JobStatus | None:
        active = self.snapshot.jobs_by_id.get(job_id)
        return active.status if active is not None else self.snapshot.ended.get(job_id)

    def _reservations_against(self, job: Job, end: float) -> tuple[Reservation, ...]:
        """The reservations ``job`` is not admitted to whose window overlaps its run."""
        if not self._reservations:
            return ()
        return reservations_against(self._reservations, job.user, self._rules.group_of(job.user), self.snapshot.now, end,
                                    preemptible=job.preemptible)

    def _own_reserved(self, job: Job) -> dict[str, frozenset[int]]:
        """Per node, the free GPUs of the open reservations that admit ``job``'s user or group."""
        if not self._reservations:
            return {}
        mine = reserved_for(self._reservations, job.user, self._rules.group_of(job.user), self.snapshot.now)
        return {node: free for node, gpus in mine.items() if (free := gpus & frozenset(self._free_on(node)))}

    def _all_but(self, open_: Closed) -> dict[str, frozenset[int]]:
        """Every usable GPU closed but ``open_``."""
        return {node: frozenset(gpus) - open_.get(node, frozenset()) for node, gpus in self._layout.usable.items()}

    def _closed_by(self, keeping: tuple[Reservation, ...]) -> dict[str, frozenset[int]]:
        closed: dict[str, frozenset[int]] = {}
        for r in keeping:
            closed[r.node] = closed.get(r.node, frozenset()) | frozenset(r.gpus)
        return closed

    def _fits_around(self, job: Job, keeping: tuple[Reservation, ...], closed: Closed) -> bool:
        """Whether ``job`` fits on GPUs outside ``keeping``. Free GPUs only shrink during a pass, so
        once a size does not fit around a set of reservations, no larger or equal one will: many
        waiting jobs kept out by the same reservations cost one try."""
        key = frozenset(r.id for r in keeping)
        smallest_refused = self._refused_around.get(key)
        if smallest_refused is not None and job.gpu_count >= smallest_refused:
            return False
        if self._place(job, closed, dry_run=True):
            return True
        self._refused_around[key] = job.gpu_count
        return False

    def _reserved_message(self, keeping: tuple[Reservation, ...]) -> str:
        r = min(keeping, key=lambda r: r.start)
        message = self._messages.get(r.id)
        if message is None:
            message = self._messages[r.id] = (
                f"the free GPUs that would fit it are reserved for {r.holder()} from {local_time(r.start)} "
                f"to {local_time(r.end)} (reservation {r.id}), and it would still run then")
        return message

    def _place(self, job: Job, closed: Closed, *, dry_run: bool = False) -> bool:
        """Take GPUs for ``job`` on the best node that fits it without ``closed`` GPUs."""
        count = job.gpu_count
        if count > self._layout.largest_usable_node:
            nodes = self._whole_nodes(count, closed)
            if nodes is None:
                return False
            if not dry_run:
                self._take_whole(job, nodes)
            return True
        node = self._best_fit(count, closed) if count <= self._free_total else None
        if node is None:
            return False
        if not dry_run:
            gpus = self._take_from(node, count, closed.get(node, frozenset()))
            self._started(job, Allocation(node=node, gpus=gpus))
        return True

    def _best_fit(self, count: int, closed: Closed) -> str | None:
        """The node with the fewest open GPUs that still holds ``count``, first in node order."""
        order = self._layout.order.__getitem__
        best: tuple[int, int, str] | None = None
        for name, shut in closed.items():  # few: the nodes of reservations and of the backfill plan
            if self._counts().get(name, 0) < count:
                continue
            open_ = sum(1 for g in self._free_on(name) if g not in shut)
            if open_ >= count and (best is None or (open_, order(name)) < best[:2]):
                best = (open_, order(name), name)
        by_free = self._buckets()
        for free_count in range(count, len(by_free)):
            bucket = by_free[free_count] - closed.keys() if closed else by_free[free_count]
            if bucket:
                name = min(bucket, key=order)
                if best is None or (free_count, order(name)) < best[:2]:
                    best = (free_count, order(name), name)
                break
        return best[2] if best is not None else None

    def _whole_nodes(self, count: int, closed: Closed) -> list[str] | None:
        whole, gpus = self._whole_free()
        if closed:
            whole = whole - closed.keys()
        size, order = self._layout.size, self._layout.order
        nodes, total = [], 0
        for node in sorted(whole, key=lambda n: (-size[n], order[n])):
            nodes.append(node)
            total += size[node]
            if total >= count:
                return nodes
        return None

    def _take_whole(self, job: Job, nodes: list[str]) -> None:
        size, count, parts = self._layout.size, job.gpu_count, []
        for node in nodes:
            parts.append((node, self._take_from(node, min(count, size[node]), frozenset())))
            count -= len(parts[-1][1])
        (node, gpus), *more = parts
        self._started(job, Allocation(node=node, gpus=gpus, more=tuple(more)))

    def _started(self, job: Job, allocation: Allocation) -> None:
        self._up_to_plans.clear()  # fewer free GPUs, more of the user's quota in use
        proposal = Proposal.on(job.id, allocation)
        self.starts.append(proposal)
        self._started_jobs.append((job, proposal.gpus))
        if self._timeline is not None:
            self._timeline.occupy(proposal.gpus, self.snapshot.now + self._rules.runtime(job))
        if job.array_id is not None:
            self._array_use[job.array_id] = self._array_use.get(job.array_id, 0) + 1
        if has_quotas(self._rules):  # (the GPUs in use are read only against quotas)
            self._user_use[job.user] = self._user_use.get(job.user, 0) + job.gpu_count
            group = self._rules.group_of(job.user)
            if group is not None:
                self._group_use[group] = self._group_use.get(group, 0) + job.gpu_count

    def offer_groups(self, groups: Mapping[int, Entries]) -> None:
        """Offer waiting jobs in the order of their entries, merged across groups (one per GPU count).

        A size that no longer fits is left after its first job; the pass ends when ``done``. Sizes
        that can never fit are read through, so each such job says so.
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
        offer_in_order(self, heap)

    def decisions(self) -> Decisions:
        """What this pass decided, with the preemptions that make room for jobs that must wait."""
        started = frozenset(p.job_id for p in self.starts)
        planned = _Planned(self) if self._unmade is not None else self._planned()
        return Decisions(
            starts=tuple(self.starts),
            waiting=Reasons(self.snapshot, self.waiting, started),
            preemptions=choose_preemptions(self.snapshot, self.waiting, self._free_on, started),
            planned=planned,
        )

    def _planned(self) -> dict[int, float]:
        self._settle()
        return {job.id: start for start, job, _ in self._plans}

    def _missing(self, count: int) -> str:
        missing = self._missing_free(count)
        if self._layout.foreign:  # rare: said only while someone uses a GPU outside gpuherd
            held = self.snapshot.holders
            outside = [f for f in self._layout.foreign if (f[0], f[1]) not in held]
            if outside:
                missing += f"; {describe_foreign(outside)}, so it takes no job until it is free"
        return missing

    def _missing_free(self, count: int) -> str:
        if count > self._layout.largest_usable_node:
            whole, gpus = self._whole_free()
            return f"needs {count} GPUs on whole free nodes; {len(whole)} whole node(s) with {gpus} GPUs are free"
        if self._by_free:
            most = next((c for c in range(len(self._by_free) - 1, 0, -1) if self._by_free[c]), 0)
        else:
            if self._most_free is None:
                self._most_free = max(self._counts().values(), default=0)
            most = self._most_free
        return f"needs {count} free GPU(s) on one node; the most free on any node is {most}"

    def _take_from(self, node: str, count: int, shut: frozenset[int]) -> tuple[int, ...]:
        by_free = self._buckets()
        if self._count is None:
            self._count = dict(self.snapshot.free_count)
        counts = self._count
        free = self._free_on(node)
        by_free[len(free)] = by_free[len(free)] - {node}
        taken = [g for g in free if g not in shut][:count]
        self._free[node] = [g for g in free if g not in taken]
        counts[node] = len(free) - count
        if counts[node]:
            by_free[counts[node]] = by_free[counts[node]] | {node}
        self._free_total -= count
        if self._whole is not None and node in self._whole:
            self._whole.discard(node)
            self._whole_gpus -= self._layout.size[node]
        return tuple(taken)


class _Planned(Mapping[int, float]):
    """A pass's planned starts (job id -> start), worked out when first read: the orchestrator keeps
    them for the queue's views, which most passes never show. Read from any thread."""

    def __init__(self, placer: Placer) -> None:
        self._placer: Placer | None = placer
        self._starts: dict[int, float] = {}
        self._lock = threading.Lock()

    def _read(self) -> dict[int, float]:
        with self._lock:
            if self._placer is not None:
                self._starts, self._placer = self._placer._planned(), None
            return self._starts

    def __getitem__(self, job_id: int) -> float:
        return self._read()[job_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return repr(self._read())


def offer_in_order(placer: Placer, heap: list, *, per_user: bool = False) -> None:
    """Offer jobs from a heap of ``(entry, size, rest of the entries)`` streams in entry order,
    dropping a stream once its size no longer fits (or, for streams of one user's jobs of one size,
    once that user's jobs of that size cannot start) and stopping when the placer is done."""
    job_of, offer = placer.snapshot.jobs_by_id.__getitem__, placer.offer
    size_full, user_full = Offer.SIZE_FULL, (Offer.USER_FULL if per_user else Offer.SIZE_FULL)
    pop, replace = heapq.heappop, heapq.heapreplace  # the loop runs for every job offered: names bound once
    while heap and not placer.done:
        (_, job_id), gpus, it = heap[0]
        outcome = offer(job_of(job_id))
        if outcome is size_full or outcome is user_full:
            pop(heap)
            continue
        after = next(it, None)
        if after is None:
            pop(heap)
        else:
            replace(heap, (after, gpus, it))


def _minus(a: Closed, b: Closed) -> dict[str, frozenset[int]]:
    return {node: left for node, gpus in a.items() if (left := gpus - b.get(node, frozenset()))}


def _union(a: Closed, b: Closed) -> dict[str, frozenset[int]]:
    out = dict(a)
    for node, gpus in b.items():
        out[node] = out.get(node, frozenset()) | gpus
    return out
