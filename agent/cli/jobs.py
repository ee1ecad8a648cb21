"""Jobs: submit, queue, show, logs, cancel, priority, jobs, explain."""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid

import click
from pydantic import ValidationError

from agent.cli.client import Client, CliError, server_command
from agent.cli.output import clock, format_duration, print_json, stamp, table, when
from agent.cli.params import DURATION, JOB, JOBS
from agent.messages import describe_errors
from tools.models import JobRequest

TERMINAL = ("completed", "failed", "cancelled")
QUEUE_PAGE = 1000  # jobs per request when reading the whole queue
JOBS_PAGE = 50  # jobs `herd jobs` shows unless told otherwise
FOLLOW_POLL_S = 0.5


@server_command("submit", "queue a job: herd submit --gpus 2 -- python train.py --lr 3e-4")
@click.option("--gpus", type=int, default=1, help="whole GPUs on one node (default 1)")
@click.option("--priority", type=int, help="1 (lowest) to 10 (highest); default 5")
@click.option("--name", help="a label for the job")
@click.option("--time", "time_limit", type=DURATION, help="time limit, e.g. 2h, 90m, 1h30m")
@click.option("--estimate", type=DURATION, help="your estimate of the run time (sjf uses it)")
@click.option("--user", help="owner (default: you, as the server knows you; another user: administrators only)")
@click.option("--cwd", default=".", help="working directory on the server (default: here)")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="extra environment variable (repeat)")
@click.option("--retries", type=int, help="retries after a failure (default 1)")
@click.option("--begin", help="not before: 22:00, '2026-11-30 22:00', +3h")
@click.option("--after", type=JOBS, multiple=True,
              help="start only after these jobs completed successfully (repeat or comma-separate)")
@click.option("--after-any", type=JOBS, multiple=True, help="start only after these jobs ended, however they ended")
@click.option("--preemptible", is_flag=True,
              help="may be stopped (SIGTERM, grace, SIGKILL) and requeued for a job of higher priority")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(client: Client, as_json: bool, command: tuple[str, ...], gpus: int, priority: int | None, name: str | None,
           time_limit: float | None, estimate: float | None, user: str | None, cwd: str, env: tuple[str, ...],
           retries: int | None, begin: str | None, after: tuple[list[int], ...], after_any: tuple[list[int], ...],
           preemptible: bool) -> None:
    if not command:
        raise CliError("no command given; e.g. herd submit --gpus 2 -- python train.py")
    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env wants KEY=VALUE, not {item!r}")
        variables[key] = value
    try:
        # None leaves a field unset: the body carries what was given, and the server fills in its defaults.
        request = JobRequest(
            # One word is a shell command line as typed ("a && b"); several are argv, quoted for the shell.
            command=command[0] if len(command) == 1 else shlex.join(command),
            name=name, gpu_count=gpus, priority=priority, cwd=os.path.abspath(cwd), env=variables or None,
            est_duration_s=estimate, time_limit_s=time_limit, max_retries=retries, begin_at=begin,
            after=[j for ids in after for j in ids] or None, after_any=[j for ids in after_any for j in ids] or None,
            preemptible=preemptible or None,
        )
    except ValidationError as exc:
        # Refused here, before any request, in the server's words for the same request.
        raise CliError(describe_errors(exc.errors())) from None
    body = request.model_dump(mode="json", exclude_unset=True) | ({"user": user} if user else {})
    # One key per submission: if the answer is lost (the server crashed, the connection dropped), the
    # retry with the same key gets the job the first try made instead of queueing it twice.
    result = client.call("POST", "/queue/submit", json=body, headers={"Idempotency-Key": str(uuid.uuid4())},
                         retry=True)
    if as_json:
        print_json(result)
        return
    where = f", position {result['position']} in the queue" if result.get("position") else ""
    click.echo(f"Submitted job {result['job_id']} ({result['status']}{where})")


