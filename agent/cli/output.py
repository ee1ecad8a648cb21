"""What ``herd`` prints: tables, JSON, CSV, and every time and duration it shows.

A table's cells are text as it is, made safe and short: a newline shows as ``↵``, other control
characters (an escape sequence in someone's job name) as ``?``; a column with a limit is cut with ``…``;
and the table is fitted to the terminal's width (120 columns when the output is not a terminal) by
cutting its elastic column, unless the command was asked for ``--wide``. ``herd show`` prints a job's
command whole.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
from typing import Any, Mapping, Sequence

import click
from rich.cells import cell_len, set_cell_size

GAP = "  "  # between two columns
FALLBACK_WIDTH = 120  # the width a table is fitted to when the output is not a terminal
MIN_ELASTIC = 12  # an elastic column is never cut narrower than this
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(value: Any) -> str:
    """One line a terminal shows as it is: ``-`` for None; newlines as ``↵``, tabs as a space, other
    control characters (escape sequences among them) as ``?``."""
    if value is None:
        return "-"
    text = str(value).replace("\r\n", "\n").replace("\n", "↵").replace("\r", "↵").replace("\t", " ")
    return _CONTROL.sub("?", text)


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` terminal cells, ending with ``…`` where it was cut."""
    if width < 1 or cell_len(text) <= width:
        return text if width >= 1 else ""
    return set_cell_size(text, width - 1).rstrip() + "…"


def terminal_width() -> int:
    return shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, limits: Mapping[str, int] | None = None,
          elastic: str | None = None, width: int | None = None, header: bool = True) -> str:
    """Plain columns two spaces apart, each as wide as its widest cell; ``-`` for a missing value.

    ``limits``: header -> the most cells that column shows. ``width``: cut ``elastic`` (a header; the
    last column if None) so that no line is wider, down to ``MIN_ELASTIC`` cells. ``header``: False
    leaves out the header line."""
    limits = limits or {}
    cells = [[cut(clean(c), limits.get(h, 0)) if limits.get(h) else clean(c) for h, c in zip(headers, row)]
             for row in rows]
    lines = [list(map(str, headers))] if header else []
    lines += cells
    if not lines:
        return ""
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(headers))]
    if width is not None and headers:
        e = headers.index(elastic) if elastic in headers else len(headers) - 1
        over = sum(widths) + len(GAP) * (len(widths) - 1) - width
        if over > 0 and widths[e] > MIN_ELASTIC:
            widths[e] = max(MIN_ELASTIC, widths[e] - over)
            for line in lines:
                line[e] = cut(line[e], widths[e])
    out = []
    for line in lines:
        padded = [cell + " " * (widths[i] - cell_len(cell)) for i, cell in enumerate(line)]
        out.append(GAP.join(padded).rstrip())
    return "\n".join(out)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def print_csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if c is None else c for c in row] for row in rows])
    click.echo(buffer.getvalue(), nl=False)


def format_duration(seconds: float | None) -> str:
    """``45s``, ``1m15s``, ``1h01m``, ``1d01h``: the two largest units; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


def format_size(n: int) -> str:
    """``512 B``, ``1.0 KiB``, ``38.2 MiB``, ``1.1 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1000 or unit == "GiB":  # 1000 KiB and up shows as 1.0 MiB
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def stamp(t: float | None, *, seconds: bool = True) -> str:
    """A full local date and time, ``2026-11-30 22:00:00`` (``22:00`` without seconds); ``-`` for none."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(t))


def clock(t: float, now: float) -> str:
    """``22:00`` on the day of ``now``, ``11-30 22:00`` on another day: short, for a table."""
    at = time.localtime(t)
    return time.strftime("%H:%M" if at[:3] == time.localtime(now)[:3] else "%m-%d %H:%M", at)


def when(t: float | None, now: float) -> str:
    """An estimated start: ``now``, a clock time, or ``-`` when it cannot be planned."""
    if t is None:
        return "-"
    return "now" if t <= now else clock(t, now)


def index_ranges(indices: Sequence[int]) -> str:
    """``0-3,7,9-10`` for 0, 1, 2, 3, 7, 9, 10 (sorted first)."""
    parts: list[str] = []
    ordered = sorted(indices)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def run_seconds(job: Mapping[str, Any], now: float) -> float | None:
    """Seconds a job (its record as the server sends it) has run in all its attempts; None if it never
    started. The same sum as ``tools.models.Job.run_seconds``."""
    total = job.get("run_s") or 0.0
    if job["status"] == "running" and job.get("start_time") is not None:
        total += max(0.0, now - job["start_time"])
    elif not total and job.get("end_time") is not None and job.get("start_time") is not None:
        total = max(0.0, job["end_time"] - job["start_time"])
    if not total and job.get("start_time") is None:
        return None
    return total


def gpu_hours(job: Mapping[str, Any], now: float) -> str:
    ran = run_seconds(job, now)
    return "-" if ran is None else f"{job['gpu_count'] * ran / 3600:.2f}"


def state_of(job: Mapping[str, Any]) -> str:
    """The job's status, or ``timeout`` for a job stopped at its time limit (Slurm's TIMEOUT)."""
    return "timeout" if job.get("end_reason") == "timeout" else job["status"]


def job_label(job: Mapping[str, Any]) -> str:
    """``12`` for a job; ``12_3`` for task 3 of array 12 (Slurm's way)."""
    if job.get("array_id") is not None:
        return f"{job['array_id']}_{job['array_index']}"
    return str(job["id"])
