"""``herd queue`` (squeue) and ``herd jobs`` (sacct): filters, columns (``--format``), ``--noheader``,
``--watch``, and an array's waiting tasks on one line.

Each row is a mapping of column name to value; ``--format id,state,reason`` picks and orders columns.
Text columns are cut to fit the terminal (``--wide``: whole).
"""

from __future__ import annotations

import shlex
import time
from typing import Any, Callable

import click

from agent.cli.client import Client, server_command
from agent.cli.output import (
    clock,
    format_duration,
    gpu_hours,
    index_ranges,
    job_label,
    print_json,
    run_seconds,
    stamp,
    state_of,
    table,
    terminal_width,
    when,
)
from agent.cli.params import COLUMNS, JOB, STATES

QUEUE_PAGE = 1000  # jobs per request when reading the whole queue
JOBS_PAGE = 50  # jobs `herd jobs` shows unless told otherwise
WATCH_S = 2.0

# column -> (header, the most cells it shows unless --wide)
QUEUE_COLUMNS = {
    "id": ("ID", 24), "name": ("NAME", 20), "user": ("USER", 16), "gpus": ("GPUS", None), "prio": ("PRIO", None),
    "state": ("STATE", None), "for": ("FOR", None), "start": ("START", None), "where": ("WHERE / WHY WAITING", 80),
    "reason": ("REASON", None), "node": ("NODE", None), "jobid": ("JOBID", None), "command": ("COMMAND", 60),
}
QUEUE_DEFAULT = "id,name,user,gpus,prio,state,for,start,where"
JOBS_COLUMNS = {
    "id": ("ID", 16), "name": ("NAME", 20), "user": ("USER", 16), "gpus": ("GPUS", None), "prio": ("PRIO", None),
    "state": ("STATE", None), "exit": ("EXIT", None), "submitted": ("SUBMITTED", None), "elapsed": ("ELAPSED", None),
    "gpuh": ("GPU-H", None), "node": ("NODE", None), "jobid": ("JOBID", None), "command": ("COMMAND", 60),
    "started": ("STARTED", None), "ended": ("ENDED", None), "waited": ("WAITED", None),
}
JOBS_DEFAULT = "id,name,user,gpus,state,exit,submitted,elapsed,gpuh,command"
ELASTIC = ("where", "command", "name")  # the first of these shown gives way when the terminal is narrow


def listing_options(columns: dict, default: str) -> Callable:
    """Filters and layout shared by ``herd queue`` and ``herd jobs``."""
    def decorate(run):
        for option in reversed([
            click.option("-u", "--user", help="only this user's jobs"),
            click.option("--me", is_flag=True, help="only your jobs (as the server knows you)"),
            click.option("-n", "--name", help="only jobs of this name"),
            click.option("-t", "--state", "--status", "states", type=STATES,
                         help="only these states: queued (PD), running (R), completed, failed, cancelled, timeout"),
            click.option("-o", "--format", "columns", type=COLUMNS(tuple(columns)), default=default,
                         show_default=True, help=f"columns, from: {','.join(columns)}"),
            click.option("-h", "--noheader", is_flag=True, help="no header line (for scripts)"),
            click.option("-l", "--wide", is_flag=True, help="whole cells: no text cut to fit the terminal"),
        ]):
            run = option(run)
        return run
    return decorate


def render(columns: dict, chosen: list[str], rows: list[dict], *, noheader: bool, wide: bool) -> str:
    headers = [columns[c][0] for c in chosen]
    limits = {} if wide else {columns[c][0]: columns[c][1] for c in chosen if columns[c][1]}
    elastic = next((columns[c][0] for c in ELASTIC if c in chosen), None)
    return table(headers, [[row.get(c) for c in chosen] for row in rows], limits=limits, elastic=elastic,
                 width=None if wide else terminal_width(), header=not noheader)


