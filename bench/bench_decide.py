"""Benchmark of one scheduling decision at scale: 10,000 waiting jobs on 128 nodes x 8 GPUs.

    .venv/bin/python bench/bench_decide.py [--quick] [--json figures.json] [--profile c/priority]

The state is built through the real core, as the service builds it (``agent.build.build_core``), on a
``MemoryStore``, a simulated clock and executor and a declared inventory: every GPU is first taken by
running jobs of 1 to 8 GPUs with varied expected ends (those of priority 3 or less preemptible), then
10,000 jobs are submitted one simulated second apart (1, 2, 4 or 8 GPUs, mostly small; 30 users, a few
of them heavy; priorities 1-10, mostly 5; most with an estimate, some also with a time limit, some with
neither). Three scenarios, each built from the same seed:

  a. the cluster is full: no GPU is free;
  b. 20 GPUs are free, scattered over 16 nodes (1-GPU and 2-GPU jobs ended there);
  c. 48 GPUs are free: 40 on 5 nodes reserved from now on for a user with no waiting job, 8 on one
     open node. The first waiting jobs take the open node; then every free GPU is closed to the rest
     (reserved, or planned for the backfill head), so backfill reads ``rules.backfill_depth`` jobs
     past its head, and the policies without backfill read the whole queue.

On each scenario every policy decides on the same state, in turns (one repetition of each policy, then
the next), so that load from others on a shared machine spreads over all of them. Each repetition
takes a fresh ``orch.snapshot()`` (timed apart) and then ``policy.decide``; separately, the queue view
``estimate_starts(snapshot, policy.order(snapshot))``. Medians and 95th percentiles, in milliseconds.
The cyclic garbage collector stays on, as in the service.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import statistics
import time
from pathlib import Path

from agent.build import build_core
from agent.settings import Settings
from policies.ordering import POLICIES
from policies.plan import estimate_starts
from tools.clock import SimClock
from tools.inventory import NodeDeclaration
from tools.models import JobSpec, Reservation
from tools.nvml import UnavailableProbe
from tools.orchestrator import Orchestrator
from tools.sim_executor import SimExecutor
from tools.store import MemoryStore

NODES, GPUS_PER_NODE, WAITING = 128, 8, 10_000
USERS = [f"user{i:02d}" for i in range(30)]
USER_WEIGHTS = [1 / (i + 1) for i in range(len(USERS))]  # a few heavy users, a long tail
PRIORITY_WEIGHTS = [2, 3, 5, 8, 40, 12, 10, 8, 7, 5]  # for priorities 1..10: mostly the default 5
AIM_MS = 50.0
HOUR = 3600.0
SCENARIOS = {
    "a": "cluster full, no GPU free",
    "b": "20 GPUs free, scattered over 16 nodes",
    "c": "48 GPUs free: 40 reserved for a user with no waiting job, 8 on one open node",
}


def running_spec(rng: random.Random, gpus: int) -> JobSpec:
    """A job that will hold GPUs: it ends 3.5 to 48 h after it starts, or, without an estimate (one in
    ten), is expected to end any moment (the default run time is 1 h and it started ~3 h ago)."""
    priority = rng.choices(range(1, 11), PRIORITY_WEIGHTS)[0]
    runtime = rng.uniform(3.5 * HOUR, 48 * HOUR)
    kind = rng.random()
    return JobSpec(
        user=rng.choices(USERS, USER_WEIGHTS)[0], command="train", gpu_count=gpus, priority=priority,
        est_duration_s=runtime if 0.1 <= kind < 0.6 else None,
        time_limit_s=runtime if kind >= 0.6 else None,
        preemptible=priority <= 3,
    )


def waiting_spec(rng: random.Random) -> JobSpec:
    runtime = min(max(rng.lognormvariate(7.9, 1.2), 600.0), 48 * HOUR)  # median ~45 min, 10 min to 48 h
    kind = rng.random()
    return JobSpec(
        user=rng.choices(USERS, USER_WEIGHTS)[0], command="train",
        gpu_count=rng.choices((1, 2, 4, 8), (55, 25, 13, 7))[0],
        priority=rng.choices(range(1, 11), PRIORITY_WEIGHTS)[0],
        est_duration_s=runtime if kind >= 0.15 else None,
        time_limit_s=runtime * 1.5 if kind >= 0.7 else None,
    )


def build(scenario: str, seed: int) -> Orchestrator:
    rng = random.Random(seed)
    core = build_core(
        Settings.plain(policy="priority", max_queue_size=WAITING + NODES * GPUS_PER_NODE),
        clock=SimClock(), store=MemoryStore(keep_events=False), executor=SimExecutor(),
        probe=UnavailableProbe("the benchmark declares its nodes"),
        nodes=[NodeDeclaration(name=f"n{i:03d}", gpus=GPUS_PER_NODE) for i in range(NODES)],
    )
    orch, clock = core.orchestrator, core.clock
    # Fill: split each node into jobs of 8, 4, 2 and 1 GPUs, then start them largest first, which
    # packs them exactly (free counts stay multiples of the size being placed).
    sizes = []
    for _ in range(NODES):
        left = GPUS_PER_NODE
        while left:
            sizes.append(rng.choice([s for s in (1, 2, 4, 8) if s <= left]))
            left -= sizes[-1]
    for size in (8, 4, 2, 1):
        for _ in range(sizes.count(size)):
            orch.submit(running_spec(rng, size))
        orch.tick()
    for _ in range(WAITING):
        clock.advance(1.0)
        orch.submit(waiting_spec(rng))
    holding = orch.queue.index.view().holding
    assert len(holding) == len(sizes) and orch.queue.index.queued_count == WAITING
    if scenario == "b":
        by_size: dict[int, dict[str, int]] = {1: {}, 2: {}}  # size -> node -> a job of that size there
        for job in holding:
            if job.gpu_count in by_size:
                by_size[job.gpu_count].setdefault(job.allocation.node, job.id)
        ones = rng.sample(sorted(by_size[1]), 12)
        twos = rng.sample(sorted(by_size[2].keys() - set(ones)), 4)
        for job_id in [by_size[1][n] for n in ones] + [by_size[2][n] for n in twos]:
            orch.complete(job_id)
    if scenario == "c":
        nodes = rng.sample([f"n{i:03d}" for i in range(NODES)], 6)
        for job in holding:
            if job.allocation.node in nodes:
                orch.complete(job.id)
        for node in nodes[:5]:
            orch.reserve(Reservation(node=node, gpus=tuple(range(GPUS_PER_NODE)), user="ops",
                                     start=clock.now(), end=clock.now() + 4 * HOUR, note="maintenance"))
    return orch


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"median": statistics.median(ms), "p95": percentile(ms, 95)}


def decide_once(orch: Orchestrator, name: str) -> dict[str, float]:
    orch.policy = policy = POLICIES[name]
    t0 = time.perf_counter()
    snapshot = orch.snapshot()
    t1 = time.perf_counter()
    policy.decide(snapshot)
    t2 = time.perf_counter()
    return {"snapshot": (t1 - t0) * 1000, "decide": (t2 - t1) * 1000, "total": (t2 - t0) * 1000}


def queue_view_once(orch: Orchestrator, name: str) -> dict[str, float]:
    """What ``GET /queue`` would compute: the policy's order, then the planned start of the first 500."""
    orch.policy = policy = POLICIES[name]
    snapshot = orch.snapshot()
    t0 = time.perf_counter()
    order = policy.order(snapshot)
    t1 = time.perf_counter()
    estimate_starts(snapshot, order)
    t2 = time.perf_counter()
    return {"order": (t1 - t0) * 1000, "total": (t2 - t0) * 1000}


