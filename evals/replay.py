"""Trace replay: the real orchestrator, policies and validator on a simulated clock and executor.

There is no scheduler here. The loop is a discrete-event simulation: the clock jumps to the next event
(an arrival or the end of a running job), arriving jobs go in through ``Orchestrator.submit``, and the
orchestrator ticks once per distinct event time. What each job did is read back from the store.

A trace job of more GPUs than a node has needs whole free nodes; the orchestrator is built with
``multi_node=True`` for that, which only the simulated executor can honour.
"""

from __future__ import annotations

import gc
import time
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from policies.estimates import DEFAULT_PREDICTOR, Predictor
from policies.ordering import Policy, get_policy, has_pending
from policies.rules import DEFAULT_RULES, Rules
from policies.snapshot import Decisions, Snapshot
from agent.build import build_core
from agent.settings import Settings
from tools.clock import SimClock
from tools.door.context import ToolContext
from tools.door.jobs import queue_job
from tools.inventory import NodeDeclaration
from tools.models import MAX_DURATION_S, Job, JobRequest, JobStatus
from tools.nvml import UnavailableProbe
from tools.sim_executor import SimExecutor
from tools.store import MemoryStore

from evals.metrics import Estimated, Finished
from evals.trace import TraceJob

# The traces carry no priority, so every job gets the default. ``priority`` then means submission
# order where a job that does not fit is passed over by later ones that do (greedy list scheduling),
# while ``fcfs`` lets the first job that does not fit hold up everything behind it.
TRACE_PRIORITY = 5


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def declarations(self) -> list[NodeDeclaration]:
        width = len(str(self.nodes - 1))
        return [NodeDeclaration(name=f"n{i:0{width}d}", gpus=self.gpus_per_node) for i in range(self.nodes)]


class Series:
    """Columns of numbers, one row per tick, in arrays: a replay makes hundreds of thousands of rows,
    and as objects they would only feed the garbage collector."""

    def __init__(self, *names: str) -> None:
        self.columns = {name: array("d") for name in names}

    def __getitem__(self, name: str) -> array:
        return self.columns[name]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))


def timeline_series() -> Series:
    """The cluster right after each tick: time, busy GPUs, waiting jobs."""
    return Series("time", "busy_gpus", "queued")


def cost_series() -> Series:
    """Wall-clock seconds of each tick and of the policy's decision in it, beside the waiting jobs
    the policy saw."""
    return Series("queued", "decide_s", "tick_s")


@dataclass
class Replay:
    policy: str
    cluster: Cluster
    finished: list[Finished]
    skipped: list[TraceJob]  # more GPUs than the whole cluster: they could never run
    timeline: Series = field(repr=False)
    costs: Series = field(repr=False)
    replay_seconds: float = 0.0
    rejected: int = 0  # proposals the validator refused: a deterministic policy should make none
    estimated: list[Estimated] = field(default_factory=list, repr=False)  # each job's estimate, as queued

    @property
    def ticks(self) -> int:
        return len(self.timeline)


Progress = Callable[[int, int, float], None]  # (jobs submitted, jobs in the trace, simulated time)


NOT_ASKED = (0, 0.0)  # ``_Timed.last`` of a pass that did not ask the policy: no job waited


