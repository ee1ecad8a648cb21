"""What ``herd`` prints: tables, JSON, and every time and duration it shows."""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import click
from rich.console import Console
from rich.table import Table

WIDE = 100_000  # the console width for tables: a row never wraps, whatever the terminal


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain columns two spaces apart, each as wide as its widest cell; ``-`` for a missing value."""
    grid = Table(box=None, pad_edge=False, padding=(0, 1), header_style="")
    for header in headers:
        grid.add_column(str(header), no_wrap=True)
    for row in rows:
        grid.add_row(*("-" if cell is None else str(cell) for cell in row))
    # Cells are text as it is: no markup ("[bold]"), emoji codes (":x:") or colours read into them.
    console = Console(width=WIDE, color_system=None, markup=False, emoji=False, highlight=False)
    with console.capture() as capture:
        console.print(grid)
    return "\n".join(line.rstrip() for line in capture.get().splitlines())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


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
