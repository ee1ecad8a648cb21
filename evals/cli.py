"""``herd eval replay|generate|chat`` (also ``python -m evals replay|generate|chat``).

``command`` is a click group; gpuherd's CLI mounts it as ``herd eval`` through the ``gpuherd.commands``
entry point (pyproject.toml). Each command returns its exit code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from evals import generate as gen
from evals.trace import EstimateMode
from policies.ordering import FALLBACK_POLICY, POLICIES

if TYPE_CHECKING:
    from evals.replay import Replay

EXIT_USAGE = 2


def _policies(ctx: click.Context, param: click.Parameter, text: str | None) -> list[str]:
    if text is None:
        return list(POLICIES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*POLICIES, "agent")]
    if unknown or not names:
        raise click.BadParameter(f"unknown policy {', '.join(unknown) or '(none)'}; choose from "
                                 f"{', '.join(POLICIES)}, agent")
    if "agent" in names and FALLBACK_POLICY not in names:
        names.append(FALLBACK_POLICY)  # the agent is measured beside its fallback
    return names


POSITIVE_INT = click.IntRange(min=1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)


def _duration(ctx: click.Context, param: click.Parameter, text: str | None) -> float | None:
    from tools.timespec import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def planning_options(f):
    """The backfill plan's settings (``Rules.backfill_plans``, ``Rules.starve_after_s``) for a replay."""
    f = click.option("--starve-after", callback=_duration, metavar="DURATION",
                     help="a job waiting this long goes first and drains its planned GPUs (default: never)")(f)
    return click.option("--backfill-plans", type=POSITIVE_INT, default=1, show_default=True,
                        help="waiting jobs the backfill plan holds GPUs for (1: EASY)")(f)


def planning_rules(backfill_plans: int, starve_after: float | None):
    from dataclasses import replace

    from policies.rules import DEFAULT_RULES

    return replace(DEFAULT_RULES, backfill_plans=backfill_plans, starve_after_s=starve_after)


@click.group("eval", short_help="offline evals: herd eval replay | generate | chat (see herd eval --help)")
def command() -> None:
    """Evals run offline, on a simulated clock."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evals``: the command's exit code; a usage error is reported and exits 2, as click does."""
    try:
        return command.main(argv, prog_name="python -m evals", standalone_mode=False) or 0
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


# -- commands -------------------------------------------------------------------------------------------


@command.command(
    short_help="replay a job trace through the real scheduler on a simulated cluster",
    help="Replay a trace (CSV: job_id,user,submit_time_s,duration_s,num_gpus,status,vc) through the real "
    "orchestrator, policies and validator on a simulated clock; print each policy's metrics beside the "
    "lower bounds for the same trace and cluster.",
)
@click.option("--trace", required=True, type=click.Path(path_type=Path), help="the trace CSV")
@click.option("--vc", help="keep only this virtual cluster (tenant)")
@click.option("--nodes", type=POSITIVE_INT, default=2, help="simulated nodes (default 2)")
@click.option("--gpus-per-node", type=POSITIVE_INT, default=8, help="GPUs per node (default 8)")
@click.option("--policies", callback=_policies, help=f"comma-separated (default all: {','.join(POLICIES)}); agent: the "
              f"LLM agent (with --model), beside its fallback {FALLBACK_POLICY}")
@click.option("--model", "agent_model", type=click.Choice(["rule", "endpoint"]), default="rule",
              help="the agent's model: rule (default: the rule baseline, offline) or endpoint (OPENAI_BASE_URL or "
                   "OPENAI_API_KEY, and HERD_MODEL)")
@click.option("--estimate", type=click.Choice([m.value for m in EstimateMode]), default=EstimateMode.NOISY.value,
              help="duration estimates the policies see (sjf's order, the backfill plan, multifactor's size): "
              "true durations, Helios-like noise (default), none, or history (none given: the core predicts "
              "each from the jobs finished before it, as the service does)")
@click.option("--time-scale", type=POSITIVE_FLOAT, default=1.0,
              help="multiply inter-arrival gaps (0.5 halves them: twice the load)")
