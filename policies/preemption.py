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
from typing import Mapping, MutableMapping

from tools.models import Job, JobStatus, PendingReason, StopReason
from tools.queue import local_time

from policies.snapshot import Preemption, Snapshot, Wait

MAX_WAITING_EXAMINED = 16  # waiting jobs considered per pass; each costs a search over the running ones


def choose_preemptions(snapshot: Snapshot, waiting: MutableMapping[int, Wait], free: Mapping[str, int],
                       started: frozenset[int]) -> tuple[Preemption, ...]:
    out = list(_reservation_preemptions(snapshot))
    gap = snapshot.rules.preempt_priority_gap
    if gap is None:
        return tuple(out)
    taken = {p.job_id for p in out}
    victims = _candidates(snapshot, taken)
    stopping: dict[str, int] = {}  # node -> GPUs of jobs already being preempted
    for job in snapshot.holding:
        if job.stop_reason == StopReason.PREEMPT and job.allocation is not None:
            stopping[job.allocation.node] = stopping.get(job.allocation.node, 0) + job.gpu_count
    if not victims and not stopping:
        return tuple(out)
    free = dict(free)
    jobs = snapshot.jobs_by_id
    needy = [jobs[i] for i, w in waiting.items() if w.reason == PendingReason.RESOURCES and i not in started]
    for job in needy[:MAX_WAITING_EXAMINED]:
        if job.gpu_count > snapshot.layout.largest_usable_node:
            continue  # multi-node jobs wait for whole nodes to free themselves
        covered = next((n for n, c in stopping.items() if c and free.get(n, 0) + c >= job.gpu_count), None)
        if covered is not None:
            free[covered] = free.get(covered, 0) + stopping.pop(covered) - job.gpu_count
            _note(waiting, job, "jobs being preempted on " + covered + " will make room")
            continue
        eligible = [v for v in victims if v.priority <= job.priority - gap]
        choice = _cheapest(job, eligible, free, stopping, snapshot)
        if choice is None:
            continue
        node, chosen = choice
        freed = sum(v.gpu_count for v in chosen)
        free[node] = free.get(node, 0) + stopping.pop(node, 0) + freed - job.gpu_count
        chosen_ids = {v.id for v in chosen}
        victims = [v for v in victims if v.id not in chosen_ids]
        for v in chosen:
            out.append(Preemption(v.id, f"preempted for job {job.id} (priority {job.priority} over "
                                        f"{v.priority})", for_job=job.id))
        _note(waiting, job, "preempting job(s) " + ", ".join(str(v.id) for v in chosen) + " to make room")
    return tuple(out)


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
        j for j in snapshot.holding
        if j.preemptible and j.status == JobStatus.RUNNING and j.stop_reason is None and j.id not in taken
        and j.start_time is not None and now - j.start_time >= min_runtime
        and j.allocation is not None and not j.allocation.more
    ]


def _cheapest(job: Job, eligible: list[Job], free: Mapping[str, int], stopping: Mapping[str, int],
              snapshot: Snapshot) -> tuple[str, tuple[Job, ...]] | None:
    """The node where the fewest victims free enough GPUs, then the lowest in priority, then the
    least excess, then the first node."""
    by_node: dict[str, list[Job]] = {}
    for v in eligible:
        by_node.setdefault(v.allocation.node, []).append(v)  # type: ignore[union-attr]
    needs: dict[str, tuple[int, int]] = {}  # node -> (fewest victims, GPUs needed)
    for node, here in by_node.items():
        need = job.gpu_count - free.get(node, 0) - stopping.get(node, 0)
        fewest = _fewest_count(here, need)
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
        chosen = min((c for c in combinations(by_node[node], k) if sum(v.gpu_count for v in c) >= need),
                     key=lambda c: (sum(v.priority for v in c), sum(v.gpu_count for v in c), tuple(v.id for v in c)))
        cost = (sum(v.priority for v in chosen), sum(v.gpu_count for v in chosen) - need, order[node])
        if best is None or cost < best[0]:
            best = (cost, node, chosen)
    return (best[1], best[2]) if best is not None else None


def _fewest_count(jobs: list[Job], need: int) -> int | None:
    """How many of ``jobs`` at least must stop to free ``need`` GPUs (the largest first); None if all
    of them are not enough."""
    freed = 0
    for k, gpus in enumerate(sorted((v.gpu_count for v in jobs), reverse=True), start=1):
        freed += gpus
        if freed >= need:
            return k
    return None


def _note(waiting: MutableMapping[int, Wait], job: Job, what: str) -> None:
    wait = waiting[job.id]
    waiting[job.id] = Wait(wait.reason, f"{wait.message}; {what}")
