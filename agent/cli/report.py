"""``herd report``: accounting, like Slurm's sreport: GPU-hours, jobs, failures and waits per user, group
or node since a time."""

from __future__ import annotations

import click

from agent.cli.client import Client, server_command
from agent.cli.output import format_duration, print_csv, print_json, stamp, table

HEADERS = ("JOBS", "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "RUNNING", "WAITING", "GPU-HOURS", "MEAN WAIT",
           "GPU UTIL", "PEAK MEM")


@server_command("report", "GPU-hours, jobs, failures and mean wait per user, group or node: herd report --since 7d")
@click.option("-s", "--since", default="7d", show_default=True,
              help="the window's start: 7d, 12h (back from now), 2026-11-01, '2026-11-01 08:00'")
@click.option("--by", type=click.Choice(["user", "group", "node"]), default="user", show_default=True)
@click.option("--csv", "as_csv", is_flag=True, help="comma-separated values, for a spreadsheet")
def report(client: Client, as_json: bool, since: str, by: str, as_csv: bool) -> None:
    data = client.call("GET", "/jobs/report", params={"since": since, "by": by})
    if as_json:
        print_json(data)
        return
    rows = [_cells(r, raw=as_csv) for r in (*data["rows"], data["total"])]
    headers = (by.upper(), *HEADERS)
    if as_csv:
        print_csv([h.lower().replace(" ", "_").replace("-", "_") for h in headers], rows)
        return
    if not data["rows"]:
        click.echo(f"No job ended since {stamp(data['since'], seconds=False)}, and none is active.")
        return
    click.echo(table(headers, rows))
    click.echo(f"\nJobs that ended from {stamp(data['since'], seconds=False)} to now (completed, failed, timeout, "
               "cancelled) and the jobs active now; GPU-hours of every attempt, the running jobs' so far. "
               "Mean wait: submission to first start. GPU util: the jobs' sampled utilization, weighted by GPU-hours; "
               "peak mem: the most GPU memory one job used at once.")


def _cells(row: dict, *, raw: bool) -> list:
    wait = row["mean_wait_s"]
    return [row["key"], row["jobs"], row["completed"], row["failed"], row["timeout"], row["cancelled"], row["running"],
            row["waiting"], row["gpu_hours"] if raw else f"{row['gpu_hours']:.2f}",
            (round(wait) if wait is not None else None) if raw else format_duration(wait),
            _or_dash(row.get("mean_utilization_pct"), raw, "{:.0f}%"), _or_dash(row.get("peak_memory_mib"), raw, "{:,} MiB")]


def _or_dash(value: float | None, raw: bool, form: str) -> object:
    if raw or value is None:
        return value if raw else "-"
    return form.format(value)


COMMANDS = (report,)