@click.option("--max-jobs", type=POSITIVE_INT, help="only the first K jobs (after --vc)")
@click.option("--seed", type=int, default=0, help="seed of the noisy estimates (default 0)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), metavar="FILE", help="write the results as JSON")
@click.option("--plots", type=click.Path(path_type=Path), metavar="DIR", help="write jct_cdf.png and timeline.png here")
@click.option("--quiet", is_flag=True, help="no progress bar")
@planning_options
def replay(trace: Path, vc: str | None, nodes: int, gpus_per_node: int, policies: list[str], agent_model: str, estimate: str,
           time_scale: float, max_jobs: int | None, seed: int, json_out: Path | None, plots: Path | None,
           quiet: bool, backfill_plans: int, starve_after: float | None) -> int:
    # Imported here: the harness pulls in the whole core and the agent; `herd --help` needs none of it.
    from evals.metrics import lower_bounds
    from evals.replay import Cluster, replay as run_replay
    from evals.report import document, estimate_table, plot, progress_bar, table, write_json
    from evals.trace import estimates, load_trace, predicts
    from policies.estimates import DEFAULT_PREDICTOR

    try:
        jobs = load_trace(trace, vc=vc, time_scale=time_scale, max_jobs=max_jobs)
    except (OSError, KeyError, ValueError) as exc:
        print(f"eval replay: cannot read {trace}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not jobs:
        print(f"eval replay: no jobs with GPUs in {trace}" + (f" for vc {vc}" if vc else ""), file=sys.stderr)
        return EXIT_USAGE
    cluster = Cluster(nodes, gpus_per_node)
    guesses = estimates(jobs, estimate, seed=seed)
    predictor = DEFAULT_PREDICTOR if predicts(estimate) else None
    rules = planning_rules(backfill_plans, starve_after)
    agents, model = {}, None
    if "agent" in policies:  # the model first: a missing endpoint stops the command before any replay
        from evals.agent_replay import agent_policy
        from evals.chat_eval import NoEndpoint, choose_model

        try:
            model, _ = choose_model(agent_model, dict(os.environ))
        except NoEndpoint as exc:
            print(f"eval replay: {exc}", file=sys.stderr)
            return EXIT_USAGE
        agents["agent"] = agent_policy(model)
    runs = []
    for name in policies:
        policy = agents.get(name, name)
        if quiet:
            runs.append(run_replay(jobs, policy=policy, cluster=cluster, estimates=guesses, predictor=predictor,
                                   rules=rules))
            continue
        with progress_bar(f"{name:>10}") as bar:
            runs.append(run_replay(jobs, policy=policy, cluster=cluster, estimates=guesses, predictor=predictor,
                                   rules=rules, progress=bar))
    skipped = {j.job_id for j in runs[0].skipped}
    kept = [j for j in jobs if j.job_id not in skipped]
    bounds = lower_bounds([(j.submit_s, j.duration_s, j.gpus) for j in kept], cluster.gpus)
    results = {r.policy: result(r) for r in runs}
    where = f"{trace.name}" + (f" vc {vc}" if vc else "")
    print(f"{where}: {len(kept)} jobs on {cluster.nodes} x {cluster.gpus_per_node} GPUs, "
          f"estimates {estimate}, time scale {time_scale:g}"
          + (f"; {len(skipped)} job(s) larger than the cluster left out" if skipped else ""))
    for name, agent in agents.items():
        from evals.agent_replay import agent_figures, comparison

        results[name]["agent"] = agent_figures(agent)
    print(table(results, bounds))
    if agents:
        print(comparison(results))
    if estimate != "oracle":
        print("estimates (error: max(estimate/run, run/estimate) - 1):")
        print(estimate_table(results))
    if json_out:
        options = {"vc": vc, "estimate": estimate, "time_scale": time_scale, "max_jobs": max_jobs, "seed": seed,
                   "backfill_plans": backfill_plans, "starve_after_s": starve_after, "skipped_jobs": len(skipped)}
        doc = document(trace=str(trace), options=options,
                       cluster={"nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node},
                       bounds=bounds, results=results)
        write_json(json_out, doc)
    if plots:
        for path in plot(runs, plots, title=f"{where}, {cluster.nodes}x{cluster.gpus_per_node} GPUs"):
            print(f"wrote {path}")
    return 0


def result(r: Replay) -> dict[str, Any]:
    """One policy's metrics (the issue's keys), plus how the replay itself went."""
    from evals.metrics import estimate_accuracy, summarize
    from evals.report import cost_by_queue

    return summarize(r.finished, r.cluster.gpus) | {
        "estimates": estimate_accuracy(r.estimated),
        "replay_seconds": r.replay_seconds,
        "ticks": r.ticks,
        "rejected_proposals": r.rejected,
        "decide_cost_by_queue": cost_by_queue(r.costs),
    }


@command.command(
    short_help="write a synthetic week of a lab's jobs, in the trace schema",
    help=gen.__doc__.split("\n\n")[0] if gen.__doc__ else None,
)
@click.option("--users", type=POSITIVE_INT, default=15, help="researchers (default 15)")
@click.option("--nodes", type=POSITIVE_INT, default=2, help="nodes of the lab (default 2)")
@click.option("--gpus-per-node", type=POSITIVE_INT, default=8, help="GPUs per node (default 8)")
@click.option("--days", type=POSITIVE_FLOAT, default=7.0, help="length of the trace (default 7)")
@click.option("--load", type=POSITIVE_FLOAT, default=gen.DEFAULT_LOAD,
              help=f"offered GPU-time over the cluster's capacity (default {gen.DEFAULT_LOAD})")
@click.option("--seed", type=int, default=0, help="random seed (default 0)")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="the CSV to write")
def generate(users: int, nodes: int, gpus_per_node: int, days: float, load: float, seed: int, out: Path) -> int:
    model = gen.LabModel(users=users, nodes=nodes, gpus_per_node=gpus_per_node, days=days, load=load)
    rows = gen.generate(model, seed=seed)
    gen.write(out, rows)
    gpus = sum(r.num_gpus * r.duration_s for r in rows) / (model.capacity_gpu_seconds or 1)
    print(f"wrote {len(rows)} jobs of {users} users over {days:g} days to {out} "
          f"(offered load {gpus:.2f} of {nodes * gpus_per_node} GPUs)")
    return 0


def _ints(ctx: click.Context, param: click.Parameter, text: str) -> list[int]:
    """``0-9`` or ``0,3,5`` or ``0-4,8``."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, _, high = part.partition("-")
            out += range(int(low), int(high or low) + 1)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give numbers and ranges, e.g. 0-9 or 0,3,5") from None
    if not out:
        raise click.BadParameter("give at least one")
    return out


def _weights(ctx, param, text: str | None):
    """``size=0,age=0``: multifactor's ``Weights`` with those fields changed; None: the defaults."""
    if text is None:
        return None
    from dataclasses import fields, replace

    from policies.rules import Weights

    names = {f.name for f in fields(Weights)}
    changes: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        try:
            if name.strip() not in names or not eq or float(value) < 0:
                raise ValueError
            changes[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{part!r}: give name=number (at least 0), the names one of "
                                     f"{', '.join(sorted(names))}") from None
    return replace(Weights(), **changes)


@command.command(
    short_help="replay many synthetic lab weeks (seeds, user counts) under every policy",
    help="Generate the synthetic lab week of each seed and user count (as 'herd eval generate' does), replay it "
    "under each policy with the same estimates, and print each policy's share fairness, utilization and mean "
    "JCT per week, with what multifactor misses of the target: share >= 0.9, utilization within one point of the "
    "best policy, mean JCT at most 10% above sjf's.",
)
@click.option("--seeds", callback=_ints, default="0-9", show_default=True, help="generator seeds: 0-9, 0,3,5")
@click.option("--users", callback=_ints, default="15", show_default=True, help="user counts: 15, or 8,15,30")
@click.option("--policies", callback=_policies, help=f"comma-separated (default all: {','.join(POLICIES)})")
@click.option("--estimate", type=click.Choice([m.value for m in EstimateMode]), default=EstimateMode.NOISY.value,
              show_default=True, help="as for replay")
@click.option("--nodes", type=POSITIVE_INT, default=2, show_default=True)
@click.option("--gpus-per-node", type=POSITIVE_INT, default=8, show_default=True)
@click.option("--days", type=POSITIVE_FLOAT, default=7.0, show_default=True)
@click.option("--seed", "noise_seed", type=int, default=0, show_default=True, help="seed of the noisy estimates")
@click.option("--held-out", callback=_ints, default="5-9", show_default=True,
              help="seeds no setting was chosen on: their weeks are counted apart")
@planning_options
@click.option("--weights", callback=_weights, metavar="NAME=X,...",
              help="multifactor's weights changed from the defaults, e.g. size=0,age=0 (policies/rules.py Weights)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), metavar="FILE", help="write every week as JSON")
def sweep(seeds: list[int], users: list[int], policies: list[str], estimate: str, nodes: int, gpus_per_node: int,
          days: float, noise_seed: int, held_out: list[int], backfill_plans: int, starve_after: float | None,
          weights, json_out: Path | None) -> int:
    from evals.report import write_json
    from evals.sweep import as_json, markdown, sweep as run_sweep

    rules = planning_rules(backfill_plans, starve_after)
    weeks = run_sweep(seeds, users, policies, estimate=estimate, nodes=nodes, gpus_per_node=gpus_per_node,
                      days=days, noise_seed=noise_seed, rules=rules, weights=weights)
    print(f"lab weeks on {nodes} x {gpus_per_node} GPUs, estimates {estimate}"
          + (f", multifactor weights {weights}" if weights else "") + "; share / utilization / mean JCT:")
    print(markdown(weeks, held_out=held_out))
    if json_out:
        write_json(json_out, as_json(weeks))
    return 0


@command.command(help="run the chat scenarios through the agent and score them")
@click.option("--scenarios", type=click.Path(path_type=Path),
              help="a folder of *.yaml scenarios (default evals/scenarios)")
@click.option("--json", "json_file", type=click.Path(path_type=Path), metavar="FILE",
              help="also write every outcome and the summary as JSON")
@click.option("--model", type=click.Choice(["auto", "rule", "endpoint"]), default="auto",
              help="auto (default): the endpoint when OPENAI_BASE_URL or OPENAI_API_KEY is set "
                   "(model $HERD_MODEL, default gpt-4o-mini), else the rule baseline")
def chat(scenarios: Path | None, json_file: Path | None, model: str) -> int:
    # Imported here: the chat agent and its model client are the heaviest part of the evals.
    from evals.chat_eval import run_command
    from evals.scenario_files import SCENARIOS_DIR

    return run_command(scenarios or SCENARIOS_DIR, json_file, model)
