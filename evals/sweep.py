"""The synthetic lab workload over many weeks: every policy on many generator seeds and user counts.

One seed is one week, and a week's figures move a lot with a single long or wide job (docs/evals.md),
so a policy's fairness and utilization are judged over many. ``herd eval sweep`` generates each week
in memory (``evals.generate``, the same trace ``herd eval generate --seed S`` writes), replays it under
each policy with the same estimates, and checks the target of issue 19 on each week: multifactor's
share fairness at least 0.9, its utilization within one point of the best policy's, its mean JCT at
most 10 % above sjf's.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from evals import generate as gen
from evals.metrics import Finished, lower_bounds, share_by_tenant, summarize
from evals.replay import Cluster, replay
from evals.trace import TraceJob, estimates, predicts, rebase
from policies.estimates import DEFAULT_PREDICTOR
from policies.multifactor import MultifactorPolicy
from policies.rules import DEFAULT_RULES, Rules, Weights

SHARE_AT_LEAST = 0.9
UTILIZATION_WITHIN = 0.01
JCT_OVER_SJF_AT_MOST = 1.1
SHORTFALLS = 3  # users furthest below their fair share kept per week


@dataclass(frozen=True)
class Shortfall:
    """A user who got less than its fair share in a week, and the job of theirs that waited longest:
    where a week's share fairness was lost."""

    tenant: str
    got: float  # GPU-time received / GPU-time its max-min fair share entitled it to
    entitled_gpu_h: float
    jobs: int
    longest_wait_s: float
    longest_wait_gpus: int
    longest_wait_submit_s: float  # when that job was queued (t = 0: midnight on the Monday)


@dataclass(frozen=True)
class Week:
    users: int
    seed: int
    policy: str
    jobs: int
    share: float
    utilization: float
    jct_mean_s: float
    wait_max_s: float
    utilization_ub: float
    jct_mean_lb_s: float
    short: tuple[Shortfall, ...] = ()  # the users furthest below their share, worst first


def shortfalls(jobs: Sequence[Finished], capacity: int, keep: int = SHORTFALLS) -> tuple[Shortfall, ...]:
    """Up to ``keep`` users who got less than their fair share (``share_by_tenant``), the smallest part
    of it first, each with its job that waited longest."""
    shares = share_by_tenant(jobs, capacity)
    below = [u for u, (received, entitled) in shares.items() if received < entitled]
    worst = sorted(below, key=lambda u: (shares[u][0] / shares[u][1], u))[:keep]
    out = []
    for user in worst:
        own = [j for j in jobs if j.tenant == user]
        longest = max(own, key=lambda j: (j.wait, -j.submit))
        received, entitled = shares[user]
        out.append(Shortfall(user, received / entitled, entitled / 3600, len(own), longest.wait, longest.gpus,
                             longest.submit))
    return tuple(out)


def lab_trace(model: gen.LabModel, seed: int) -> list[TraceJob]:
    """The week ``herd eval generate`` writes for ``model`` and ``seed``, as trace jobs."""
    rows = gen.generate(model, seed=seed)
    return rebase([TraceJob(r.job_id, r.user, float(r.submit_time_s), float(r.duration_s), r.num_gpus) for r in rows])


def sweep(seeds: Iterable[int], users: Iterable[int], policies: Sequence[str], *, estimate: str = "noisy",
          nodes: int = 2, gpus_per_node: int = 8, days: float = 7.0, load: float = gen.DEFAULT_LOAD,
          noise_seed: int = 0, rules: Rules = DEFAULT_RULES, weights: Weights | None = None) -> list[Week]:
    """Every policy on every (user count, seed) week under ``rules``, multifactor with ``weights`` (None:
    its defaults); the estimates are the same for every policy of a week (``noise_seed`` as ``herd eval
    replay --seed``)."""
    out = []
    chosen = {"multifactor": MultifactorPolicy(weights=weights)} if weights is not None else {}
    cluster = Cluster(nodes, gpus_per_node)
    predictor = DEFAULT_PREDICTOR if predicts(estimate) else None
    for n in users:
        model = gen.LabModel(users=n, nodes=nodes, gpus_per_node=gpus_per_node, days=days, load=load)
        for seed in seeds:
            jobs = lab_trace(model, seed)
            guesses = estimates(jobs, estimate, seed=noise_seed)
            bounds = lower_bounds([(j.submit_s, j.duration_s, j.gpus) for j in jobs], cluster.gpus)
            for policy in policies:
                finished = replay(jobs, policy=chosen.get(policy, policy), cluster=cluster, estimates=guesses,
                                  rules=rules, predictor=predictor).finished
                m = summarize(finished, cluster.gpus)
                out.append(Week(n, seed, policy, int(m["jobs"]), m["share_fairness"], m["utilization"],
                                m["jct_mean_s"], m["wait_max_s"], bounds.utilization_ub, bounds.jct_mean_lb_s,
                                shortfalls(finished, cluster.gpus)))
    return out