def interleaved(names: list[str], once, budget_s: float, least: int, most: int) -> dict[str, dict]:
    """``once(name)`` for each policy in turns. The first round sets each policy's repetitions: as
    many as fit ``budget_s``, from ``least`` to ``most`` (a decision of 1 s needs fewer than one of 10 ms)."""
    runs = {name: [once(name)] for name in names}
    reps = {name: max(least, min(most, int(budget_s * 1000 / runs[name][0]["total"]))) for name in names}
    for i in range(1, max(reps.values())):
        for name in names:
            if i < reps[name]:
                runs[name].append(once(name))
    return {name: {"runs": len(r), **{key: summary([x[key] for x in r]) for key in r[0]}} for name, r in runs.items()}


def bench_scenario(orch: Orchestrator, names: list[str], quick: bool) -> tuple[dict, dict]:
    read = {}
    for name in names:  # warm-up: the first snapshot for a policy has the queue index build its order
        orch.policy = POLICIES[name]
        decisions = orch.policy.decide(orch.snapshot())
        read[name] = {"started": len(decisions.starts), "read": len(decisions.starts) + len(decisions.waiting.examined)}
    budget_s, least, most = (0.5, 2, 5) if quick else (2.5, 5, 60)
    decide = interleaved(names, lambda name: decide_once(orch, name), budget_s, least, most)
    budget_s, least, most = (1.0, 1, 2) if quick else (3.0, 3, 10)
    view = interleaved(names, lambda name: queue_view_once(orch, name), budget_s, least, most)
    return {name: read[name] | decide[name] for name in names}, view


