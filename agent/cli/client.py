"""The HTTP client of the commands that talk to the server (how their failures end ``herd``: errors.py)."""

from __future__ import annotations

import functools
import time
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import click
import httpx

from agent.cli.errors import EXIT_UNREACHABLE, CliError, PipeClosed

DEFAULT_URL = "http://127.0.0.1:10000"
TOKEN_FILE = Path("~/.config/gpuherd/token")
RETRY_AFTER_S = 1.0  # before the one retry of a request whose connection failed


class Client:
    """Over the server's Unix socket, where the kernel says who you are; or over TCP with your token."""

    def __init__(self, url: str | None = None, *, socket_path: Path | None = None, token: str | None = None,
                 timeout_s: float = 30.0) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if socket_path is not None:
            self.url = f"unix:{socket_path}"
            self._http = httpx.Client(base_url="http://localhost", timeout=timeout_s,
                                      transport=httpx.HTTPTransport(uds=str(socket_path)))
        else:
            self.url = (url or DEFAULT_URL).rstrip("/")
            self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    @classmethod
    def connect(cls, url: str | None, env: Mapping[str, str] = os.environ) -> Client:
        """``--url``/``$HERD_URL`` if given; else the server's socket if it exists (``$HERD_SOCKET``, else
        ``herd.sock`` in ``$HERD_WORKDIR`` or ``./.herd``); else TCP on the default address. Over TCP the
        token is ``$HERD_TOKEN`` or the first line of ``~/.config/gpuherd/token``."""
        if url is None:
            socket_path = Path(env.get("HERD_SOCKET") or Path(env.get("HERD_WORKDIR") or ".herd") / "herd.sock")
            if socket_path.exists():
                return cls(socket_path=socket_path)
        return cls(url, token=env.get("HERD_TOKEN") or _saved_token())

    def call(self, method: str, path: str, *, retry: bool = False, **kwargs: Any) -> Any:
        """The answer's JSON; a refusal raises CliError with the server's ``detail``. ``retry``: send the
        same request once more after a connection error (safe for a submission with an Idempotency-Key)."""
        try:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if not retry:
                    raise
                time.sleep(RETRY_AFTER_S)
                response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the gpuherd server at {self.url} ({type(exc).__name__}); "
                "start it with `herd serve`, or point HERD_URL (or HERD_SOCKET) at it",
                EXIT_UNREACHABLE,
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = None
            raise CliError(f"{detail or response.text.strip() or response.reason_phrase} (HTTP {response.status_code})")
        return response.json()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()


def resolve(client: Client, ref: str | int) -> int:
    """The job id of ``ref``: ``12`` is job 12; ``12_3`` is task 3 of array 12, looked up on the server."""
    if isinstance(ref, int):
        return ref
    array, _, index = ref.partition("_")
    if not index:
        return int(array)
    page = client.call("GET", "/jobs", params={"array": array, "limit": 1000})
    found = next((j["id"] for j in page["jobs"] if j["array_index"] == int(index)), None)
    if found is None:
        raise CliError(f"array {array} has no task {index}" if page["jobs"] else f"there is no array {array}")
    return found


def _saved_token() -> str | None:
    try:
        return TOKEN_FILE.expanduser().read_text().strip().splitlines()[0] or None
    except (OSError, IndexError):
        return None


def server_command(name: str, help: str) -> Callable[[Callable[..., Any]], click.Command]:
    """A command that talks to the server: it gets ``--url`` and ``--json``, and is called with
    ``(client, as_json, **its own parameters)``. Put its own options below this decorator."""

    def decorate(run: Callable[..., Any]) -> click.Command:
        @click.command(name, help=help, short_help=help)
        @click.option("--url", envvar="HERD_URL",
                      help=f"the server over TCP (default: $HERD_URL, else the server's socket ./.herd/herd.sock "
                           f"or $HERD_SOCKET when it exists, else {DEFAULT_URL})")
        @click.option("--json", "as_json", is_flag=True, help="print the server's JSON instead of a table")
        @functools.wraps(run)  # carries the options declared on ``run``
        def command(url: str | None, as_json: bool, **params: Any) -> Any:
            try:
                with Client.connect(url) as client:
                    return run(client, as_json, **params)
            except BrokenPipeError:  # click would turn it into exit code 1
                raise PipeClosed() from None

        return command

    return decorate
