"""What the dashboard's charts and ``/metrics`` remember: bounded series kept in memory.

An ``Observer`` is part of the core (``Core.observer``). The service feeds it:

- a **sample** every ``metrics_interval_s`` (``tools.door.observe.sample``): GPUs busy, free, drained and
  unhealthy, the queue's length, each measured GPU's utilization; the last ``keep_samples`` of them;
- the **event log**, followed from a cursor a bounded number of events at a time: jobs started and
  finished per hour, each start's wait, GPU-hours per user per hour, for the last ``keep_hours`` hours
  (at start-up it reads back the events of that window, so the charts survive a restart);
- each scheduler **pass**'s duration by phase (``observe_pass``);
- each **GPU's readings** every ``sample_interval_s`` (``tools.door.watch``): as taken for ``full_s``, then
  as means over ``coarse_s`` spans, for ``keep_s`` in all (``GpuSeries``); and what the watch remembers
  between samples: each running job's usage so far, its idle spell, each GPU's ECC count when last judged.

Prometheus' counters and histograms (waits, pass durations, fallbacks) count only what happened while
this server ran: the events read back at start-up fill the charts, not the counters.

Nothing here reads a clock or the store by itself: the caller passes ``now`` and the functions that read.
Every method takes the observer's lock, since the tick thread writes while request threads read.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from policies.watch import IdleSpell
from tools.models import TERMINAL, Event, Job, JobUsage

HOUR_S = 3600.0
# Upper bounds of the histograms' buckets, in seconds (Prometheus adds +Inf).
WAIT_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
PASS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EVENTS_PER_FOLLOW = 5000  # at most this many events are read per sample: a long catch-up spreads out
RECENT_WAITS = 2000  # the last starts' waits, for the chart


class Histogram:
    """Counts of observations per bucket (not cumulative), their sum and count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count), as Prometheus wants them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


@dataclass(frozen=True)
class Sample:
    time: float
    busy: int  # GPUs held by jobs
    free: int
    drained: int
    unhealthy: int
    queued: int  # waiting jobs
    queued_gpus: int  # GPUs they ask for
    utilization: Mapping[str, int]  # "node:index" -> percent, only GPUs measured


@dataclass(frozen=True)
class GpuPoint:
    """One GPU's readings at ``time`` (None: not measured); ``span_s`` > 0: the means over that span."""

    time: float
    utilization_pct: float | None
    memory_used_mib: float | None
    temperature_c: float | None
    power_w: float | None
    span_s: float = 0.0


def _mean(points: list[GpuPoint], start: float, span_s: float) -> GpuPoint:
    def mean(values: list[float | None]) -> float | None:
        measured = [v for v in values if v is not None]
        return round(sum(measured) / len(measured), 1) if measured else None

    return GpuPoint(start, mean([p.utilization_pct for p in points]), mean([p.memory_used_mib for p in points]),
                    mean([p.temperature_c for p in points]), mean([p.power_w for p in points]), span_s)


class GpuSeries:
    """One GPU's readings: as taken for ``full_s``, then as means over ``coarse_s`` spans, ``keep_s`` in all."""

    def __init__(self, full_s: float, coarse_s: float, keep_s: float) -> None:
        self.full_s, self.coarse_s, self.keep_s = full_s, coarse_s, keep_s
        self.fine: deque[GpuPoint] = deque()
        self.coarse: deque[GpuPoint] = deque()
        self._span: list[GpuPoint] = []  # readings older than full_s in the span being filled

    def _span_start(self, t: float) -> float:
        return t // self.coarse_s * self.coarse_s

    def add(self, point: GpuPoint) -> None:
        self.fine.append(point)
        while self.fine and self.fine[0].time < point.time - self.full_s:
            old = self.fine.popleft()
            if self._span and self._span_start(self._span[0].time) != self._span_start(old.time):
                start = self._span_start(self._span[0].time)
                self.coarse.append(_mean(self._span, start, self.coarse_s))
                self._span = []
            self._span.append(old)
        while self.coarse and self.coarse[0].time < point.time - self.keep_s:
            self.coarse.popleft()

    def points(self, since: float | None = None) -> list[GpuPoint]:
        """Oldest first: the means, the span being filled, then the readings as taken."""
        points = list(self.coarse)
        if self._span:
            points.append(_mean(self._span, self._span_start(self._span[0].time), self.coarse_s))
        points += self.fine
        return points if since is None else [p for p in points if p.time + p.span_s >= since]


@dataclass
class HourTally:
    """One hour of the event log."""

    started: int = 0
    finished: Counter[str] = field(default_factory=Counter)  # by final status
    wait_sum_s: float = 0.0
    waits: int = 0
    gpu_s: Counter[str] = field(default_factory=Counter)  # GPU-seconds used per user in this hour


@dataclass(frozen=True)
class Holding:
    """A job holding GPUs since ``since``, as the event log told it."""

    user: str
    gpus: int
    since: float


