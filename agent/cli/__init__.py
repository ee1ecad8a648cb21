"""``herd``: the command line. ``herd serve`` runs the server; every other command talks to it over REST.

The server is found at ``--url`` or ``$HERD_URL``; else through its Unix socket (``$HERD_SOCKET``, or
``herd.sock`` in ``$HERD_WORKDIR`` or ``./.herd``) when it exists, where the kernel says who you are; else
at ``http://127.0.0.1:10000``. Over TCP, a change needs your token (``herd token``). Output is a table
for people, or the server's JSON with ``--json``. A failed command exits non-zero with the server's
message on one line (2 when no server answers), never a traceback.

Layout: ``client.py`` the HTTP client and the exit codes, ``output.py`` tables and every time and
duration shown, ``params.py`` the values read from the command line; the commands, on click, in
``jobs.py``, ``cluster.py``, ``chat.py``, ``tokens.py`` and ``serve.py``. Other packages add commands through the
``gpuherd.commands`` entry points (``herd eval`` comes from ``evals``, which agent/ never imports).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Sequence

import click
from click.shell_completion import get_completion_class

from agent.cli import chat, cluster, jobs, serve, tokens
from agent.cli.client import CliError

PLUGINS = "gpuherd.commands"
COMPLETE_VAR = "_HERD_COMPLETE"


class Herd(click.Group):
    """Commands in the order they were added, then those of the entry points, each loaded when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *sorted({ep.name for ep in entry_points(group=PLUGINS)} - self.commands.keys())]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        for ep in entry_points(group=PLUGINS, name=name):
            return ep.load()
        return None


@click.group(cls=Herd)
def herd() -> None:
    """gpuherd: share GPUs, queue jobs, watch them run."""


for command in (*serve.COMMANDS, *jobs.COMMANDS, *cluster.COMMANDS, *chat.COMMANDS, *tokens.COMMANDS):
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
    except CliError as exc:
        click.echo(f"herd: {exc}", err=True)
        return exc.code
    except click.ClickException as exc:  # a usage error, reported as click reports it
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C
        return 130