def verdict(figure: dict[str, float]) -> str:
    if figure["p95"] < AIM_MS:
        return "yes"
    return "median only" if figure["median"] < AIM_MS else "**no**"


def decide_table(results: dict[str, dict[str, dict]]) -> str:
    rows = ["| scenario | policy | started | jobs read | runs | snapshot ms | decide ms, median (p95) | x priority "
            "| snapshot + decide ms, median (p95) | under 50 ms |", "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for scenario, by_policy in results.items():
        base = by_policy["priority"]["decide"]["median"] if "priority" in by_policy else None
        for name, r in by_policy.items():
            d, t = r["decide"], r["total"]
            ratio = f"{d['median'] / base:.3g}" if base else ""
            rows.append(f"| {scenario} | {name} | {r['started']} | {r['read']} | {r['runs']} "
                        f"| {r['snapshot']['median']:.2f} | {d['median']:.1f} ({d['p95']:.1f}) | {ratio} "
                        f"| {t['median']:.1f} ({t['p95']:.1f}) | {verdict(t)} |")
    return "\n".join(rows)


def queue_table(results: dict[str, dict[str, dict]]) -> str:
    rows = ["| scenario | policy | runs | order ms | order + estimate_starts ms, median (p95) | x priority "
            "| under 50 ms |", "|---|---|--:|--:|--:|--:|---|"]
    for scenario, by_policy in results.items():
        base = by_policy["priority"]["total"]["median"] if "priority" in by_policy else None
        for name, r in by_policy.items():
            t = r["total"]
            ratio = f"{t['median'] / base:.3g}" if base else ""
            rows.append(f"| {scenario} | {name} | {r['runs']} | {r['order']['median']:.1f} "
                        f"| {t['median']:.0f} ({t['p95']:.0f}) | {ratio} | {verdict(t)} |")
    return "\n".join(rows)


def profile(orch: Orchestrator, name: str) -> None:
    policy = orch.policy = POLICIES[name]
    policy.decide(orch.snapshot())
    profiler = cProfile.Profile()
    for _ in range(3):
        profiler.runcall(policy.decide, orch.snapshot())
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="which scenarios, comma-separated")
    parser.add_argument("--policies", default=",".join(POLICIES), help="which policies, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--profile", metavar="SCENARIO/POLICY", help="instead, cProfile three decisions of one policy")
    args = parser.parse_args()
    print(f"gpuherd decision benchmark on {platform.node()}: {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {NODES} nodes x {GPUS_PER_NODE} GPUs, {WAITING} waiting jobs",
          flush=True)
    if args.profile:
        scenario, name = args.profile.split("/")
        profile(build(scenario, args.seed), name)
        return
    names = args.policies.split(",")
    decide: dict[str, dict] = {}
    view: dict[str, dict] = {}
    for scenario in args.scenarios.split(","):
        t = time.perf_counter()
        orch = build(scenario, args.seed)
        print(f"scenario {scenario} ({SCENARIOS[scenario]}): built in {time.perf_counter() - t:.1f} s", flush=True)
        decide[scenario], view[scenario] = bench_scenario(orch, names, args.quick)
    print("\nOne decision (ms; x priority: ratio of decide medians; under 50 ms: snapshot + decide, "
          "\"yes\" if its p95 is):\n")
    print(decide_table(decide))
    print("\nThe queue view of GET /queue (ms):\n")
    print(queue_table(view))
    if args.json:
        args.json.write_text(json.dumps({"decide": decide, "queue_view": view}, indent=2))


if __name__ == "__main__":
    main()