class Observer:
    def __init__(self, *, keep_samples: int = 720, keep_hours: int = 168, full_s: float = 3600.0,
                 coarse_s: float = 300.0, keep_s: float = 86_400.0) -> None:
        self.keep_hours = keep_hours
        self.series_spans = (full_s, coarse_s, keep_s)
        self.gpus: dict[str, GpuSeries] = {}  # "node:index" -> its readings
        self.job_usage: dict[int, JobUsage] = {}  # running jobs' usage so far (stored at every sample)
        self.idle: dict[int, IdleSpell] = {}  # running jobs whose GPUs are idle now
        self.ecc_seen: dict[str, int] = {}  # GPU UUID -> its uncorrectable ECC count when last judged
        self.lock = threading.Lock()
        self.samples: deque[Sample] = deque(maxlen=keep_samples)
        self.cursor: int | None = None  # the last event read; None until the first follow
        self.live_from = 0  # events after this id happened while this server ran
        self.queued_since: dict[int, float] = {}
        self.holding: dict[int, Holding] = {}
        self.hours: dict[int, HourTally] = {}  # hour (Unix seconds // 3600) -> its tally
        self.waits: deque[tuple[float, float]] = deque(maxlen=RECENT_WAITS)  # (start time, wait s)
        self.wait_histogram = Histogram(WAIT_BUCKETS_S)
        self.pass_histograms: dict[str, Histogram] = {}
        self.passes = 0
        self.fallbacks = 0
        self.started = 0
        self.finished: Counter[str] = Counter()

    # -- feeding -----------------------------------------------------------------------------------
    def add_sample(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)

    def add_gpu_points(self, points: Mapping[str, GpuPoint]) -> None:
        with self.lock:
            for key, point in points.items():
                series = self.gpus.get(key)
                if series is None:
                    series = self.gpus[key] = GpuSeries(*self.series_spans)
                series.add(point)

    def gpu_points(self, key: str, since: float | None = None) -> list[GpuPoint] | None:
        """A GPU's readings, oldest first; None if it was never sampled."""
        with self.lock:
            series = self.gpus.get(key)
            return series.points(since) if series is not None else None

    def observe_pass(self, phases_s: Mapping[str, float], duration_s: float) -> None:
        with self.lock:
            self.passes += 1
            for phase, seconds in (*phases_s.items(), ("total", duration_s)):
                self.pass_histograms.setdefault(phase, Histogram(PASS_BUCKETS_S)).observe(seconds)

    def follow(self, read: Callable[[int, int], list[Event]], job: Callable[[int], Job | None], now: float,
               *, start: Callable[[float], tuple[int, int]], running: Callable[[], Iterable[Job]]) -> int:
        """Read and count the events after the cursor (at most ``EVENTS_PER_FOLLOW``); the number read.

        ``read(after_id, limit)`` gives events in id order; ``job(id)`` a job's record (for its user, GPUs
        and submission time); on the first call ``start(since)`` gives (the id just before the window's
        first event, the latest id) and ``running()`` the jobs holding GPUs now."""
        with self.lock:
            if self.cursor is None:
                window = now - self.keep_hours * HOUR_S
                self.cursor, self.live_from = start(window)
                for j in running():
                    if j.allocation is not None and j.start_time is not None:
                        self.holding[j.id] = Holding(j.user, j.gpu_count, max(j.start_time, window))
            count = 0
            while count < EVENTS_PER_FOLLOW:
                events = read(self.cursor, min(1000, EVENTS_PER_FOLLOW - count))
                for event in events:
                    self._count(event, job)
                    self.cursor = event.id or self.cursor
                count += len(events)
                if len(events) < 1000:
                    break
            self._forget_before(now)
            return count

    def _count(self, event: Event, job_of: Callable[[int], Job | None]) -> None:
        live = (event.id or 0) > self.live_from
        if event.kind == "fallback":
            self.fallbacks += live
            return
        job_id = event.job_id
        if job_id is None:
            return
        tally = self._hour(event.time)
        if event.kind in ("submitted", "queued"):
            self._release(job_id, event.time)  # a requeue ends the attempt's use of its GPUs
            self.queued_since[job_id] = event.time
        elif event.kind == "running":
            job = job_of(job_id)
            since = self.queued_since.pop(job_id, job.submit_time if job is not None else None)
            tally.started += 1
            self.started += live
            if since is not None:
                wait = max(0.0, event.time - since)
                tally.wait_sum_s += wait
                tally.waits += 1
                self.waits.append((event.time, wait))
                if live:
                    self.wait_histogram.observe(wait)
            if job is not None:
                self.holding[job_id] = Holding(job.user, job.gpu_count, event.time)
        elif event.kind in {s.value for s in TERMINAL}:
            tally.finished[event.kind] += 1
            self.finished[event.kind] += live
            self.queued_since.pop(job_id, None)
            self._release(job_id, event.time)

    def _release(self, job_id: int, end: float) -> None:
        held = self.holding.pop(job_id, None)
        if held is not None:
            self._charge(held, end)

    def _charge(self, held: Holding, end: float) -> None:
        """Spread ``held``'s GPU-seconds from its start to ``end`` over the hours they fall in."""
        t = held.since
        while t < end:
            edge = min(end, (t // HOUR_S + 1) * HOUR_S)
            self._hour(t).gpu_s[held.user] += (edge - t) * held.gpus
            t = edge

    def _hour(self, t: float) -> HourTally:
        return self.hours.setdefault(int(t // HOUR_S), HourTally())

    def _forget_before(self, now: float) -> None:
        oldest = int(now // HOUR_S) - self.keep_hours
        for hour in [h for h in self.hours if h < oldest]:
            del self.hours[hour]
        if len(self.queued_since) > 100_000:  # jobs whose start or end was never seen (a gap in the log)
            for job_id in sorted(self.queued_since)[:50_000]:
                del self.queued_since[job_id]

    # -- reading -------------------------------------------------------------------------------------
    def usage_now(self, now: float) -> dict[int, Counter[str]]:
        """The hours' GPU-seconds per user, with the jobs still holding GPUs counted up to ``now``."""
        with self.lock:
            hours = {h: Counter(t.gpu_s) for h, t in self.hours.items()}
            for held in self.holding.values():
                t = held.since
                while t < now:
                    edge = min(now, (t // HOUR_S + 1) * HOUR_S)
                    hours.setdefault(int(t // HOUR_S), Counter())[held.user] += (edge - t) * held.gpus
                    t = edge
            return hours