# -- herd queue ------------------------------------------------------------------------------------
@server_command("queue", "running and waiting jobs in scheduling order, with reasons (squeue)")
@listing_options(QUEUE_COLUMNS, QUEUE_DEFAULT)
@click.option("-r", "--array", "expand", is_flag=True, help="every waiting task of an array on a line of its own")
@click.option("-i", "--watch", type=float, is_flag=False, flag_value=WATCH_S, default=None, metavar="[SECONDS]",
              help=f"show it again every SECONDS (default {WATCH_S:g}) until Ctrl-C")
def queue(client: Client, as_json: bool, user: str | None, me: bool, name: str | None, states: list[str] | None,
          columns: list[str], noheader: bool, wide: bool, expand: bool, watch: float | None) -> int:
    def once() -> None:
        view = _whole_queue(client, user, me)
        entries = [e for e in view["jobs"] if (name is None or e["job"]["name"] == name)
                   and (states is None or e["job"]["status"] in states)]
        if as_json:
            print_json(view | {"jobs": entries})
            return
        now = time.time()
        rows = _queue_rows(entries, now, expand)
        click.echo(render(QUEUE_COLUMNS, columns, rows, noheader=noheader, wide=wide) if rows else "The queue is empty.")
        if noheader:
            return
        stats = view["stats"]
        counts = stats["counts"]
        running = counts.get("running", 0) + counts.get("scheduled", 0)
        click.echo(
            f"\n{running} running on {stats['running_gpus']} GPU(s); {counts.get('queued', 0)} waiting for "
            f"{stats['queued_gpus']} GPU(s) (limit {stats['max_queued']} submissions); policy {view['policy']}"
        )

    if watch is None:
        once()
        return 0
    if watch <= 0:
        raise click.BadParameter("give a number of seconds above 0", param_hint="--watch")
    try:
        while True:
            click.clear()
            click.echo(f"herd queue, every {watch:g} s (Ctrl-C to stop); {stamp(time.time())}\n")
            once()
            time.sleep(watch)
    except KeyboardInterrupt:
        return 0


def _whole_queue(client: Client, user: str | None, me: bool) -> dict:
    """``GET /queue`` page after page: the first page's view, with every page's jobs."""
    params: dict = {"limit": QUEUE_PAGE} | ({"user": user} if user else {}) | ({"mine": "true"} if me else {})
    view = client.call("GET", "/queue", params=params)
    entries = list(view["jobs"])
    while view.get("next"):
        view = client.call("GET", "/queue", params=params | {"cursor": view["next"]})
        entries += view["jobs"]
    return view | {"jobs": entries, "next": None}


def _queue_rows(entries: list[dict], now: float, expand: bool) -> list[dict]:
    """A row per job; the waiting tasks of an array in one row (at the first one's place), unless ``expand``."""
    rows: list[dict] = []
    arrays: dict[int, dict] = {}
    for entry in entries:
        job = entry["job"]
        array_id = job.get("array_id")
        if not expand and job["status"] == "queued" and array_id is not None:
            if array_id in arrays:
                arrays[array_id]["_indices"].append(job["array_index"])
                continue
            row = arrays[array_id] = _queue_row(entry, now)
            row["_indices"] = [job["array_index"]]
            rows.append(row)
            continue
        rows.append(_queue_row(entry, now))
    for array_id, row in arrays.items():
        indices = row.pop("_indices")
        if len(indices) > 1:  # Slurm's 12_[3-109%8]; one waiting task is 12_109
            limit = row["_limit"]
            row["id"] = f"{array_id}_[{index_ranges(indices)}{f'%{limit}' if limit else ''}]"
            row["where"] = f"{len(indices)} tasks: {row['where']}"
    for row in rows:
        row.pop("_limit", None)
    return rows


