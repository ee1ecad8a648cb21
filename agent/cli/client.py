"""The HTTP client of the commands that talk to the server, and how their failures end ``herd``."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:10000"
EXIT_FAILED = 1  # the server refused or the command failed
EXIT_UNREACHABLE = 2  # no server answered
RETRY_AFTER_S = 1.0  # before the one retry of a request whose connection failed


class CliError(Exception):
    """A failure told in one line (``herd: ...``) with its exit code, never a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

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
                "start it with `herd serve` or point HERD_URL at it",
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


def server_command(name: str, help: str) -> Callable[[Callable[..., Any]], click.Command]:
    """A command that talks to the server: it gets ``--url`` and ``--json``, and is called with
    ``(client, as_json, **its own parameters)``. Put its own options below this decorator."""

    def decorate(run: Callable[..., Any]) -> click.Command:
        @click.command(name, help=help, short_help=help)
        @click.option("--url", envvar="HERD_URL", default=DEFAULT_URL,
                      help=f"the server (default: $HERD_URL or {DEFAULT_URL})")
        @click.option("--json", "as_json", is_flag=True, help="print the server's JSON instead of a table")
        @functools.wraps(run)  # carries the options declared on ``run``
        def command(url: str, as_json: bool, **params: Any) -> Any:
            with Client(url) as client:
                return run(client, as_json, **params)

        return command

    return decorate
