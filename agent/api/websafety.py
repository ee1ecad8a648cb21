"""What a web page must not be able to do to the server, even on loopback.

A browser sends requests wherever a page tells it to: a form POST to ``localhost:10000``, a
``text/plain`` fetch, or a DNS name of the attacker's that resolves to 127.0.0.1 (rebinding). So, for
requests over TCP (the Unix socket is out of a browser's reach):

- a ``Host`` that is not one of this server's names gets 400 (rebinding gives the attacker's name);
- a request with an ``Origin`` other than the server's own (the ``Host`` it was sent to) gets 403;
- a request that changes something must carry a token or be JSON. A browser can send JSON across
  origins only after a CORS preflight, which this server never answers yes to. A request with no
  ``Origin`` at all is not from a page (browsers send one with every POST, PUT, PATCH and DELETE), so
  a script's ``curl -d '{...}'`` is read as the JSON it is.
"""

from __future__ import annotations

import json
from typing import Iterable
from urllib.parse import urlsplit

from agent.api.peer import PEER_UID

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def hostname(netloc: str) -> str:
    """``Host`` or an origin's netloc without its port, lower-case: ``[::1]:10000`` -> ``::1``."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


class WebSafety:
    """ASGI middleware applying the rules above; ``hosts`` are the names the server answers to."""

    def __init__(self, app, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in (*LOCAL_NAMES, *hosts) if h)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or PEER_UID in scope:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if hostname(host) not in self.hosts:
            return await _refuse(send, 400, f"this server does not answer to the host name {hostname(host)!r}; "
                                 "add it to allowed_hosts if people reach the server by that name")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return await _refuse(send, 403, f"a request from the web page at {origin} is refused: "
                                 "only the server's own pages may send requests from a browser")
        if scope["method"] not in SAFE_METHODS and "authorization" not in headers:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                if origin is not None or kind not in ("", "application/x-www-form-urlencoded"):
                    return await _refuse(send, 415, "a request that changes something must be JSON "
                                         "(Content-Type: application/json) or carry a token")
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                         + [(b"content-type", b"application/json")]}
        return await self.app(scope, receive, send)


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