def _queue_row(entry: dict, now: float) -> dict:
    job = entry["job"]
    running = job["status"] == "running" and job["start_time"]
    since = job["start_time"] if running else job["submit_time"]
    return {
        "id": job_label(job), "jobid": job["id"], "name": job["name"], "user": job["user"], "gpus": job["gpu_count"],
        "prio": job["priority"], "state": job["status"], "for": format_duration(now - since),
        # Running: when it started; waiting: when the plan expects it to start.
        "start": clock(job["start_time"], now) if running else when(entry["estimated_start"], now),
        "where": _where_or_why(job, entry["position"]), "reason": job.get("pending_reason"),
        "node": job["allocation"]["node"] if job["allocation"] else None, "command": job["command"] or None,
        "_limit": job.get("array_limit"),
    }


def _where_or_why(job: dict, position: int | None) -> str:
    if job["allocation"]:
        alloc = job["allocation"]
        text = f"{alloc['node']}:{','.join(str(g) for g in alloc['gpus'])}"
        return text + (f" (stopping: {job['stop_reason']})" if job.get("stop_reason") else "")
    reason = job.get("pending_reason") or ""
    message = job.get("pending_message") or ""
    return f"#{position} {reason}: {message}" if position else f"{reason}: {message}"


# -- herd jobs -------------------------------------------------------------------------------------
@server_command("jobs", "jobs of any state, finished ones too, newest first, with run time and GPU-hours (sacct)")
@listing_options(JOBS_COLUMNS, JOBS_DEFAULT)
@click.option("--array", "array_id", type=JOB, help="only the tasks of this array")
@click.option("--limit", type=click.IntRange(1, 1000), default=JOBS_PAGE, show_default=True,
              help="jobs per page: the newest N")
@click.option("--before", type=JOB, help="only jobs older than this one (the next page)")
@click.option("--all", "every", is_flag=True, help="every page, to the oldest job")
def jobs(client: Client, as_json: bool, user: str | None, me: bool, name: str | None, states: list[str] | None,
         columns: list[str], noheader: bool, wide: bool, array_id: int | None, limit: int, before: int | None,
         every: bool) -> None:
    if states and "timeout" in states and len(states) > 1:
        raise click.BadParameter("timeout goes alone (it is failed at the time limit)", param_hint="--state")
    params: dict[str, Any] = {k: v for k, v in (("status", ",".join(states or ())), ("user", user), ("name", name),
                                                ("array", array_id), ("limit", limit), ("cursor", before)) if v}
    if me:
        params["mine"] = "true"
    page = client.call("GET", "/jobs", params=params)
    found = list(page["jobs"])
    while every and page["next"]:
        page = client.call("GET", "/jobs", params=params | {"cursor": page["next"]})
        found += page["jobs"]
    if as_json:
        print_json({"jobs": found, "next": page["next"]})
        return
    now = time.time()
    rows = [_jobs_row(j, now) for j in found]
    click.echo(render(JOBS_COLUMNS, columns, rows, noheader=noheader, wide=wide) if rows else "No jobs.")
    if page["next"] and not noheader:
        given = (("--state", ",".join(states or ())), ("--user", user), ("--name", name), ("--array", array_id))
        again = " ".join(f"{flag} {shlex.quote(str(v))}" for flag, v in given if v) + (" --me" if me else "")
        click.echo(f"\nOlder jobs: herd jobs {again.strip() + ' ' if again.strip() else ''}--before {page['next']} "
                   "(or --all)")


def _jobs_row(job: dict, now: float) -> dict:
    ran = run_seconds(job, now)
    first = job.get("first_start_time") or job["start_time"]
    return {
        "id": job_label(job), "jobid": job["id"], "name": job["name"], "user": job["user"], "gpus": job["gpu_count"],
        "prio": job["priority"], "state": state_of(job), "exit": job["exit_code"], "submitted": stamp(job["submit_time"]),
        "elapsed": format_duration(ran) if ran is not None else None, "gpuh": gpu_hours(job, now),
        "node": job["allocation"]["node"] if job["allocation"] else None, "command": job["command"] or None,
        "started": stamp(job["start_time"]), "ended": stamp(job["end_time"]),
        "waited": format_duration(first - job["submit_time"]) if first else None,
    }


COMMANDS = (queue, jobs)
