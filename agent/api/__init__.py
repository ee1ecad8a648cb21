"""The REST app. ``create_app`` builds it; the service inside is built and started in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Literal

import socket

import anyio
from fastapi import FastAPI
from pydantic import BaseModel, Field

from agent.api import (chat, dashboard, errors, events, gpu, jobs, metrics, orchestrator, queue, quotas,
                       reservations, tokens)
from agent.api.deps import ServiceDep
from agent.api.websafety import WebSafety
from agent.service import Service
from agent.settings import Settings


class Health(BaseModel):
    ok: bool = Field(description="False when degraded: see problems.")
    status: Literal["ok", "degraded"]
    loop_alive: bool
    inventory: str | None
    problems: list[str] = Field(default_factory=list, description="Why it is degraded, one line each.")
    storage_error: str | None = Field(None, description="Why the database failed, while it still fails.")
    storage_error_at: float | None = Field(None, description="When a request last met a storage fault (Unix seconds).")
    loop_error: str | None = Field(None, description="The scheduler loop's last pass failed, with this.")


def server_names(settings: Settings) -> list[str]:
    """The host names requests may carry: the bind address, this machine's names, the configured ones."""
    names = [socket.gethostname(), socket.getfqdn(), *settings.allowed_hosts]
    if settings.host not in ("0.0.0.0", "::", ""):
        names.append(settings.host)
    return names


def create_app(target: Settings | Service | None = None) -> FastAPI:
    """An app around ``target``: a ``Service`` (tests build their own) or the settings to build one with."""

    settings = target.settings if isinstance(target, Service) else target or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = target if isinstance(target, Service) else Service(settings)
        try:
            await anyio.to_thread.run_sync(service.start)  # reconciling runs tmux; keep the event loop free
        except BaseException:
            await anyio.to_thread.run_sync(service.stop)  # release the database and the executor
            raise
        app.state.service = service
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    app = FastAPI(
        title="gpuherd",
        summary="A GPU job orchestrator: whole GPUs, tmux jobs, a deterministic scheduler.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs is served offline by dashboard.install, with Swagger UI's files from the package
        redoc_url=None,
    )
    errors.install(app)
    app.add_middleware(WebSafety, hosts=server_names(settings))
    for module in (queue, gpu, orchestrator, jobs, quotas, reservations, chat, tokens, events, metrics):
        app.include_router(module.router)
    dashboard.install(app)  # the page at /, its views and login, and /docs

    @app.get("/healthz", tags=["health"])
    def healthz(service: ServiceDep) -> Health:
        """Up and answering; ``degraded`` (with why) while the database fails, the scheduler loop is not
        running or its last pass failed. A storage fault is checked again here with one small write."""
        source = service.resources.source
        probe = getattr(service.store, "probe", None)
        fault = probe() if probe is not None else None
        seen = app.state.storage_fault
        problems = []
        if fault is not None:
            problems.append(f"storage: the last {fault.operation} failed ({fault.message})")
        if service.run_loop and not service.loop_alive:
            problems.append("scheduler: its loop is not running")
        if service.last_error:
            problems.append(f"scheduler: the last pass failed ({service.last_error})")
        return Health(ok=not problems, status="degraded" if problems else "ok", loop_alive=service.loop_alive,
                      inventory=source.value if source else None, problems=problems,
                      storage_error=fault.message if fault is not None else None,
                      storage_error_at=seen[0] if seen else None, loop_error=service.last_error)

    return app
