"""Dependencies of the views, as ``Annotated`` aliases: a view names what it needs, not how it is found."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agent.service import Service
from tools.door.context import ToolContext


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_tools(request: Request) -> ToolContext:
    """The typed tools, for the identity this request carries: an operator acting for anyone (REST has
    no accounts yet)."""
    return get_service(request).tools()


ServiceDep = Annotated[Service, Depends(get_service)]
ToolsDep = Annotated[ToolContext, Depends(get_tools)]
