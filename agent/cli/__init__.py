"""``herd``: the command line. ``herd serve`` runs the server; every other command talks to it over REST.

The server is found at ``--url`` or ``$HERD_URL``; else through its Unix socket (``$HERD_SOCKET``, or
``herd.sock`` in ``$HERD_WORKDIR`` or ``./.herd``) when it exists, where the kernel says who you are; else
at ``http://127.0.0.1:10000``. Over TCP, a change needs your token (``herd token``). Output is a table
for people, or the server's JSON with ``--json``. A failed command exits non-zero with the server's
message on one line, never a traceback: 1 when the server refused or the command failed, 2 for a usage
error, 3 when no server answers, 130 after Ctrl-C, 141 when the reader of its output went away.

Layout: ``client.py`` the HTTP client, ``errors.py`` the exit codes, ``output.py`` tables and every time and
duration shown, ``params.py`` the values read from the command line, ``export.py`` what ``--export``
sends; the commands, on click, in ``submit.py``, ``jobs.py``, ``listing.py``, ``report.py``, ``attach.py``,
``cluster.py``, ``chat.py``, ``tokens.py`` and ``serve.py``. Other packages add commands through the
``gpuherd.commands`` entry points (``herd eval`` comes from ``evals``, which agent/ never imports).

A command's module is imported only when that command runs (``COMMANDS`` names it and keeps its short
help for ``herd --help``), and the entry points are read only for a name not in ``COMMANDS`` or for a
listing: ``herd submit`` pays for the client and the job model, not for the server's settings and policies.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

import click

from agent.cli.errors import EXIT_PIPE, CliError, PipeClosed

PLUGINS = "gpuherd.commands"
COMPLETE_VAR = "_HERD_COMPLETE"

# name -> ("module of agent.cli:attribute", short help), in the order ``herd --help`` lists them.
# tests/test_cli_lazy.py checks each short help against the command's own.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve:serve", "run the server (REST API and scheduler)"),
    "submit": ("submit:submit", "queue a job: herd submit -g 2 -t 2:00:00 -- python train.py --lr 3e-4"),
    "queue": ("listing:queue", "running and waiting jobs in scheduling order, with reasons (squeue)"),
    "jobs": ("listing:jobs",
             "jobs of any state, finished ones too, newest first, with run time and GPU-hours (sacct)"),
    "show": ("jobs:show", "one job's record and events (its command whole)"),
    "logs": ("jobs:logs", "a job's output: the last MiB (saying so), --all, --tail N, or -f to follow it"),
    "cancel": ("jobs:cancel",
               "cancel jobs: herd cancel 9 10 12_3 (an array's id: all its tasks), or --user, --name, --state"),
    "priority": ("jobs:priority", "change a queued job's priority"),
    "explain": ("jobs:explain",
                "why a job waits: pending reason, place, estimated start, priority factors, quotas, reservations"),
    "run": ("attach:run", "a terminal session on GPUs, like srun --pty: herd run -g 1 -t 2h -- bash"),
    "attach": ("attach:attach", "watch a running job's tmux window, read-only (run it on the job's node)"),
    "report": ("report:report",
               "GPU-hours, jobs, failures and mean wait per user, group or node: herd report --since 7d"),
    "gpus": ("cluster:gpus", "nodes and GPUs: free, allocated, drained; live readings"),
    "drain": ("cluster:drain", "start no new job on a GPU (administrators): herd drain gpu01:3 -r 'fan noise'"),
    "undrain": ("cluster:undrain", "let jobs on a drained GPU again (administrators): herd undrain gpu01:3"),
    "status": ("cluster:status", "the scheduler's state and counts"),
    "start": ("cluster:start", "let queued jobs start"),
    "stop": ("cluster:stop", "start no new jobs (running jobs go on)"),
    "policy": ("cluster:policy", "show the scheduling policy, or set it: herd policy fair_share"),
    "quotas": ("cluster:quotas", "GPU quotas per user and group: quota, GPUs in use, GPUs waiting"),
    "reserve": ("cluster:reserve",
                "keep GPUs for a user or group: herd reserve --gpus 2 --user ana --start 22:00 --end +8h"),
    "reservations": ("cluster:reservations", "GPU reservations not over yet"),
    "unreserve": ("cluster:unreserve", "remove a reservation"),
    "ask": ("chat:ask", 'ask the agent in plain language: herd ask "4 GPUs for 3 hours -- python ft.py"'),
    "token": ("tokens:token", "mint a token for TCP use; list or revoke tokens"),
}


class _Listed(click.Command):
    """What ``herd --help`` shows of a command not imported yet: its name and short help."""

    def __init__(self, name: str, short_help: str) -> None:
        super().__init__(name, short_help=short_help)


class _Listing(click.Group):
    """The commands given, in the order given (a plain group sorts them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class Herd(click.Group):
    """``COMMANDS``, then the commands added here, then those of the entry points; each imported when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from importlib.metadata import entry_points

        known = [*COMMANDS, *self.commands]
        return [*known, *sorted({ep.name for ep in entry_points(group=PLUGINS)} - set(known))]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands without importing them: ``COMMANDS`` carries their short help."""
        listed = _Listing("herd", commands=[
            _Listed(name, COMMANDS[name][1]) if name in COMMANDS else self.get_command(ctx, name)
            for name in self.list_commands(ctx)])
        listed.format_commands(ctx, formatter)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # click would make it exit code 1
            raise PipeClosed() from None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attribute = COMMANDS[name][0].split(":")
            return getattr(importlib.import_module(f"agent.cli.{module}"), attribute)
        if name in self.commands:
            return self.commands[name]
        from importlib.metadata import entry_points

        for ep in entry_points(group=PLUGINS, name=name):
            return ep.load()
        return None


def _show_version(ctx: click.Context, _param: click.Parameter, wanted: bool) -> None:
    if not wanted or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("gpuherd")
    except PackageNotFoundError:
        found = "unknown (not installed)"
    click.echo(f"herd {found}", color=ctx.color)
    ctx.exit()


@click.group(cls=Herd)
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version and exit.")
def herd() -> None:
    """gpuherd: share GPUs, queue jobs, watch them run."""


@herd.command(short_help="print the shell code that completes herd's commands: bash | zsh | fish",
              help='Print the shell code that completes herd\'s commands. Add it to your shell\'s startup file, '
                   'e.g. eval "$(herd completion bash)" in ~/.bashrc.')
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    from click.shell_completion import get_completion_class

    click.echo(get_completion_class(shell)(herd, {}, "herd", COMPLETE_VAR).source())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``herd`` with ``argv`` (default: the process's arguments) and return its exit code."""
    try:
        return herd.main(argv, prog_name="herd", complete_var=COMPLETE_VAR, standalone_mode=False) or 0
    except (BrokenPipeError, PipeClosed):  # `herd jobs | head -1`: the reader has all it wanted
        _quiet_stdout()
        return EXIT_PIPE
    except CliError as exc:
        click.echo(f"herd: {exc}", err=True)
        return exc.code
    except click.ClickException as exc:  # a usage error, reported as click reports it
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C
        return 130
    except KeyboardInterrupt:
        return 130


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit meets no closed pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
