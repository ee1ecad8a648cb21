"""One job at a time, or many: show, logs, cancel, priority, explain.

``herd submit`` is in ``submit.py``, ``herd queue`` and ``herd jobs`` in ``listing.py``, ``herd report`` in
``report.py``, ``herd attach`` and ``herd run`` in ``attach.py``.
"""

from __future__ import annotations

import sys
import time

import click

from agent.cli.client import Client, resolve, server_command
from agent.cli.output import (
    format_duration,
    format_size,
    gpu_hours,
    print_json,
    run_seconds,
    stamp,
    table,
    terminal_width,
)
from agent.cli.params import JOB_REF, STATES

TERMINAL = ("completed", "failed", "cancelled")
FOLLOW_WAIT_S = 20  # a follower's request waits this long on the server for new output
LOG_PAGE = 1 << 20  # bytes per request when reading a whole log
QUEUED_POLL_S = 1.0  # how often a follower asks again while the job waits to (re)start


def _notify(job: dict) -> str | None:
    """Where the job's own notifications go, and which (shown to its owner; none: the server's config)."""
    target, events = job.get("notify"), job.get("notify_on")
    if target is None and events is None:
        return None
    return f"{target or 'as configured'}" + (f" on {','.join(events)}" if events is not None and target != "off" else "")