class _Timed:
    """The policy, with the wall-clock time of each decision noted beside the queue length it saw."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.orderings = getattr(policy, "orderings", ())
        self.last: tuple[int, float] = (0, 0.0)

    def order(self, snapshot: Snapshot) -> list[Job]:
        return self.policy.order(snapshot)

    def pending(self) -> bool:
        return has_pending(self.policy)

    def decide(self, snapshot: Snapshot) -> Decisions:
        t = time.perf_counter()
        decisions = self.policy.decide(snapshot)
        self.last = (snapshot.queued_count, time.perf_counter() - t)
        return decisions


def _request(job: TraceJob, estimate: float | None) -> JobRequest:
    return JobRequest(
        name=job.job_id,
        command=f"replay {job.job_id}",
        gpu_count=job.gpus,
        priority=TRACE_PRIORITY,
        # A request wants a positive estimate of at most a year; a job of zero length is estimated at
        # one second, and a noisy estimate past a year (a long job's, 11 to 101 times too long) is a year.
        est_duration_s=min(max(estimate, 1.0), MAX_DURATION_S) if estimate is not None else None,
        max_retries=0,
    )


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """A replay keeps every job it made (the store's record) and many long-lived versions of running
    ones; the cyclic collector re-scans them again and again, for about a fifth of the run, looking
    for cycles that none of them form. Reference counting still frees everything. (``timeit`` turns
    the collector off while it measures for the same reason.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def replay(
    jobs: Sequence[TraceJob],
    *,
    policy: str | Policy,
    cluster: Cluster,
    estimates: Sequence[float | None] | None = None,
    progress: Progress | None = None,
    rules: Rules = DEFAULT_RULES,
    predictor: Predictor | None = DEFAULT_PREDICTOR,
) -> Replay:
    """Replay ``jobs`` (in submission order) under ``policy`` (a name, or a policy of one's own) and
    ``rules``; every job runs for its trace duration. A job without an estimate gets one from
    ``predictor`` (the service's), learnt online from the jobs that completed before it was queued;
    None: it keeps none."""
    with _without_cyclic_gc():
        return _replay(jobs, policy=policy, cluster=cluster, estimates=estimates, progress=progress, rules=rules,
                       predictor=predictor)


def _replay(
    jobs: Sequence[TraceJob],
    *,
    policy: str | Policy,
    cluster: Cluster,
    estimates: Sequence[float | None] | None,
    progress: Progress | None,
    rules: Rules,
    predictor: Predictor | None,
) -> Replay:
    wall = time.perf_counter()
    estimates = estimates if estimates is not None else [None] * len(jobs)
    clock = SimClock()
    duration: dict[int, float] = {}  # store job id -> trace duration
    executor = SimExecutor(duration_of=lambda job: duration[job.id])
    timed = _Timed(get_policy(policy) if isinstance(policy, str) else policy)
    core = build_core(
        Settings.plain(max_queue_size=len(jobs) + 1),  # the whole trace may wait at once
        clock=clock, store=MemoryStore(keep_events=False), executor=executor,
        probe=UnavailableProbe("a replay declares its nodes"), nodes=cluster.declarations(),
        policy=timed, rules=rules, multi_node=True, predictor=predictor,
    )
    door, orch, store = ToolContext(core), core.orchestrator, core.store
    gpus_of: dict[int, int] = {}
    skipped: list[TraceJob] = []
    timeline, costs = timeline_series(), cost_series()
    times, busy_gpus, queued = timeline["time"], timeline["busy_gpus"], timeline["queued"]
    seen, decide_s, tick_s = costs["queued"], costs["decide_s"], costs["tick_s"]
    busy = rejected = 0
    i, n = 0, len(jobs)
    perf_counter, tick, next_end = time.perf_counter, orch.tick, executor.next_end
    while True:
        end = next_end()
        if i < n:
            arrival = jobs[i].submit_s
            due = arrival if end is None or arrival < end else end
        elif end is not None:
            due = end
        else:
            break
        now = clock.advance_to(max(clock.now(), due))
        while i < n and jobs[i].submit_s <= now:
            job, estimate = jobs[i], estimates[i]
            i += 1
            if job.gpus > cluster.gpus:
                skipped.append(job)
                continue
            herd = queue_job(door, _request(job, estimate), user=job.tenant)
            duration[herd.id] = job.duration_s
            gpus_of[herd.id] = job.gpus
        timed.last = NOT_ASKED  # (a pass with nothing to decide does not ask the policy)
        t = perf_counter()
        report = tick()
        took = perf_counter() - t
        for j in report.started:
            busy += gpus_of[j]
        for j in report.finished:
            busy -= gpus_of[j]
        rejected += len(report.rejected)
        times.append(now)
        busy_gpus.append(busy)
        queued.append(report.waiting)
        seen.append(timed.last[0])
        decide_s.append(timed.last[1])
        tick_s.append(took)
        if progress is not None:
            progress(i, n, now)
    finished = store.list_jobs()
    return Replay(
        policy=timed.name,
        cluster=cluster,
        finished=_finished(finished),
        skipped=skipped,
        timeline=timeline,
        costs=costs,
        replay_seconds=time.perf_counter() - wall,
        rejected=rejected,
        estimated=[Estimated(j.est_source.value, j.est_duration_s, duration[j.id]) for j in finished],
    )


def _finished(jobs: list[Job]) -> list[Finished]:
    out = []
    for job in jobs:
        if job.status != JobStatus.COMPLETED or job.start_time is None or job.end_time is None:
            # Every replayed job exits 0 after its duration; anything else is a bug in the core.
            raise RuntimeError(f"job {job.display_name} ended {job.status.value}, not completed")
        out.append(Finished(job.user, job.gpu_count, job.submit_time, job.start_time, job.end_time))
    return out
