"""``herd serve``: the server, the REST API and the scheduler, in this process."""

from __future__ import annotations

import logging
import shutil

import click
from pydantic import ValidationError

from agent.cli.client import CliError
from agent.cli.params import DURATION
from agent.messages import describe_errors
from agent.settings import POLICY_NAMES, ConfigError, Settings


@click.command("serve", short_help="run the server (REST API and scheduler)",
               help="Run the server. Unset flags come from HERD_* variables, then defaults.")
@click.option("--host", help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, help="port (default 10000)")
@click.option("--workdir", help="database, logs and exit-code files (default ./.herd)")
@click.option("--gpus", type=int, help="declare N GPUs on node 'local' when none are detected")
@click.option("--policy", help=" | ".join(POLICY_NAMES))
@click.option("--max-queue-size", type=int, help="most waiting jobs (default 100)")
@click.option("--stopped", is_flag=True, help="start with the scheduler stopped (no job starts)")
@click.option("--config", help="a YAML file of settings: quotas, groups, weights, ... ($HERD_CONFIG)")
@click.option("--default-user-quota", type=int,
              help="GPUs at once for users without a quota of their own (default: no limit)")
@click.option("--default-runtime", "default_runtime_s", type=DURATION,
              help="expected run time of a job with no time limit or estimate (default 1h)")
@click.option("--preempt-priority-gap", metavar="N|off",
              help="a job preempts preemptible jobs N priority levels lower (default 2); off: never")
@click.option("--preempt-grace", "preempt_grace_s", type=DURATION,
              help="SIGTERM to SIGKILL for a preempted job (default 30s)")
def serve(stopped: bool, **flags: object) -> None:
    # Imported here: the other commands do without the server's stack (FastAPI, uvicorn).
    import uvicorn

    from agent.api import create_app

    given = {key: value for key, value in flags.items() if value is not None}  # unset: HERD_* or the default
    if stopped:
        given["orchestration_enabled"] = False
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise CliError(describe_errors(exc.errors())) from None
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if shutil.which("tmux") is None:
        raise CliError("gpuherd runs every job in tmux, which is not installed: e.g. sudo apt-get install tmux")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    click.echo(
        f"gpuherd: serving http://{settings.host}:{settings.port} from {settings.workdir.resolve()}; "
        f"jobs run in `tmux -L {settings.tmux_socket} attach`",
        err=True,
    )
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )


COMMANDS = (serve,)
