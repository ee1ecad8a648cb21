"""Dependencies of the views, as ``Annotated`` aliases: a view names what it needs, not how it is found."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agent.api.peer import PEER_UID
from agent.service import Service
from agent.settings import is_loopback
from tools.door.context import ToolContext


# The dashboard's login: a token in an HttpOnly, SameSite=Strict cookie (agent/api/dashboard.py sets it).
TOKEN_COOKIE = "herd_token"


class Starting(RuntimeError):
    """The server is still starting (reconciling with what runs); nothing is answered yet."""


def get_service(request: Request) -> Service:
    service = getattr(request.app.state, "service", None)
    if service is None:  # the socket may accept a request before the service has started
        raise Starting("the server is starting; try again in a moment")
    return service


def get_tools(request: Request) -> ToolContext:
    """The typed tools, for the identity this request carries (``agent/identity.py``): the kernel's word
    over the Unix socket, a bearer token over TCP (or the dashboard's login cookie), or nobody."""
    service = get_service(request)
    actor = service.identities.actor(
        peer_uid=request.scope.get(PEER_UID),
        authorization=request.headers.get("authorization"),
        loopback=request.client is not None and is_loopback(request.client.host),
        cookie=request.cookies.get(TOKEN_COOKIE),
    )
    return service.tools(actor)


ServiceDep = Annotated[Service, Depends(get_service)]
ToolsDep = Annotated[ToolContext, Depends(get_tools)]