def misses(weeks: Sequence[Week], target: str = "multifactor") -> dict[tuple[int, int], list[str]]:
    """Per (users, seed): which parts of the target ``target`` misses that week (empty: none)."""
    by_week: dict[tuple[int, int], dict[str, Week]] = {}
    for w in weeks:
        by_week.setdefault((w.users, w.seed), {})[w.policy] = w
    out = {}
    for key, runs in by_week.items():
        t = runs.get(target)
        if t is None:
            continue
        missed = []
        if t.share < SHARE_AT_LEAST:
            missed.append("share")
        if t.utilization < max(r.utilization for r in runs.values()) - UTILIZATION_WITHIN:
            missed.append("util")
        if "sjf" in runs and t.jct_mean_s > JCT_OVER_SJF_AT_MOST * runs["sjf"].jct_mean_s:
            missed.append("jct")
        out[key] = missed
    return out


def summary(weeks: Sequence[Week], target: str = "multifactor", held_out: Iterable[int] = ()) -> list[str]:
    """On how many weeks ``target`` met the target, and each part of it, apart for the weeks of the
    ``held_out`` seeds (those no setting was chosen on); and on how many ``fair_share`` was at least as
    fair as ``target``."""
    missed = misses(weeks, target)
    held = set(held_out)
    share = {(w.users, w.seed, w.policy): w.share for w in weeks}
    lines = []
    for name, keys in (("chosen on", [k for k in missed if k[1] not in held]),
                       ("held out", [k for k in missed if k[1] in held])):
        if not keys:
            continue
        seeds = ",".join(str(s) for s in sorted({seed for _, seed in keys}))
        parts = ", ".join(f"{part} {sum(part not in missed[k] for k in keys)}" for part in ("share", "util", "jct"))
        line = f"{target}, weeks of seeds {seeds} ({name}): target met on {sum(not missed[k] for k in keys)} of {len(keys)} ({parts})"
        fair = [k for k in keys if (*k, FAIR_SHARE) in share]
        if fair and target != FAIR_SHARE:
            at_least = sum(share[(*k, FAIR_SHARE)] >= share[(*k, target)] for k in fair)
            line += f"; fair_share at least as fair on {at_least} of {len(fair)}"
        lines.append(line)
    return lines


FAIR_SHARE = "fair_share"


def markdown(weeks: Sequence[Week], target: str = "multifactor", held_out: Iterable[int] = ()) -> str:
    """One row per week: each policy's share, utilization and mean JCT (hours), then what ``target``
    misses; then the mean and the worst week of each policy, and ``summary``."""
    policies = list(dict.fromkeys(w.policy for w in weeks))
    by_week: dict[tuple[int, int], dict[str, Week]] = {}
    for w in weeks:
        by_week.setdefault((w.users, w.seed), {})[w.policy] = w
    missed = misses(weeks, target)
    header = ["users", "seed", "jobs"] + [f"{p} share / util / JCT" for p in policies] + [f"{target} misses"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (n, seed), runs in by_week.items():
        cells = [f"{runs[p].share:.3f} / {runs[p].utilization:.3f} / {runs[p].jct_mean_s / 3600:.1f}h" for p in policies]
        jobs = next(iter(runs.values())).jobs
        lines.append(f"| {n} | {seed} | {jobs} | " + " | ".join(cells) + f" | {', '.join(missed.get((n, seed), [])) or '-'} |")
    means = [f"{statistics.mean(w.share for w in weeks if w.policy == p):.3f} / "
             f"{statistics.mean(w.utilization for w in weeks if w.policy == p):.3f} / "
             f"{statistics.mean(w.jct_mean_s for w in weeks if w.policy == p) / 3600:.1f}h" for p in policies]
    worst = [f"{min(w.share for w in weeks if w.policy == p):.3f}" for p in policies]
    met = sum(1 for m in missed.values() if not m)
    lines.append("| mean | | | " + " | ".join(means) + f" | met on {met} of {len(missed)} |")
    lines.append("| worst share | | | " + " | ".join(worst) + " | |")
    return "\n".join(lines + [""] + summary(weeks, target, held_out) + [""] + short_lines(weeks, target))


DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def when(t_s: float) -> str:
    """A time of a generated week (t = 0: midnight on a Monday) as its day and hour."""
    day, rest = divmod(int(t_s), 86_400)
    return f"{DAYS[day % 7]} {rest // 3600:02d}:{rest % 3600 // 60:02d}"


def short_lines(weeks: Sequence[Week], target: str = "multifactor") -> list[str]:
    """For each week on which ``target``'s share fairness missed the target: the users furthest below
    their fair share, and the job of each that waited longest."""
    lines = []
    for w in weeks:
        if w.policy != target or w.share >= SHARE_AT_LEAST or not w.short:
            continue
        parts = [f"{s.tenant} {s.got:.2f} of {s.entitled_gpu_h:.0f} GPU-h ({s.jobs} jobs; a {s.longest_wait_gpus}-GPU "
                 f"job queued {when(s.longest_wait_submit_s)} waited {s.longest_wait_s / 3600:.0f} h)" for s in w.short]
        lines.append(f"{w.users} users, seed {w.seed}, {target} share {w.share:.3f}: " + "; ".join(parts))
    return (["Furthest below their fair share (received / entitled):"] + lines) if lines else []


def as_json(weeks: Sequence[Week], target: str = "multifactor") -> dict:
    missed = misses(weeks, target)
    return {"weeks": [asdict(w) for w in weeks],
            "misses": [{"users": n, "seed": s, "target": target, "missed": m} for (n, s), m in missed.items()]}
