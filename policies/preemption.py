"""Preemption: which running jobs to stop, and requeue, so that others may run.

Two causes, both decided from the snapshot after a placement pass:
- a reservation's window has begun and a job it does not admit still runs on its GPUs (its run time
  was underestimated): it is stopped, whether preemptible or not, since the GPUs were promised;
- a job waits for GPUs and preemptible jobs at least ``rules.preempt_priority_gap`` below it in
  priority, each running for at least ``rules.preempt_min_runtime_s``, hold enough GPUs on one node:
  the fewest of them are stopped, then the lowest in priority, then those freeing the fewest GPUs
  beyond the need.
Jobs already being preempted count as coming free, so a waiting job never makes more victims than it
needs while its first ones take their grace period to checkpoint.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Iterable, Mapping, MutableMapping

from tools.models import Job, JobStatus, PendingReason, StopReason
from tools.timespec import local_time

from policies.admission import reservations_against
from policies.snapshot import Preemption, Snapshot, Wait

MAX_WAITING_EXAMINED = 16  # waiting jobs considered per pass; each costs a search over the running ones


def choose_preemptions(snapshot: Snapshot, waiting: MutableMapping[int, Wait],
                       free_on: Callable[[str], Iterable[int]], started: frozenset[int]) -> tuple[Preemption, ...]:
    """``free_on(node)``: the GPUs of ``node`` still free after this pass's starts."""
    out = list(_reservation_preemptions(snapshot)) if snapshot.reservations else []
    gap = snapshot.rules.preempt_priority_gap
    if gap is None:
        return tuple(out)
    if not snapshot.preemption_relevant:  # (most passes): no victim, nothing being stopped, so the
        return tuple(out)  # waiting jobs need not be read (a backfill pass gives hundreds a reason)
    jobs = snapshot.jobs_by_id
    needy = [jobs[i] for i, w in waiting.items() if w.reason == PendingReason.RESOURCES and i not in started]
    if not needy:  # (most passes): the running jobs are not read
        return tuple(out)
    taken = {p.job_id for p in out}
    victims = _candidates(snapshot, taken)
    stopping: dict[str, set[int]] = {}  # node -> GPUs of jobs already being preempted
    for job in snapshot.preemption_relevant:
        if job.stop_reason == StopReason.PREEMPT and job.allocation is not None and not job.allocation.more:
            stopping.setdefault(job.allocation.node, set()).update(job.allocation.gpus)
    if not victims and not stopping:
        return tuple(out)
    claimed: dict[str, set[int]] = {}  # GPUs promised to an earlier waiting job of this pass
    for job in needy[:MAX_WAITING_EXAMINED]:
        if job.gpu_count > snapshot.layout.largest_usable_node:
            continue  # multi-node jobs wait for whole nodes to free themselves
        room = _Room(snapshot, job, free_on, claimed)
        covered = next((n for n, gpus in stopping.items() if len(room.usable(n, room.free(n) | gpus)) >= job.gpu_count),
                       None)
        if covered is not None:
            room.claim(covered, room.free(covered) | stopping[covered])
            _note(waiting, job, f"jobs being preempted on {covered} will make room")
            continue
        eligible = [v for v in victims if v.priority <= job.priority - gap]
        choice = _cheapest(job, eligible, room, stopping, snapshot)
        if choice is None:
            continue
        node, chosen = choice
        room.claim(node, room.free(node) | stopping.get(node, set()) | {g for v in chosen for g in v.allocation.gpus})
        chosen_ids = {v.id for v in chosen}
        victims = [v for v in victims if v.id not in chosen_ids]
        for v in chosen:
            out.append(Preemption(v.id, f"preempted for job {job.id} (priority {job.priority} over "
                                        f"{v.priority})", for_job=job.id))
        _note(waiting, job, "preempting job(s) " + ", ".join(str(v.id) for v in chosen) + " to make room")
    return tuple(out)


