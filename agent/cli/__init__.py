"""``herd``: the command line. ``herd serve`` runs the server; every other command talks to it over REST.

The server is found at ``--url`` or ``$HERD_URL``; else through its Unix socket (``$HERD_SOCKET``, or
``herd.sock`` in ``$HERD_WORKDIR`` or ``./.herd``) when it exists, where the kernel says who you are; else
at ``http://127.0.0.1:10000``. Over TCP, a change needs your token (``herd token``). Output is a table
for people, or the server's JSON with ``--json``. A failed command exits non-zero with the server's
message on one line, never a traceback: 1 when the server refused or the command failed, 2 for a usage
error, 3 when no server answers, 130 after Ctrl-C, 141 when the reader of its output went away.

Layout: ``client.py`` the HTTP client and the exit codes, ``output.py`` tables and every time and
duration shown, ``params.py`` the values read from the command line, ``export.py`` what ``--export``
sends; the commands, on click, in ``jobs.py``, ``listing.py``, ``report.py``, ``attach.py``,
``cluster.py``, ``chat.py``, ``tokens.py`` and ``serve.py``. Other packages add commands through the
``gpuherd.commands`` entry points (``herd eval`` comes from ``evals``, which agent/ never imports).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Sequence

import click
from click.shell_completion import get_completion_class

from agent.cli import attach, chat, cluster, jobs, listing, report, serve, tokens
from agent.cli.client import EXIT_PIPE, CliError, PipeClosed

PLUGINS = "gpuherd.commands"
COMPLETE_VAR = "_HERD_COMPLETE"


class Herd(click.Group):
    """Commands in the order they were added, then those of the entry points, each loaded when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *sorted({ep.name for ep in entry_points(group=PLUGINS)} - self.commands.keys())]

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # click would make it exit code 1
            raise PipeClosed() from None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        for ep in entry_points(group=PLUGINS, name=name):
            return ep.load()
        return None


def _version() -> str:
    try:
        return version("gpuherd")
    except PackageNotFoundError:
        return "unknown (not installed)"


@click.group(cls=Herd)
@click.version_option(_version(), "-V", "--version", prog_name="herd", message="%(prog)s %(version)s")
def herd() -> None:
    """gpuherd: share GPUs, queue jobs, watch them run."""


for command in (*serve.COMMANDS, jobs.submit, *listing.COMMANDS, *jobs.COMMANDS[1:], *attach.COMMANDS,
                *report.COMMANDS, *cluster.COMMANDS, *chat.COMMANDS, *tokens.COMMANDS):
    herd.add_command(command)


@herd.command(short_help="print the shell code that completes herd's commands: bash | zsh | fish",
              help='Print the shell code that completes herd\'s commands. Add it to your shell\'s startup file, '
                   'e.g. eval "$(herd completion bash)" in ~/.bashrc.')
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
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
