"""``herd attach`` (watch a running job's tmux window, read-only) and ``herd run`` (a terminal session on
GPUs, like ``srun --pty``: it waits for GPUs, then attaches you read-write to the job's window).

Both run tmux here, on this machine: they work on the job's node (where the server and its tmux run),
as the job's owner or an administrator, when this user may use the server's tmux socket (a personal or
single-user server's is its user's; a shared server's is root's). Otherwise ``herd attach`` follows the
job's output instead, and says why.

A viewer gets a session of its own holding only the job's window (linked, ``link-window``): two people
watching two jobs do not switch each other's window, nobody sees another job's window from it, and when
the job's window closes the viewer's session has no window left, so tmux ends it and the viewer's client.
(Not a session grouped with the server's, watched by a hook: tmux 3.3 was seen to crash that way, and
its crash would take every job with it.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import click

from agent.cli.client import Client, CliError, resolve, server_command
from agent.cli.jobs import TERMINAL, show_log
from agent.cli.output import print_json
from agent.cli.params import JOB_REF
from agent.cli.submit import build_request, send, submit_options

WAIT_POLL_S = 0.25  # how often `herd run` looks whether its job has started


@server_command("attach", "watch a running job's tmux window, read-only (run it on the job's node)")
@click.argument("ref", type=JOB_REF, metavar="JOB")
def attach(client: Client, as_json: bool, ref: str) -> int:
    job_id = resolve(client, ref)
    window = client.call("GET", f"/jobs/{job_id}/window")
    if as_json:
        print_json(window)
        return 0
    return open_window(client, window, write=False)


@server_command("run", "a terminal session on GPUs, like srun --pty: herd run -g 1 -t 2h -- bash")
@submit_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(client: Client, as_json: bool, command: tuple[str, ...], user: str | None, **given) -> int:
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise CliError("herd run attaches you to a terminal session: run it in a terminal (herd submit queues a "
                       "job without one)")
    if not command:
        raise CliError("no command given; e.g. herd run -g 1 -- bash")
    request = build_request(command, interactive=True, **given)
    job_id = send(client, request, user)["job_id"]
    click.echo(f"herd: job {job_id} is waiting for GPUs (Ctrl-C cancels it)", err=True)
    said = None
    try:
        while True:
            job = client.call("GET", f"/jobs/{job_id}")
            if job["status"] == "running":
                break
            if job["status"] in TERMINAL:
                if job["start_time"] is None:
                    raise CliError(f"job {job_id} is {job['status']}; it never started")
                click.echo(f"herd: job {job_id} ran and ended before herd could attach; what it showed:", err=True)
                show_log(client, job_id, follow=False)
                return _exit_code(job)
            why = f"{job['pending_reason']}: {job['pending_message']}" if job["pending_reason"] else None
            if why and why != said:
                click.echo(f"herd: job {job_id} waits ({why})", err=True)
                said = why
            time.sleep(WAIT_POLL_S)
        window = client.call("GET", f"/jobs/{job_id}/window")
    except KeyboardInterrupt:
        client.call("POST", "/queue/cancel", json={"jobs": [str(job_id)]})
        click.echo(f"herd: cancelled job {job_id}", err=True)
        return 130
    return open_window(client, window, write=True)


def open_window(client: Client, window: dict, *, write: bool) -> int:
    """Attach to the job's window (read-only unless ``write``); when that cannot be done from here, follow
    its output. Returns the job's exit code once it has ended, else 0 (detached: the job goes on)."""
    job_id, socket = window["job_id"], window["socket"]
    tmux = shutil.which("tmux")
    why = None
    if tmux is None:
        why = "tmux is not installed here"
    elif not os.path.exists(socket):
        why = f"it runs on node {window['node']}, whose tmux is not on this machine (run herd attach {job_id} there)"
    elif not os.access(socket, os.R_OK | os.W_OK):
        why = f"its window is in the server's tmux ({socket}), which is not yours to use (a shared server's is root's)"
    elif not sys.stdin.isatty() or not sys.stdout.isatty():
        why = "this is not a terminal"
    if why is not None:
        if write:
            raise CliError(f"cannot attach to job {job_id}: {why}; `herd cancel {job_id}` ends it")
        click.echo(f"herd: cannot show job {job_id}'s window: {why}; following its output instead (Ctrl-C stops)",
                   err=True)
        return show_log(client, job_id, follow=True)
    view = f"herd-view-{job_id}-{os.getpid()}"
    # A session of its own, its first window a placeholder that the job's window, linked in, replaces.
    made = subprocess.run(
        [tmux, "-S", socket, "new-session", "-d", "-s", view, "-n", "herd-placeholder", "sleep 60", ";",
         "link-window", "-s", f"={window['session']}:={window['window']}", "-t", f"={view}:", ";",
         "kill-window", "-t", f"={view}:=herd-placeholder"],
        capture_output=True, text=True)
    if made.returncode != 0:
        raise CliError(f"cannot open a view of job {job_id}'s window: {made.stderr.strip()}")
    mode = "read-write: what you type reaches the job" if write else "read-only"
    click.echo(f"herd: attaching to job {job_id}'s window, {mode}; detach with Ctrl-b d", err=True)
    subprocess.run([tmux, "-S", socket, "attach-session", *([] if write else ["-r"]), "-t", f"={view}"])
    # Detached while the job runs: the view goes, the job's window (linked in the server's session) stays.
    subprocess.run([tmux, "-S", socket, "kill-session", "-t", f"={view}"], capture_output=True)
    job = client.call("GET", f"/jobs/{job_id}")
    deadline = time.monotonic() + 5
    while job["status"] not in TERMINAL and write and time.monotonic() < deadline:
        time.sleep(0.2)  # its window closed: its end is recorded in a moment
        job = client.call("GET", f"/jobs/{job_id}")
    if job["status"] in TERMINAL:
        click.echo(f"herd: job {job_id} {job['status']} (exit code {job['exit_code']})", err=True)
        return _exit_code(job)
    click.echo(f"herd: detached; job {job_id} goes on (herd attach {job_id} to watch it again, herd cancel {job_id} "
               "to end it)", err=True)
    return 0


def _exit_code(job: dict) -> int:
    code = job["exit_code"]
    return code if isinstance(code, int) and 0 <= code < 256 else 1


COMMANDS = (run, attach)