@server_command("queue", "running and waiting jobs in scheduling order, with reasons")
@click.option("--user", help="only this user's jobs")
def queue(client: Client, as_json: bool, user: str | None) -> None:
    view = _whole_queue(client, user)
    if as_json:
        print_json(view)
        return
    now = time.time()
    rows = []
    for entry in view["jobs"]:
        job = entry["job"]
        running = job["status"] == "running" and job["start_time"]
        since = job["start_time"] if running else job["submit_time"]
        # Running: when it started; waiting: when the plan expects it to start.
        start = clock(job["start_time"], now) if running else when(entry["estimated_start"], now)
        rows.append([
            job["id"], job["name"] or "-", job["user"], job["gpu_count"], job["priority"], job["status"],
            format_duration(now - since), start, _where_or_why(job, entry["position"]),
        ])
    if rows:
        click.echo(table(["ID", "NAME", "USER", "GPUS", "PRIO", "STATE", "FOR", "START", "WHERE / WHY WAITING"], rows))
    else:
        click.echo("The queue is empty.")
    stats = view["stats"]
    counts = stats["counts"]
    running = counts.get("running", 0) + counts.get("scheduled", 0)
    click.echo(
        f"\n{running} running on {stats['running_gpus']} GPU(s); {counts.get('queued', 0)} waiting for "
        f"{stats['queued_gpus']} GPU(s) (limit {stats['max_queued']}); policy {view['policy']}"
    )


def _whole_queue(client: Client, user: str | None) -> dict:
    """``GET /queue`` page after page: the first page's view, with every page's jobs."""
    params: dict = {"limit": QUEUE_PAGE} | ({"user": user} if user else {})
    view = client.call("GET", "/queue", params=params)
    entries = list(view["jobs"])
    while view.get("next"):
        view = client.call("GET", "/queue", params=params | {"cursor": view["next"]})
        entries += view["jobs"]
    return view | {"jobs": entries, "next": None}


def _where_or_why(job: dict, position: int | None) -> str:
    if job["allocation"]:
        alloc = job["allocation"]
        text = f"{alloc['node']}:{','.join(str(g) for g in alloc['gpus'])}"
        return text + (f" (stopping: {job['stop_reason']})" if job.get("stop_reason") else "")
    reason = job.get("pending_reason") or ""
    message = job.get("pending_message") or ""
    return f"#{position} {reason}: {message}" if position else f"{reason}: {message}"


