"""``herd serve``: the server, the REST API and the scheduler, in this process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

import click
from pydantic import ValidationError

from agent.cli.errors import CliError
from agent.cli.params import DURATION
from agent.messages import describe_errors
from agent.settings import POLICY_NAMES, ConfigError, Settings

SOCKET_NAME = "herd.sock"  # in the work directory


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
@click.option("--single-user", is_flag=True, default=None,
              help="loopback requests without a token act as the server's user (make run); loopback hosts only")
@click.option("--ssl-certfile", help="TLS certificate (PEM) for the TCP port, with --ssl-keyfile")
@click.option("--ssl-keyfile", help="TLS private key (PEM) for the TCP port")
@click.option("--ray", metavar="ADDRESS", help="run jobs on every node of this Ray cluster (auto: this machine's); "
              "needs pip install 'gpuherd[ray]'")
@click.option("--ray-local-nodes", type=click.IntRange(1, 16), metavar="N",
              help="start a Ray cluster of N nodes on this machine, each with --gpus GPUs (to try many nodes)")
def serve(stopped: bool, **flags: object) -> None:
    # Imported here: the other commands do without the server's stack (FastAPI, uvicorn).
    import uvicorn

    from agent.api import create_app
    from agent.api.peer import PeerCredentialsProtocol

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
    if settings.ray is not None or settings.ray_local_nodes is not None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise CliError("--ray needs Ray, which is not installed: pip install 'gpuherd[ray]'")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    socket_path = settings.workdir.resolve() / SOCKET_NAME
    scheme = "https" if settings.ssl_certfile else "http"
    click.echo(
        f"gpuherd: serving {scheme}://{settings.host}:{settings.port} and {socket_path} from {settings.workdir.resolve()}; "
        + (f"jobs run in `tmux -L {settings.tmux_socket} attach`" if settings.ray is None and settings.ray_local_nodes
           is None else "jobs run on the Ray nodes, each in its own tmux (herd gpus shows the nodes)"),
        err=True,
    )
    # No access log: a line per request was 7 % of the event loop's time under 50 clients submitting, and
    # who changed what is in the event log already (a "request" event per change, with its identity).
    common = dict(log_level=settings.log_level, timeout_graceful_shutdown=5, http=PeerCredentialsProtocol,
                  access_log=False)
    tcp = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile, **common))
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)  # left by a server that was killed
    local = _socket_server_class()(uvicorn.Config(app, uds=str(socket_path), lifespan="off", **common))
    with asyncio.Runner(loop_factory=tcp.config.get_loop_factory()) as runner:  # uvloop where installed
        runner.run(_serve_both(tcp, local))


def _socket_server_class():
    import uvicorn

    class SocketServer(uvicorn.Server):
        """A server that leaves the process's signals to the TCP one."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return SocketServer


async def _serve_both(tcp, local) -> None:
    """The TCP server runs the app's lifespan (the service) and owns the process's signals; the Unix
    socket's server answers beside it (uvicorn makes the socket world-writable: every local user may
    connect, and the kernel says who they are) and stops when it does."""
    beside = asyncio.create_task(local.serve())
    try:
        await tcp.serve()
    finally:
        local.should_exit = True
        await beside


COMMANDS = (serve,)
