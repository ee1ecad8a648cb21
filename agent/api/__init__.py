"""The REST app. ``create_app`` builds it; the service inside is built and started in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from pydantic import BaseModel

from agent.api import chat, errors, gpu, jobs, orchestrator, queue, quotas, reservations
from agent.api.deps import ServiceDep
from agent.service import Service
from agent.settings import Settings


class Health(BaseModel):
    ok: bool
    loop_alive: bool
    inventory: str | None


def create_app(target: Settings | Service | None = None) -> FastAPI:
    """An app around ``target``: a ``Service`` (tests build their own) or the settings to build one with."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = target if isinstance(target, Service) else Service(target or Settings())
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
    )
    errors.install(app)
    for module in (queue, gpu, orchestrator, jobs, quotas, reservations, chat):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    def healthz(service: ServiceDep) -> Health:
        """Up and answering; ``loop_alive`` says whether the scheduler loop runs."""
        source = service.resources.source
        return Health(ok=True, loop_alive=service.loop_alive, inventory=source.value if source else None)

    return app