@server_command("show", "one job's record and events")
@click.argument("job_id", type=JOB, metavar="JOB")
def show(client: Client, as_json: bool, job_id: int) -> None:
    job = client.call("GET", f"/jobs/{job_id}")
    events = client.call("GET", f"/jobs/{job_id}/events")
    if as_json:
        print_json({"job": job, "events": events})
        return
    alloc = job["allocation"]
    fields = [
        ("job", f"{job['id']} {job['name'] or ''}".strip()),
        ("user", job["user"]),
        ("status", job["status"] + (f" (stopping: {job['stop_reason']})" if job.get("stop_reason") else "")),
        ("waiting", f"{job['pending_reason']}: {job['pending_message']}" if job["pending_reason"] else None),
        ("position", job["position"]),
        ("starts", stamp(job["estimated_start"]) + " (estimated)" if job["estimated_start"] else None),
        ("not before", stamp(job["begin_at"]) if job["begin_at"] else None),
        ("after", ", ".join(map(str, job["after"])) + " (completed)" if job["after"] else None),
        ("after any", ", ".join(map(str, job["after_any"])) + " (ended)" if job["after_any"] else None),
        ("preemptible", f"yes (preempted {job['preemptions']} time(s))" if job["preemptible"] else None),
        ("command", job["command"]),
        ("cwd", job["cwd"]),
        ("gpus", f"{job['gpu_count']}" + (f" on {alloc['node']}:{','.join(map(str, alloc['gpus']))}" if alloc else "")),
        ("priority", job["priority"]),
        ("exit code", job["exit_code"]),
        ("attempts", f"{job['attempts']} (retries allowed: {job['max_retries']})"),
        ("submitted", stamp(job["submit_time"])),
        ("started", stamp(job["start_time"])),
        ("ended", stamp(job["end_time"])),
        ("time limit", format_duration(job["time_limit_s"]) if job["time_limit_s"] else None),
        ("estimate", format_duration(job["est_duration_s"]) if job["est_duration_s"] else None),
        ("log", job["log_path"]),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        if value not in (None, ""):
            click.echo(f"{key.ljust(width)}  {value}")
    if events:
        click.echo("\nevents:")
        for event in events:
            click.echo(f"  {stamp(event['time'])}  {event['kind']:<10}  {event['message']}")


@server_command("logs", "a job's output")
@click.argument("job_id", type=JOB, metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
@click.option("--tail", type=int, help="only the last N lines")
def logs(client: Client, as_json: bool, job_id: int, follow: bool, tail: int | None) -> int:
    chunk = client.call("GET", f"/jobs/{job_id}/logs", params={"tail": tail} if tail is not None else {})
    if as_json and not follow:
        print_json(chunk)
        return 0
    _write(chunk["text"])
    if not follow:
        return 0
    offset = chunk["next_offset"]
    try:
        while True:
            done = chunk["status"] in TERMINAL
            time.sleep(FOLLOW_POLL_S if not done else 0)
            chunk = client.call("GET", f"/jobs/{job_id}/logs", params={"offset": offset})
            _write(chunk["text"])
            offset = chunk["next_offset"]
            if done and not chunk["text"]:  # ended, and everything it wrote is shown
                return 0
    except KeyboardInterrupt:
        return 130


def _write(text: str) -> None:
    # The job's bytes as they are: click.echo would strip its colours when stdout is not a terminal.
    sys.stdout.write(text)
    sys.stdout.flush()


@server_command("cancel", "cancel a queued job or stop a running one")
@click.argument("job_id", type=JOB, metavar="JOB")
def cancel(client: Client, as_json: bool, job_id: int) -> None:
    job = client.call("DELETE", f"/queue/{job_id}")
    if as_json:
        print_json(job)
    elif job["status"] == "cancelled":
        click.echo(f"Cancelled job {job['id']}.")
    else:
        click.echo(f"Stopping job {job['id']}: SIGTERM now, SIGKILL after the grace period; "
                   "its GPUs are freed when it ends.")


@server_command("priority", "change a queued job's priority")
@click.argument("job_id", type=JOB, metavar="JOB")
@click.argument("priority", type=int)
def priority(client: Client, as_json: bool, job_id: int, priority: int) -> None:
    job = client.call("PATCH", f"/queue/{job_id}/priority", json={"priority": priority})
    if as_json:
        print_json(job)
    else:
        click.echo(f"Job {job['id']} now has priority {job['priority']}.")


@server_command("jobs", "jobs of any status, finished ones too, newest first, a page at a time")
@click.option("--status", help="e.g. running or completed,failed")
@click.option("--user")
@click.option("--limit", type=click.IntRange(1, 1000), default=JOBS_PAGE, show_default=True,
              help="jobs per page: the newest N")
@click.option("--before", type=JOB, help="only jobs older than this one (the next page)")
@click.option("--all", "every", is_flag=True, help="every page, to the oldest job")
def jobs(client: Client, as_json: bool, status: str | None, user: str | None, limit: int, before: int | None,
         every: bool) -> None:
    params = {k: v for k, v in (("status", status), ("user", user), ("limit", limit), ("cursor", before)) if v}
    page = client.call("GET", "/jobs", params=params)
    found = list(page["jobs"])
    while every and page["next"]:
        page = client.call("GET", "/jobs", params=params | {"cursor": page["next"]})
        found += page["jobs"]
    if as_json:
        print_json({"jobs": found, "next": page["next"]})
        return
    rows = [
        [j["id"], j["name"] or "-", j["user"], j["gpu_count"], j["priority"], j["status"], j["exit_code"],
         stamp(j["submit_time"]), j["command"][:60]]
        for j in found
    ]
    click.echo(table(["ID", "NAME", "USER", "GPUS", "PRIO", "STATE", "EXIT", "SUBMITTED", "COMMAND"], rows)
               if rows else "No jobs.")
    if page["next"]:
        again = " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in (("status", status), ("user", user)) if v)
        click.echo(f"\nOlder jobs: herd jobs {again + ' ' if again else ''}--before {page['next']} (or --all)")


@server_command("explain", "why a job waits: pending reason, place, estimated start, priority factors, quotas")
@click.argument("job_id", type=JOB, metavar="JOB")
def explain(client: Client, as_json: bool, job_id: int) -> None:
    data = client.call("GET", f"/jobs/{job_id}/explain")
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
    for key, value in fields:
        if value:
            click.echo(f"{key.ljust(8)}  {value}")
    rows = [[f["name"], f"{f['value']:.3f}", f"{f['weight']:g}", f"{f['points']:.1f}", f["detail"]] for f in data["factors"]]
    rows.append(["total", "", "", f"{data['total']:.1f}", "higher starts first"])
    click.echo()
    click.echo(table(["FACTOR", "VALUE", "WEIGHT", "POINTS", "DETAIL"], rows))


def _quota_use(kind: str, use: dict) -> str:
    limit = f"of {use['quota']}" if use["quota"] is not None else "(no limit)"
    return f"{kind} {use['name']} holds {use['in_use']} GPU(s) {limit}"


COMMANDS = (submit, queue, show, logs, cancel, priority, jobs, explain)
