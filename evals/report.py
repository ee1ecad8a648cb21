"""What a replay shows people and scripts: a table, a JSON document, PNG plots, a progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from policies.ordering import POLICIES

from evals.metrics import Bounds
from evals.replay import Progress, Replay, Series

# Rows of the terminal table: (metric key, column title, kind)
COLUMNS = (
    ("jobs", "jobs", "count"),
    ("wait_mean_s", "wait mean", "time"),
    ("wait_p50_s", "p50", "time"),
    ("wait_p95_s", "p95", "time"),
    ("wait_p99_s", "p99", "time"),
    ("wait_max_s", "max", "time"),
    ("jct_mean_s", "JCT mean", "time"),
    ("jct_p50_s", "p50", "time"),
    ("jct_p95_s", "p95", "time"),
    ("jct_p99_s", "p99", "time"),
    ("makespan_s", "makespan", "time"),
    ("utilization", "util", "ratio"),
    ("bounded_slowdown_mean", "slowdown", "number"),
    ("jain_fairness", "Jain", "ratio"),
    ("share_fairness", "share", "ratio"),
    ("replay_seconds", "replay", "seconds"),
)
# The bounds sit under the metric they bound.
BOUND_OF = {"jct_mean_s": "jct_mean_lb_s", "wait_mean_s": "wait_mean_lb_s", "makespan_s": "makespan_lb_s",
            "utilization": "utilization_ub"}


def human_time(seconds: float) -> str:
    """A duration in the unit that keeps it short: 45s, 12.5m, 3.2h, 2.1d."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if abs(seconds) >= 2 * size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "count":
        return str(int(value))
    if kind == "time":
        return human_time(value)
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "seconds":
        return f"{value:.1f}s"
    return f"{value:.2f}"


def table(results: Mapping[str, Mapping[str, float]], bounds: Bounds) -> str:
    """Policies side by side, one row each, with a last row of bounds (lower, utilization upper)."""
    header = ["policy"] + [title for _, title, _ in COLUMNS]
    rows = [[name] + [_cell(m.get(key), kind) for key, _, kind in COLUMNS] for name, m in results.items()]
    b = bounds_dict(bounds)
    rows.append(["bound"] + [_cell(b[BOUND_OF[key]], kind) if key in BOUND_OF else "" for key, _, kind in COLUMNS])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), *(line(r) for r in rows)])


def markdown_table(results: Mapping[str, Mapping[str, float]], bounds: Bounds) -> str:
    """The same table in Markdown, for docs."""
    header = ["policy"] + [title for _, title, _ in COLUMNS]
    b = bounds_dict(bounds)
    rows = [[name] + [_cell(m.get(key), kind) for key, _, kind in COLUMNS] for name, m in results.items()]
    rows.append(["*bound*"] + [_cell(b[BOUND_OF[key]], kind) if key in BOUND_OF else "" for key, _, kind in COLUMNS])
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


ESTIMATE_COLUMNS = (("within_10pct", "±10%"), ("within_50pct", "±50%"), ("within_100pct", "±100%"),
                    ("within_1000pct", "±1000%"), ("under", "ran longer"), ("error_p50", "error p50"))


def estimate_table(results: Mapping[str, Mapping[str, Any]], *, markdown: bool = False) -> str:
    """How good each policy's estimates were, per source: jobs, the share within each error band
    (``max(e/r, r/e) - 1``), the share that ran longer than estimated, the median error."""
    header = ["policy", "source", "jobs"] + [title for _, title in ESTIMATE_COLUMNS]
    rows = []
    for name, m in results.items():
        for source, entry in m.get("estimates", {}).items():
            cells = [f"{entry[k]:.2f}" if k in entry else "" for k, _ in ESTIMATE_COLUMNS]
            rows.append([name, source, str(int(entry["jobs"]))] + cells)
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), *(line(r) for r in rows)])


def bounds_dict(bounds: Bounds) -> dict[str, float]:
    return {
        "jct_mean_lb_s": bounds.jct_mean_lb_s,
        "wait_mean_lb_s": bounds.wait_mean_lb_s,
        "makespan_lb_s": bounds.makespan_lb_s,
        "utilization_ub": bounds.utilization_ub,
    }


# -- decision cost against queue length --------------------------------------------------------------

QUEUE_BANDS = (0, 1, 10, 100, 1_000, 10_000, 100_000)


def cost_by_queue(costs: Series) -> list[dict[str, float]]:
    """Mean wall-clock decide and tick time per band of queue length (to show it is not quadratic)."""
    out = []
    queued, decide, tick = costs["queued"], costs["decide_s"], costs["tick_s"]
    for low, high in zip(QUEUE_BANDS, QUEUE_BANDS[1:] + (math.inf,)):
        rows = [k for k, q in enumerate(queued) if low <= q < high]
        if rows:
            out.append({
                "queued_from": low,
                "queued_to": high if high != math.inf else None,
                "ticks": len(rows),
                "mean_queued": sum(queued[k] for k in rows) / len(rows),
                "decide_us": 1e6 * sum(decide[k] for k in rows) / len(rows),
                "tick_us": 1e6 * sum(tick[k] for k in rows) / len(rows),
            })
    return out


