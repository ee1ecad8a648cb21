"""``herd eval replay|generate`` (also ``python -m evals replay|generate``).

To mount under another CLI: ``build_parser(subparsers)`` adds ``replay`` and ``generate`` to an
argparse sub-parsers object; the parsed args carry ``eval_run`` (as ``evals.chat_eval``'s ``chat``
does), and ``run(args)`` runs the command and returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from policies.ordering import POLICIES

from evals import generate as gen
from evals.metrics import lower_bounds, summarize
from evals.replay import Cluster, Replay, replay
from evals.report import ProgressBar, cost_by_queue, document, plot, table, write_json
from evals.trace import EstimateMode, estimates, load_trace

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return value


def _policies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown) or '(none)'}; choose from {', '.join(POLICIES)}")
    return names


def build_parser(subparsers: Any) -> None:
    """Add ``replay`` and ``generate`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "replay", help="replay a job trace through the real scheduler on a simulated cluster",
        description="Replay a trace (CSV: job_id,user,submit_time_s,duration_s,num_gpus,status,vc) through the "
        "real orchestrator, policies and validator on a simulated clock; print each policy's metrics beside "
        "the lower bounds for the same trace and cluster.",
    )
    p.set_defaults(eval_run=cmd_replay)
    p.add_argument("--trace", required=True, type=Path, help="the trace CSV")
    p.add_argument("--vc", help="keep only this virtual cluster (tenant)")
    p.add_argument("--nodes", type=_positive_int, default=2, help="simulated nodes (default 2)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--policies", type=_policies, default=list(POLICIES),
                   help=f"comma-separated (default all: {','.join(POLICIES)})")
    p.add_argument("--estimate", choices=[m.value for m in EstimateMode], default=EstimateMode.NOISY.value,
                   help="duration estimates the policies see (sjf's order, the backfill plan, multifactor's size): "
                   "true durations, Helios-like noise (default), or none")
    p.add_argument("--time-scale", type=_positive_float, default=1.0,
                   help="multiply inter-arrival gaps (0.5 halves them: twice the load)")
    p.add_argument("--max-jobs", type=_positive_int, help="only the first K jobs (after --vc)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noisy estimates (default 0)")
    p.add_argument("--json", dest="json_out", type=Path, metavar="FILE", help="write the results as JSON")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write jct_cdf.png and timeline.png here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = subparsers.add_parser(
        "generate", help="write a synthetic week of a lab's jobs, in the trace schema",
        description=gen.__doc__.split("\n\n")[0] if gen.__doc__ else None,
    )
    p.set_defaults(eval_run=cmd_generate)
    p.add_argument("--users", type=_positive_int, default=15, help="researchers (default 15)")
    p.add_argument("--nodes", type=_positive_int, default=2, help="nodes of the lab (default 2)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--days", type=_positive_float, default=7.0, help="length of the trace (default 7)")
    p.add_argument("--load", type=_positive_float, default=gen.DEFAULT_LOAD,
                   help=f"offered GPU-time over the cluster's capacity (default {gen.DEFAULT_LOAD})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, type=Path, help="the CSV to write")


def run(args: argparse.Namespace) -> int:
    return args.eval_run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals", description="gpuherd evals: trace replay, workloads")
    build_parser(parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True))
    return run(parser.parse_args(argv))


# -- commands -------------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        jobs = load_trace(args.trace, vc=args.vc, time_scale=args.time_scale, max_jobs=args.max_jobs)
    except (OSError, KeyError, ValueError) as exc:
        print(f"eval replay: cannot read {args.trace}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not jobs:
        print(f"eval replay: no jobs with GPUs in {args.trace}" + (f" for vc {args.vc}" if args.vc else ""),
              file=sys.stderr)
        return EXIT_USAGE
    cluster = Cluster(args.nodes, args.gpus_per_node)
    guesses = estimates(jobs, args.estimate, seed=args.seed)
    runs: list[Replay] = []
    for name in args.policies:
        bar = ProgressBar(f"{name:>10}") if not args.quiet else None
        runs.append(replay(jobs, policy=name, cluster=cluster, estimates=guesses, progress=bar))
        if bar is not None:
            bar.close()
    skipped = {j.job_id for j in runs[0].skipped}
    kept = [j for j in jobs if j.job_id not in skipped]
    bounds = lower_bounds([(j.submit_s, j.duration_s, j.gpus) for j in kept], cluster.gpus)
    results = {r.policy: result(r) for r in runs}
    where = f"{args.trace.name}" + (f" vc {args.vc}" if args.vc else "")
    print(f"{where}: {len(kept)} jobs on {cluster.nodes} x {cluster.gpus_per_node} GPUs, "
          f"estimates {args.estimate}, time scale {args.time_scale:g}"
          + (f"; {len(skipped)} job(s) larger than the cluster left out" if skipped else ""))
    print(table(results, bounds))
    if args.json_out:
        options = {"vc": args.vc, "estimate": args.estimate, "time_scale": args.time_scale,
                   "max_jobs": args.max_jobs, "seed": args.seed, "skipped_jobs": len(skipped)}
        doc = document(trace=str(args.trace), options=options,
                       cluster={"nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node},
                       bounds=bounds, results=results)
        write_json(args.json_out, doc)
    if args.plots:
        for path in plot(runs, args.plots, title=f"{where}, {cluster.nodes}x{cluster.gpus_per_node} GPUs"):
            print(f"wrote {path}")
    return 0


def result(r: Replay) -> dict[str, Any]:
    """One policy's metrics (the issue's keys), plus how the replay itself went."""
    return summarize(r.finished, r.cluster.gpus) | {
        "replay_seconds": r.replay_seconds,
        "ticks": r.ticks,
        "rejected_proposals": r.rejected,
        "decide_cost_by_queue": cost_by_queue(r.costs),
    }


def cmd_generate(args: argparse.Namespace) -> int:
    model = gen.LabModel(users=args.users, nodes=args.nodes, gpus_per_node=args.gpus_per_node, days=args.days,
                         load=args.load)
    rows = gen.generate(model, seed=args.seed)
    gen.write(args.out, rows)
    gpus = sum(r.num_gpus * r.duration_s for r in rows) / (model.capacity_gpu_seconds or 1)
    print(f"wrote {len(rows)} jobs of {args.users} users over {args.days:g} days to {args.out} "
          f"(offered load {gpus:.2f} of {args.nodes * args.gpus_per_node} GPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
