"""``herd submit``, and what ``herd run`` shares with it: the options, and the ``JobRequest`` they make.

Apart from jobs.py because only a submission needs the job model (pydantic, tools.models): ``herd show``
and ``herd cancel`` start without it.
"""

from __future__ import annotations

import os
import shlex
import uuid

import click
from pydantic import ValidationError

from agent.cli.client import Client, CliError, server_command
from agent.cli.export import exported
from agent.cli.output import print_json
from agent.cli.params import DURATION, JOBS
from agent.messages import describe_errors
from tools.models import JobRequest


def submit_options(run):
    """The options ``herd submit`` and ``herd run`` share (Slurm's short flags where they have one)."""
    options = [
        click.option("-g", "--gpus", type=int, default=1, help="whole GPUs on one node (default 1)"),
        click.option("-p", "--priority", type=int, help="1 (lowest) to 10 (highest); default 5"),
        click.option("-n", "-J", "--name", help="a label for the job"),
        click.option("-t", "--time", "time_limit", type=DURATION,
                     help="time limit: 2h, 90m, 1h30m, 2:00:00, 1-12:00:00, or minutes (120)"),
        click.option("--estimate", type=DURATION, help="your estimate of the run time (sjf and backfill use it)"),
        click.option("--user", help="owner (default: you, as the server knows you; another user: administrators only)"),
        click.option("-D", "--cwd", default=".", help="working directory on the server (default: here)"),
        click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="an environment variable (repeat)"),
        click.option("--export", default="ALL", show_default=True, metavar="ALL|NONE|NAME,...",
                     help="which of your shell's variables the job gets, as sbatch's --export; CUDA_VISIBLE_DEVICES "
                          "and HERD_* always come from the server"),
        click.option("--allow-idle", is_flag=True, flag_value=True, default=None,
                     help="the job may hold its GPUs idle (a notebook, a debugger): the server's idle check leaves "
                          "it alone"),
        click.option("--notify", metavar="URL|off", help="send this job's notifications to this webhook "
                     "(slack:https://... for Slack), or off; default: yours or the lab's from the server's config"),
        click.option("--notify-on", metavar="EVENT,...", help="which events notify: start,end,fail,timeout,idle,"
                     "preempt (default: the server's configured events)"),
    ]
    for option in reversed(options):
        run = option(run)
    return run


def build_request(command: tuple[str, ...], *, gpus: int, priority: int | None, name: str | None,
                  time_limit: float | None, estimate: float | None, cwd: str, env: tuple[str, ...], export: str,
                  **more) -> JobRequest:
    """The ``JobRequest`` of a submission, refused here (before any request) in the server's words."""
    if not command:
        raise CliError("no command given; e.g. herd submit --gpus 2 -- python train.py")
    variables = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env wants KEY=VALUE, not {item!r}")
        variables[key] = value
    try:
        variables, warning = exported(export, os.environ, variables)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--export") from None
    if warning:
        click.echo(f"herd: {warning}", err=True)
    try:
        # None leaves a field unset: the body carries what was given, and the server fills in its defaults.
        return JobRequest(
            # One word is a shell command line as typed ("a && b"); several are argv, quoted for the shell.
            command=command[0] if len(command) == 1 else shlex.join(command),
            name=name, gpu_count=gpus, priority=priority, cwd=os.path.abspath(cwd), env=variables or None,
            est_duration_s=estimate, time_limit_s=time_limit, **more,
        )
    except ValidationError as exc:
        raise CliError(describe_errors(exc.errors())) from None


def send(client: Client, request: JobRequest, user: str | None) -> dict:
    body = request.model_dump(mode="json", exclude_unset=True) | ({"user": user} if user else {})
    # One key per submission: if the answer is lost (the server crashed, the connection dropped), the
    # retry with the same key gets the job the first try made instead of queueing it twice.
    return client.call("POST", "/queue/submit", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}, retry=True)


@server_command("submit", "queue a job: herd submit -g 2 -t 2:00:00 -- python train.py --lr 3e-4")
@submit_options
@click.option("--retries", type=int, help="retries after a failure (default 1)")
@click.option("-b", "--begin", help="not before: 22:00, '2026-11-30 22:00', +3h")
@click.option("--after", type=JOBS, multiple=True,
              help="start only after these jobs completed successfully (repeat or comma-separate)")
@click.option("--after-any", type=JOBS, multiple=True, help="start only after these jobs ended, however they ended")
@click.option("--preemptible", is_flag=True,
              help="may be stopped (SIGTERM, grace, SIGKILL) and requeued for a job of higher priority")
@click.option("-a", "--array", help="an array of tasks: 0-109, 0-109%8 (8 at once), 1,3,5-7; each task sees "
                                    "HERD_ARRAY_TASK_ID")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(client: Client, as_json: bool, command: tuple[str, ...], user: str | None, retries: int | None,
           begin: str | None, after: tuple[list[int], ...], after_any: tuple[list[int], ...], preemptible: bool,
           array: str | None, **given) -> None:
    request = build_request(
        command, max_retries=retries, begin_at=begin, after=[j for ids in after for j in ids] or None,
        after_any=[j for ids in after_any for j in ids] or None, preemptible=preemptible or None, array=array, **given)
    result = send(client, request, user)
    if as_json:
        print_json(result)
        return
    where = f", position {result['position']} in the queue" if result.get("position") else ""
    if result.get("array_id") is not None:
        first, tasks = result["array_id"], result["tasks"]
        click.echo(f"Submitted array {first}: {tasks} task(s), jobs {first}-{first + tasks - 1} "
                   f"({result['status']}{where}); `herd queue` shows it on one line, `herd cancel {first}` cancels it")
    else:
        click.echo(f"Submitted job {result['job_id']} ({result['status']}{where})")


COMMANDS = (submit,)