def cost_table(rows: Sequence[Mapping[str, float]]) -> str:
    lines = ["| waiting jobs | ticks | mean waiting | decide (µs/tick) | whole tick (µs) |", "|---|---|---|---|---|"]
    for r in rows:
        span = f"{r['queued_from']}–{r['queued_to'] - 1}" if r["queued_to"] else f"≥ {r['queued_from']}"
        lines.append(f"| {span} | {r['ticks']} | {r['mean_queued']:.0f} | {r['decide_us']:.0f} | {r['tick_us']:.0f} |")
    return "\n".join(lines)


# -- JSON --------------------------------------------------------------------------------------------


def document(
    *, trace: str, options: Mapping[str, Any], cluster: Mapping[str, int], bounds: Bounds,
    results: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    return {"trace": trace, "options": dict(options), "cluster": dict(cluster), "bounds": bounds_dict(bounds),
            "policies": {name: dict(m) for name, m in results.items()}}


def write_json(path: Path | str, doc: Mapping[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


# -- plots ---------------------------------------------------------------------------------------------

MAX_POINTS = 1_500  # per line: enough for the eye, small enough for a commit
TIME_BINS = 400  # the timeline is drawn as averages over this many equal slices of time


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    step = max(1, len(xs) // MAX_POINTS)
    return list(xs[::step]), list(ys[::step])


def time_average(times: Sequence[float], values: Sequence[float], end: float, bins: int) -> list[float]:
    """The time-weighted mean of a step function (``values[k]`` from ``times[k]`` to the next time)
    over each of ``bins`` equal slices of [0, end]."""
    width = end / bins if end > 0 else 1.0
    sums = [0.0] * bins
    for k, (t, v) in enumerate(zip(times, values)):
        stop = min(times[k + 1] if k + 1 < len(times) else end, end)
        b = min(int(t / width), bins - 1)
        while t < stop:
            upto = stop if b == bins - 1 else min(stop, (b + 1) * width)
            sums[b] += v * (upto - t)
            t, b = upto, b + 1
    return [x / width for x in sums]


def _color(policy: str) -> str:
    """The same colour for a policy in every plot."""
    names = list(POLICIES)
    return f"C{names.index(policy) if policy in names else len(names)}"


def plot(replays: Sequence[Replay], out_dir: Path | str, *, title: str, prefix: str = "") -> list[Path]:
    """``jct_cdf.png`` (JCT CDF per policy) and ``timeline.png`` (busy GPUs and queue length)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
    for r in replays:
        jcts = sorted(j.jct for j in r.finished)
        ys = [(k + 1) / len(jcts) for k in range(len(jcts))]
        xs, ys = _thin(jcts, ys)
        ax.step([max(x, 1.0) for x in xs], ys, where="post", label=r.policy, color=_color(r.policy))
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (s, log)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"JCT CDF: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / f"{prefix}jct_cdf.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 4.8), dpi=90, sharex=True)
    end = max((r.timeline["time"][-1] for r in replays if len(r.timeline)), default=0.0)
    days = [(b + 0.5) * end / TIME_BINS / 86_400 for b in range(TIME_BINS)]
    for r in replays:
        times = r.timeline["time"]
        top.plot(days, time_average(times, r.timeline["busy_gpus"], end, TIME_BINS),
                 label=r.policy, linewidth=0.9, color=_color(r.policy))
        bottom.plot(days, time_average(times, r.timeline["queued"], end, TIME_BINS),
                    label=r.policy, linewidth=0.9, color=_color(r.policy))
    top.set_ylabel("busy GPUs")
    top.axhline(replays[0].cluster.gpus if replays else 0, color="grey", linewidth=0.5, linestyle="--")
    bottom.set_ylabel("waiting jobs")
    bottom.set_xlabel(f"time (days; each point the mean over {human_time(end / TIME_BINS)})")
    top.set_title(f"Cluster over time: {title}", fontsize=10)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8, ncol=len(replays))
    fig.tight_layout()
    paths.append(out / f"{prefix}timeline.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


# -- progress ------------------------------------------------------------------------------------------


@contextmanager
def progress_bar(label: str, *, stream: TextIO = sys.stderr, every_s: float = 0.2) -> Iterator[Progress | None]:
    """A one-line ``rich`` bar on ``stream`` for one replay, cleared when the block ends: jobs submitted of
    the trace's, the simulated time, the wall time so far and the jobs per second. Yields the replay's
    ``progress`` callback, or None when ``stream`` is no terminal (nothing is drawn then)."""
    if not stream.isatty():
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("jobs, t={task.fields[sim]},"), TimeElapsedColumn(), TextColumn("{task.fields[rate]}"))
    with RichProgress(*columns, console=Console(file=stream), transient=True) as bars:
        task = bars.add_task(label, total=None, sim=human_time(0), rate="")
        start = time.perf_counter()
        last = start - every_s  # the first call draws

        def update(done: int, total: int, sim_time: float) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last < every_s:  # rich redraws on its own clock; a call per tick would only cost time
                return
            last = now
            bars.update(task, completed=done, total=total, sim=human_time(sim_time),
                        rate=f"{done / (now - start):,.0f} jobs/s")

        yield update
