"""Benchmark of trace replay: jobs replayed per second of wall time, per policy, against a recorded baseline.

    .venv/bin/python bench/bench_replay.py [--quick] [--policies fcfs,sjf] [--repeat 3]
    .venv/bin/python bench/bench_replay.py --record            # make these figures the baseline
    .venv/bin/python bench/bench_replay.py --tree /tmp/old --tree .   # two checkouts, side by side

Each replay is ``evals.replay.replay`` of the Philly file (all 82,247 jobs, or the first 20,000 with
``--quick``) on 100 nodes x 8 GPUs with noisy estimates (seed 0), the ``herd eval replay`` setting of
docs/evals.md. Every replay runs in a fresh process (the code of ``--tree``, default this checkout), so
that one replay's memory does not slow the next; policies and trees take turns, repetition by
repetition, so that load from others on a shared machine spreads over all of them. "wall s" is the
replay alone (the trace is loaded before the clock starts), "CPU s" the processor time of the same
call (well under "wall s": the machine was busy with others); the table gives medians, and each
policy's ratio of jobs per second (by wall time) to the baseline in ``bench/replay_baseline.json``
(above 1: faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACE = HERE.parents[1] / "shared" / "traces" / "philly_pollux.csv"
BASELINE = HERE / "replay_baseline.json"
POLICIES = ("fcfs", "sjf", "backfill", "multifactor")
QUICK_JOBS = 20_000
NODES, GPUS_PER_NODE = 100, 8


def worker(trace: Path, policy: str, max_jobs: int | None) -> None:
    """One replay, in this process; its figures as one JSON line on stdout, progress on stderr."""
    from evals.replay import Cluster, replay
    from evals.trace import estimates, load_trace

    jobs = load_trace(trace, max_jobs=max_jobs)
    shown = [0.0]

    def progress(done: int, total: int, now: float) -> None:
        t = time.perf_counter()
        if t - shown[0] >= 2.0:
            shown[0] = t
            print(f"\r  {policy}: {done:,}/{total:,} jobs submitted", end="", file=sys.stderr, flush=True)

    cpu = time.process_time()
    run = replay(jobs, policy=policy, cluster=Cluster(NODES, GPUS_PER_NODE),
                 estimates=estimates(jobs, "noisy", seed=0), progress=progress)
    cpu = time.process_time() - cpu
    print("\r\033[K", end="", file=sys.stderr, flush=True)
    print(json.dumps({"jobs": len(jobs), "ticks": run.ticks, "wall_s": run.replay_seconds, "cpu_s": cpu}))


def run_one(tree: Path, trace: Path, policy: str, max_jobs: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", policy, "--trace", str(trace)]
    if max_jobs is not None:
        argv += ["--max-jobs", str(max_jobs)]
    done = subprocess.run(argv, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def commit_of(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip()  # empty for a tree outside git (an exported copy)


def table(results: dict[tuple[str, str], list[dict]], baseline: dict, size: str) -> str:
    rows = ["| tree | policy | jobs | ticks | wall s (median) | runs | CPU s (median) | jobs/s | baseline jobs/s | ratio |",
            "|---|---|--:|--:|--:|---|--:|--:|--:|--:|"]
    for (tree, policy), runs in results.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        rate = runs[0]["jobs"] / wall
        base = baseline.get(size, {}).get(policy, {}).get("jobs_per_s")
        ratio = f"{rate / base:.2f}" if base else "-"
        each = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        rows.append(f"| {tree} | {policy} | {runs[0]['jobs']:,} | {runs[0]['ticks']:,} | {wall:.1f} | {each} | {cpu:.1f} | "
                    f"{rate:,.0f} | {f'{base:,.0f}' if base else '-'} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_JOBS:,} jobs only")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="replays per policy and tree (median reported)")
    parser.add_argument("--tree", type=Path, action="append", help="a checkout whose code to replay (repeatable; "
                        "default this one)")
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--record", action="store_true", help="write this run's figures (first tree) as the baseline")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--worker", metavar="POLICY", help=argparse.SUPPRESS)
    parser.add_argument("--max-jobs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.trace, args.worker, args.max_jobs)
        return
    if not args.trace.exists():
        parser.error(f"no trace at {args.trace}")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    trees = [t.resolve() for t in (args.tree or [HERE.parent])]
    max_jobs, size = (QUICK_JOBS, "quick") if args.quick else (None, "full")
    print(f"gpuherd replay benchmark on {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}; {size} ({args.trace.name}, {max_jobs or 'all'} jobs), "
          f"{NODES} x {GPUS_PER_NODE} GPUs, noisy estimates", flush=True)
    names = {tree: "@".join(filter(None, (tree.name or str(tree), commit_of(tree)))) for tree in trees}
    results: dict[tuple[str, str], list[dict]] = {(names[t], p): [] for t in trees for p in policies}
    for rep in range(args.repeat):
        for policy in policies:
            for tree in trees:
                figures = run_one(tree, args.trace, policy, max_jobs)
                results[(names[tree], policy)].append(figures)
                print(f"  run {rep + 1}/{args.repeat} {names[tree]} {policy}: {figures['wall_s']:.1f} s "
                      f"({figures['jobs'] / figures['wall_s']:,.0f} jobs/s)", flush=True)
    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else {}
    print()
    print(table(results, baseline, size))
    if args.json:
        args.json.write_text(json.dumps({f"{t} {p}": runs for (t, p), runs in results.items()}, indent=1) + "\n")
    if args.record:
        first = names[trees[0]]
        baseline[size] = {
            p: {"jobs": runs[0]["jobs"], "wall_s": statistics.median(r["wall_s"] for r in runs),
                "jobs_per_s": runs[0]["jobs"] / statistics.median(r["wall_s"] for r in runs),
                "commit": first.rpartition("@")[2], "machine": f"{platform.node()}, {os.cpu_count()} CPUs"}
            for (t, p), runs in results.items() if t == first
        }
        args.baseline.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
        print(f"\nrecorded {size} baseline in {args.baseline}")


if __name__ == "__main__":
    main()