class _Room:
    """The GPUs of a node that could serve one waiting job: usable (healthy, not drained), not kept
    from it by a reservation over its run, not promised to an earlier waiting job of this pass."""

    def __init__(self, snapshot: Snapshot, job: Job, free_on: Callable[[str], Iterable[int]],
                 claimed: dict[str, set[int]]) -> None:
        self._usable = snapshot.layout.usable_set
        self._free_on = free_on
        self._claimed = claimed
        end = snapshot.now + snapshot.rules.runtime(job)
        group = snapshot.rules.group_of(job.user)
        self._kept: dict[str, set[int]] = {}
        for r in reservations_against(snapshot.reservations, job.user, group, snapshot.now, end,
                                      preemptible=job.preemptible):
            self._kept.setdefault(r.node, set()).update(r.gpus)

    def free(self, node: str) -> set[int]:
        return set(self._free_on(node))

    def usable(self, node: str, gpus: Iterable[int]) -> set[int]:
        kept = self._kept.get(node, set()) | self._claimed.get(node, set())
        return {g for g in gpus if g in self._usable.get(node, ()) and g not in kept}

    def claim(self, node: str, gpus: set[int]) -> None:
        self._claimed.setdefault(node, set()).update(gpus)


def _reservation_preemptions(snapshot: Snapshot):
    now, group_of = snapshot.now, snapshot.rules.group_of
    begun = [r for r in snapshot.reservations if r.start <= now < r.end]
    if not begun:
        return
    jobs, holders = snapshot.jobs_by_id, snapshot.holders
    seen: set[int] = set()
    for r in begun:
        for gpu in r.gpus:
            holder = holders.get((r.node, gpu))
            job = jobs.get(holder) if holder is not None else None
            if job is None or holder in seen or job.status != JobStatus.RUNNING or job.stop_reason is not None:
                continue
            if not r.admits(job.user, group_of(job.user)):
                seen.add(job.id)
                yield Preemption(job.id, f"reservation {r.id} for {r.holder()} began at {local_time(r.start)} "
                                         "on its GPUs")


def _candidates(snapshot: Snapshot, taken: set[int]) -> list[Job]:
    now, min_runtime = snapshot.now, snapshot.rules.preempt_min_runtime_s
    return [
        j for j in snapshot.preemption_relevant
        if j.preemptible and j.status == JobStatus.RUNNING and j.stop_reason is None and j.id not in taken
        and j.start_time is not None and now - j.start_time >= min_runtime
        and j.allocation is not None and not j.allocation.more
    ]


def _cheapest(job: Job, eligible: list[Job], room: _Room, stopping: Mapping[str, set[int]],
              snapshot: Snapshot) -> tuple[str, tuple[Job, ...]] | None:
    """The node where the fewest victims make room, then the lowest in priority, then the least
    excess, then the first node. A victim's GPUs count only where they would serve ``job``."""
    by_node: dict[str, list[tuple[Job, int]]] = {}  # node -> (victim, GPUs it would free for job)
    for v in eligible:
        node = v.allocation.node  # type: ignore[union-attr]
        gain = len(room.usable(node, v.allocation.gpus))  # type: ignore[union-attr]
        if gain:
            by_node.setdefault(node, []).append((v, gain))
    needs: dict[str, tuple[int, int]] = {}  # node -> (fewest victims, GPUs needed)
    for node, here in by_node.items():
        need = job.gpu_count - len(room.usable(node, room.free(node) | stopping.get(node, set())))
        fewest = _fewest_count([gain for _, gain in here], need)
        if need > 0 and fewest is not None:
            needs[node] = (fewest, need)
    if not needs:
        return None
    least = min(k for k, _ in needs.values())
    order = snapshot.layout.order
    best = None
    for node, (k, need) in needs.items():
        if k != least:
            continue  # only the nodes needing the fewest victims are searched
        chosen = min((c for c in combinations(by_node[node], k) if sum(gain for _, gain in c) >= need),
                     key=lambda c: (sum(v.priority for v, _ in c), sum(gain for _, gain in c), tuple(v.id for v, _ in c)))
        cost = (sum(v.priority for v, _ in chosen), sum(gain for _, gain in chosen) - need, order[node])
        if best is None or cost < best[0]:
            best = (cost, node, tuple(v for v, _ in chosen))
    return (best[1], best[2]) if best is not None else None


def _fewest_count(gains: list[int], need: int) -> int | None:
    """How many victims at least must stop to free ``need`` GPUs (the largest first); None if all of
    them are not enough."""
    freed = 0
    for k, gain in enumerate(sorted(gains, reverse=True), start=1):
        freed += gain
        if freed >= need:
            return k
    return None


def _note(waiting: MutableMapping[int, Wait], job: Job, what: str) -> None:
    wait = waiting[job.id]
    waiting[job.id] = Wait(wait.reason, f"{wait.message}; {what}")