@server_command("show", "one job's record and events (its command whole)")
@click.argument("ref", type=JOB_REF, metavar="JOB")
def show(client: Client, as_json: bool, ref: str) -> None:
    job_id = resolve(client, ref)
    job = client.call("GET", f"/jobs/{job_id}")
    events = client.call("GET", f"/jobs/{job_id}/events")
    if as_json:
        print_json({"job": job, "events": events})
        return
    now = time.time()
    alloc = job["allocation"]
    ran = run_seconds(job, now)
    first = job.get("first_start_time") or job["start_time"]
    array = None
    if job.get("array_id") is not None:
        limit = f", at most {job['array_limit']} at once" if job.get("array_limit") else ""
        array = f"task {job['array_index']} of array {job['array_id']} ({job['array_size']} tasks{limit})"
    status = job["status"] + (f" (stopping: {job['stop_reason']})" if job.get("stop_reason") else "")
    if job.get("end_reason") == "timeout":
        status += " (timeout: stopped at its time limit)"
    fields = [
        ("job", f"{job['id']} {job['name'] or ''}".strip()),
        ("array", array),
        ("user", job["user"]),
        ("status", status),
        ("waiting", f"{job['pending_reason']}: {job['pending_message']}" if job["pending_reason"] else None),
        ("position", job["position"]),
        ("starts", stamp(job["estimated_start"]) + " (estimated)" if job["estimated_start"] else None),
        ("not before", stamp(job["begin_at"]) if job["begin_at"] else None),
        ("after", ", ".join(map(str, job["after"])) + " (completed)" if job["after"] else None),
        ("after any", ", ".join(map(str, job["after_any"])) + " (ended)" if job["after_any"] else None),
        ("preemptible", f"yes (preempted {job['preemptions']} time(s))" if job["preemptible"] else None),
        ("notify", _notify(job)),
        ("cwd", job["cwd"]),
        ("gpus", f"{job['gpu_count']}" + (" on " + " + ".join(f"{node}:{','.join(map(str, gpus))}" for node, gpus in
                                                             [(alloc["node"], alloc["gpus"]), *alloc.get("more", [])])
                                          if alloc else "")),
        ("priority", job["priority"]),
        ("exit code", job["exit_code"]),
        ("attempts", f"{job['attempts']} (retries allowed: {job['max_retries']})"),
        ("submitted", stamp(job["submit_time"])),
        ("started", stamp(job["start_time"])),
        ("ended", stamp(job["end_time"])),
        ("waited", format_duration(first - job["submit_time"]) + " (to its first start)" if first else None),
        ("gpu use", _gpu_use(job.get("gpu_usage"))),
        ("ran", f"{format_duration(ran)}, {gpu_hours(job, now)} GPU-hours" if ran is not None else None),
        ("time limit", format_duration(job["time_limit_s"]) if job["time_limit_s"] else None),
        ("estimate", _estimate(job)),
        ("log", job["log_path"]),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        if value not in (None, ""):
            click.echo(f"{key.ljust(width)}  {value}")
    # The command whole, as it runs (several lines stay several lines).
    lines = job["command"].splitlines() or [""]
    click.echo(f"{'command'.ljust(width)}  {lines[0]}")
    for line in lines[1:]:
        click.echo(f"{''.ljust(width)}  {line}")
    if events:
        click.echo("\nevents:")
        for event in events:
            click.echo(f"  {stamp(event['time'])}  {event['kind']:<10}  {event['message']}")


@server_command("logs", "a job's output: the last MiB (saying so), --all, --tail N, or -f to follow it")
@click.argument("ref", type=JOB_REF, metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
@click.option("--tail", type=click.IntRange(0), help="only the last N lines")
@click.option("--all", "whole", is_flag=True, help="the whole log, however long, a MiB at a time")
@click.option("--rank", type=click.IntRange(0), help="a gang job's part: only its log (default: every part's; "
              "-f follows rank 0)")
def logs(client: Client, as_json: bool, ref: str, follow: bool, tail: int | None, whole: bool, rank: int | None) -> int:
    return show_log(client, resolve(client, ref), follow=follow, tail=tail, whole=whole, rank=rank, as_json=as_json)


ESTIMATE_SOURCES = {"user": "given with the job", "history": "predicted from finished jobs like it"}


def _estimate(job: dict) -> str | None:
    """The run-time estimate the plan uses and where it came from (``est_source``)."""
    if not job["est_duration_s"]:
        waiting_or_running = job["status"] in ("queued", "running")
        return "none (the default run time stands in)" if waiting_or_running and not job["time_limit_s"] else None
    source = job.get("est_source")
    return format_duration(job["est_duration_s"]) + (f" ({ESTIMATE_SOURCES.get(source, source)})" if source else "")


def _gpu_use(usage: dict | None) -> str | None:
    if not usage or not usage.get("samples"):
        return None
    return (f"utilization {usage['utilization_mean_pct']:.0f}% mean, {usage['utilization_peak_pct']:.0f}% peak; "
            f"memory {usage['memory_mean_mib']:,.0f} MiB mean, {usage['memory_peak_mib']:,} MiB peak "
            f"({usage['samples']} samples)")


def show_log(client: Client, job_id: int, *, follow: bool, tail: int | None = None, whole: bool = False,
             rank: int | None = None, as_json: bool = False) -> int:
    """Print a job's log (see ``herd logs``); 130 after Ctrl-C while following."""
    path = f"/jobs/{job_id}/logs"
    part = {"rank": rank} if rank is not None else {}
    if whole:
        chunk = client.call("GET", path, params={**part, "offset": 0, "length": LOG_PAGE})
        _write(chunk["text"])
        while chunk["next_offset"] < chunk["size"] and chunk["text"]:
            chunk = client.call("GET", path, params={**part, "offset": chunk["next_offset"], "length": LOG_PAGE})
            _write(chunk["text"])
    else:
        chunk = client.call("GET", path, params={**part, "tail": tail} if tail is not None else part)
        if as_json and not follow:
            print_json(chunk)
            return 0
        _write(chunk["text"])
        if chunk.get("offset"):
            shown = chunk["next_offset"] - chunk["offset"]
            more = "" if tail is None or chunk["text"].count("\n") >= tail else f" (not {tail} lines: a MiB at most)"
            click.echo(f"herd: that was the last {format_size(shown)} of {format_size(chunk['size'])}{more} of job "
                       f"{job_id}'s log; --all for everything", err=True)
    if not follow:
        return 0
    offset = chunk["next_offset"]
    try:
        while True:
            done = chunk["status"] in TERMINAL
            # The server answers as soon as there is more, or the job ends, or after FOLLOW_WAIT_S.
            chunk = client.call("GET", path, params={**part, "offset": offset, "wait": 0 if done else FOLLOW_WAIT_S})
            _write(chunk["text"])
            offset = chunk["next_offset"]
            if done and not chunk["text"]:  # ended, and everything it wrote is shown
                return 0
            if chunk["status"] == "queued" and not chunk["text"]:
                time.sleep(QUEUED_POLL_S)  # the server waits only on a running job's log
    except KeyboardInterrupt:
        return 130


def _write(text: str) -> None:
    # The job's bytes as they are: click.echo would strip its colours when stdout is not a terminal.
    sys.stdout.write(text)
    sys.stdout.flush()


@server_command("cancel", "cancel jobs: herd cancel 9 10 12_3 (an array's id: all its tasks), or --user, --name, --state")
@click.argument("refs", nargs=-1, type=JOB_REF, metavar="[JOB]...")
@click.option("-u", "--user", help="only this user's jobs (yours, unless you are an administrator)")
@click.option("--me", is_flag=True, help="only your jobs")
@click.option("-n", "--name", help="only jobs of this name")
@click.option("-t", "--state", "states", type=STATES, help="only jobs in these states: queued (PD), running (R)")
def cancel(client: Client, as_json: bool, refs: tuple[str, ...], user: str | None, me: bool, name: str | None,
           states: list[str] | None) -> int:
    if not refs and not (user or me or name or states):
        raise click.UsageError("say which jobs: herd cancel 9 10 12_3, or --user, --me, --name, --state",
                               click.get_current_context())
    body = {"jobs": list(refs), "user": user, "name": name, "states": states, "mine": me or None}
    done = client.call("POST", "/queue/cancel", json={k: v for k, v in body.items() if v is not None})
    if as_json:
        print_json(done)
    else:
        if done["cancelled"]:
            click.echo(f"Cancelled {_jobs(done['cancelled'])}.")
        if done["stopping"]:
            click.echo(f"Stopping {_jobs(done['stopping'])}: SIGTERM now, SIGKILL after the grace period; "
                       "their GPUs are freed when they end." if len(done["stopping"]) > 1 else
                       f"Stopping {_jobs(done['stopping'])}: SIGTERM now, SIGKILL after the grace period; "
                       "its GPUs are freed when it ends.")
        if not done["cancelled"] and not done["stopping"] and not done["refused"]:
            click.echo("No job matched; nothing was cancelled.")
    for why in done["refused"]:
        click.echo(f"herd: {why}", err=True)
    return 1 if done["refused"] else 0


def _jobs(ids: list[int]) -> str:
    return f"job {ids[0]}" if len(ids) == 1 else "jobs " + ", ".join(map(str, ids))


@server_command("priority", "change a queued job's priority")
@click.argument("ref", type=JOB_REF, metavar="JOB")
@click.argument("priority", type=int)
def priority(client: Client, as_json: bool, ref: str, priority: int) -> None:
    job = client.call("PATCH", f"/queue/{resolve(client, ref)}/priority", json={"priority": priority})
    if as_json:
        print_json(job)
    else:
        click.echo(f"Job {job['id']} now has priority {job['priority']}.")


@server_command("explain", "why a job waits: pending reason, place, estimated start, priority factors, quotas, "
                           "reservations")
@click.argument("ref", type=JOB_REF, metavar="JOB")
def explain(client: Client, as_json: bool, ref: str) -> None:
    data = client.call("GET", f"/jobs/{resolve(client, ref)}/explain")
    if as_json:
        print_json(data)
        return
    head = f"job {data['job_id']} ({data['user']}, {data['gpu_count']} GPU(s)): {data['status']}"
    if data["status"] != "queued":
        click.echo(f"{head}; {data['message']}")
        return
    place = f", #{data['position']} in line" if data["position"] else ""
    click.echo(f"{head}{place}; policy {data['policy']}")
    quota = _quota_use("user", data["user_quota"])
    if data["group_quota"]:
        quota += "; " + _quota_use("group", data["group_quota"])
    fields = [
        ("waiting", f"{data['reason']}: {data['message']}" if data["reason"] else data["message"]),
        ("starts", stamp(data["estimated_start"]) + " (estimated)" if data["estimated_start"] else "- (cannot plan it yet)"),
        ("quota", quota),
        ("note", data["note"]),
    ]
    fields += [("reserved", r) for r in data.get("reservations") or []]
    for key, value in fields:
        if value:
            click.echo(f"{key.ljust(8)}  {value}")
    rows = [[f["name"], f"{f['value']:.3f}", f"{f['weight']:g}", f"{f['points']:.1f}", f["detail"]] for f in data["factors"]]
    rows.append(["total", "", "", f"{data['total']:.1f}", "higher starts first"])
    click.echo()
    click.echo(table(("FACTOR", "VALUE", "WEIGHT", "POINTS", "DETAIL"), rows, width=terminal_width()))


def _quota_use(kind: str, use: dict) -> str:
    limit = f"of {use['quota']}" if use["quota"] is not None else "(no limit)"
    return f"{kind} {use['name']} holds {use['in_use']} GPU(s) {limit}"


COMMANDS = (show, logs, cancel, priority, explain)
