"""Metrics of a replay and lower bounds for its trace and cluster: pure functions, no I/O.

A finished job is ``(submit, start, end, gpus)``; wait = start - submit, JCT = end - submit, run =
end - start. Lower bounds (see ``shared/traces/README.md``) are for rigid jobs on C identical GPUs;
no schedule of the same trace on the same cluster can beat them.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

SLOWDOWN_TAU_S = 10.0  # bounded slowdown ignores run times below this, so tiny jobs do not dominate


@dataclass(frozen=True, slots=True)
class Finished:
    tenant: str
    gpus: int
    submit: float
    start: float
    end: float

    @property
    def wait(self) -> float:
        return self.start - self.submit

    @property
    def jct(self) -> float:
        return self.end - self.submit

    @property
    def run(self) -> float:
        return self.end - self.start


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), interpolating linearly between ranks (numpy's default)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bounded_slowdown(wait: float, run: float, tau: float = SLOWDOWN_TAU_S) -> float:
    """(wait + run) / max(run, tau), at least 1 (Feitelson's bounded slowdown)."""
    return max(1.0, (wait + run) / max(run, tau))


def jain(values: Iterable[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one has everything."""
    xs = list(values)
    squares = math.fsum(x * x for x in xs)
    return math.fsum(xs) ** 2 / (len(xs) * squares) if squares > 0 else 1.0


def max_min_shares(demands: dict[str, int], capacity: int) -> dict[str, float]:
    """Water-filling: each user gets an equal part of ``capacity``, no more than it asks for; what a
    user does not need is split among the others."""
    shares: dict[str, float] = {}
    left, users = float(capacity), sorted(demands, key=demands.__getitem__)
    for i, user in enumerate(users):
        shares[user] = min(float(demands[user]), left / (len(users) - i))
        left -= shares[user]
    return shares


def share_fairness(jobs: Sequence[Finished], capacity: int) -> float:
    """Jain's index over users of the GPU-time each received while users competed, relative to the
    GPU-time its max-min fair share entitled it to (``share_by_tenant``). 1 when every user got what
    it was entitled to over the trace (also when users never competed)."""
    return jain(received / entitled for received, entitled in share_by_tenant(jobs, capacity).values())


def share_by_tenant(jobs: Sequence[Finished], capacity: int) -> dict[str, tuple[float, float]]:
    """Per user entitled to anything: (GPU-seconds received, GPU-seconds entitled) while users
    competed. Competing: a job waits and two or more users have jobs in the system; entitlement: at
    each such moment, the user's water-filling share of the GPUs given what its jobs ask for."""
    events: list[tuple[float, str, int, int]] = []  # (time, user, change in demand, change in held)
    for j in jobs:
        events += [(j.submit, j.tenant, j.gpus, 0), (j.start, j.tenant, 0, j.gpus), (j.end, j.tenant, -j.gpus, -j.gpus)]
    events.sort(key=lambda e: e[0])
    demand: dict[str, int] = {}
    held: dict[str, int] = {}
    received: dict[str, float] = {}
    entitled: dict[str, float] = {}
    for i, (t, user, d_demand, d_held) in enumerate(events):
        demand[user] = demand.get(user, 0) + d_demand
        held[user] = held.get(user, 0) + d_held
        if not demand[user]:
            del demand[user]
        dt = events[i + 1][0] - t if i + 1 < len(events) else 0.0
        if dt <= 0 or len(demand) < 2 or sum(demand.values()) == sum(held.get(u, 0) for u in demand):
            continue
        for u, share in max_min_shares(demand, capacity).items():
            entitled[u] = entitled.get(u, 0.0) + share * dt
            received[u] = received.get(u, 0.0) + held.get(u, 0) * dt
    return {u: (received[u], entitled[u]) for u in entitled if entitled[u] > 0}


def summarize(jobs: Sequence[Finished], capacity: int) -> dict[str, float]:
    """The per-policy metrics of the report; ``capacity`` is the cluster's GPU count."""
    waits = [j.wait for j in jobs]
    jcts = [j.jct for j in jobs]
    slowdowns = [bounded_slowdown(j.wait, j.run) for j in jobs]
    first = min((j.submit for j in jobs), default=0.0)
    makespan = max((j.end for j in jobs), default=first) - first
    busy = math.fsum(j.gpus * j.run for j in jobs)
    per_tenant: dict[str, list[float]] = {}
    for j, s in zip(jobs, slowdowns):
        per_tenant.setdefault(j.tenant, []).append(s)
    return {
        "jobs": len(jobs),
        "wait_mean_s": mean(waits),
        "wait_p50_s": percentile(waits, 50),
        "wait_p95_s": percentile(waits, 95),
        "wait_p99_s": percentile(waits, 99),
        "wait_max_s": max(waits, default=0.0),
        "jct_mean_s": mean(jcts),
        "jct_p50_s": percentile(jcts, 50),
        "jct_p95_s": percentile(jcts, 95),
        "jct_p99_s": percentile(jcts, 99),
        "makespan_s": makespan,
        "utilization": busy / (capacity * makespan) if makespan > 0 else 0.0,
        "bounded_slowdown_mean": mean(slowdowns),
        "jain_fairness": jain(mean(s) for s in per_tenant.values()),
        "share_fairness": share_fairness(jobs, capacity),
    }


# -- estimates --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimated:
    """A job's estimate as it was queued with it, where it came from, and how long it really ran."""

    source: str  # "user", "history" or "default" (tools.models.EstimateSource)
    estimate: float | None
    run: float


ERROR_BANDS = (0.1, 0.5, 1.0, 10.0)  # the Helios paper's bands (evals/trace.py NOISE_BANDS)


def relative_error(estimate: float, run: float) -> float:
    """``max(e / r, r / e) - 1``: 1.0 is "off by 100%", twice too long or twice too short (as
    ``evals.trace.noise_factor`` draws it). Runs and estimates under a second count as a second."""
    e, r = max(estimate, 1.0), max(run, 1.0)
    return max(e / r, r / e) - 1.0


def estimate_accuracy(rows: Sequence[Estimated]) -> dict[str, dict[str, float]]:
    """Per source: how many jobs, and for those with an estimate the share within each error band,
    the share that ran longer than estimated (``under``: where a backfill plan goes wrong), and the
    median and mean relative error."""
    by_source: dict[str, list[Estimated]] = {}
    for row in rows:
        by_source.setdefault(row.source, []).append(row)
    out: dict[str, dict[str, float]] = {}
    for source, group in sorted(by_source.items()):
        known = [r for r in group if r.estimate is not None]
        entry: dict[str, float] = {"jobs": len(group)}
        if known:
            errors = [relative_error(r.estimate, r.run) for r in known]  # type: ignore[arg-type]
            for band in ERROR_BANDS:
                entry[f"within_{band * 100:g}pct"] = sum(e <= band for e in errors) / len(errors)
            entry["under"] = sum(r.run > r.estimate for r in known) / len(known)  # type: ignore[operator]
            entry["error_p50"] = percentile(errors, 50)
            entry["error_mean"] = mean(errors)
        out[source] = entry
    return out


# -- lower bounds ----------------------------------------------------------------------------------


def srpt_completions(jobs: Sequence[tuple[float, float]], speed: float) -> list[float]:
    """Completion times, sorted, of ``(release, work)`` jobs on one preemptive machine of ``speed``
    under shortest-remaining-processing-time. SRPT completes at least as many jobs by any time as
    any other schedule of the same work, so its k-th completion is a lower bound on anyone's."""
    done: list[float] = []
    remaining: list[float] = []  # heap of remaining work of released jobs
    now = 0.0
    for release, work in sorted(jobs):
        while remaining and now + remaining[0] / speed <= release:
            now += heapq.heappop(remaining) / speed
            done.append(now)
        if remaining:  # the shortest job runs until this release
            heapq.heapreplace(remaining, remaining[0] - (release - now) * speed)
        now = max(now, release)
        heapq.heappush(remaining, work)
    while remaining:
        now += heapq.heappop(remaining) / speed
        done.append(now)
    return done


@dataclass(frozen=True, slots=True)
class Bounds:
    jct_mean_lb_s: float
    wait_mean_lb_s: float
    makespan_lb_s: float
    utilization_ub: float


def lower_bounds(jobs: Sequence[tuple[float, float, int]], capacity: int) -> Bounds:
    """Bounds for ``(submit, duration, gpus)`` jobs on ``capacity`` GPUs.

    - The k-th smallest completion is at least the k-th smallest ``submit + duration`` (no job runs
      faster than its duration) and at least SRPT's k-th completion with all C GPUs as one fluid
      machine; summing over k bounds the sum of completions, hence mean JCT (and mean wait = mean
      JCT - mean duration).
    - Makespan: the last job cannot end before ``submit + duration``, nor before t + (work submitted
      at or after t) / C for any submission time t.
    - Utilization over the makespan: all work / (C x the makespan bound).
    """
    if not jobs:
        return Bounds(0.0, 0.0, 0.0, 0.0)
    first = min(s for s, _, _ in jobs)
    own = sorted(s + d for s, d, _ in jobs)
    fluid = srpt_completions([(s, d * g) for s, d, g in jobs], float(capacity))
    completions = math.fsum(max(a, b) for a, b in zip(own, fluid))
    n = len(jobs)
    jct_lb = (completions - math.fsum(s for s, _, _ in jobs)) / n
    wait_lb = max(0.0, jct_lb - math.fsum(d for _, d, _ in jobs) / n)
    tail, makespan_end = 0.0, own[-1]
    for s, d, g in sorted(jobs, reverse=True):  # work submitted at or after each s, latest first
        tail += d * g
        makespan_end = max(makespan_end, s + tail / capacity)
    makespan_lb = makespan_end - first
    work = math.fsum(d * g for _, d, g in jobs)
    return Bounds(
        jct_mean_lb_s=jct_lb,
        wait_mean_lb_s=wait_lb,
        makespan_lb_s=makespan_lb,
        utilization_ub=min(1.0, work / (capacity * makespan_lb)) if makespan_lb > 0 else 0.0,
    )
