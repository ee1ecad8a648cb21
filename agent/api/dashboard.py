"""The dashboard at ``/``: a page of static files (``agent/web/``), the views only it needs, its login,
and ``/docs`` served offline.

The page is plain HTML, CSS and JavaScript shipped in the package: no build step, nothing loaded from
another site (its Content-Security-Policy says so to the browser). It reads the same REST views as the
CLI (``/gpu/status``, ``/queue``, ``/jobs/...``) plus ``/dashboard/history`` and ``/dashboard/topology``,
and follows ``/events/stream`` to update without reloading.

Identity: the page's requests are the browser's, so they carry the browser's identity. A person logs in
by posting a token (``herd token``) to ``/auth/login``, which keeps it in an HttpOnly, SameSite=Strict
cookie that the identity resolution accepts like a bearer token; ``/auth/logout`` clears it. In
single-user mode a browser on this machine needs no login. The rules of ``websafety.py`` still apply:
another site's page can neither send nor read anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from agent.api import events
from agent.api.deps import TOKEN_COOKIE, ServiceDep, ToolsDep
from agent.settings import is_loopback
from tools.door import observe

WEB = Path(__file__).resolve().parent.parent / "web"
COOKIE_MAX_AGE_S = 30 * 86400  # a token lasts until revoked; the browser forgets it after 30 days
# Everything the page loads is its own; it may not be framed (clickjacking) nor post forms elsewhere.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(WEB / "index.html", headers={
        "Content-Security-Policy": PAGE_POLICY, "X-Frame-Options": "DENY", "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


# -- who is looking ---------------------------------------------------------------------------------
class Session(BaseModel):
    user: str | None = Field(description="Who the server takes the browser for; null: nobody (read-only).")
    admin: bool
    via: str = Field(description="How it knows: cookie (logged in), token, loopback (single-user), socket or anonymous.")
    may_act: bool = Field(description="False: only the open views (nobody, or refused by a personal server).")
    refused: str | None = Field(description="Why this user may change nothing here, if so.")
    mode: str = Field(description="shared, personal or single-user.")
    identity: str = Field(description="The mode in a sentence.")
    model: str | None = Field(description="The chat model's name; null: no model is configured (no chat).")
    metrics_interval_s: float = Field(description="Seconds between the server's samples of the GPUs.")
    latest_event_id: int = Field(description="The newest event's id: /events/stream?after= a little less shows the "
                                 "latest events first.")


def session_of(tools: ToolsDep, service: ServiceDep) -> Session:
    actor = tools.actor
    return Session(
        user=actor.user, admin=actor.admin, via=actor.via, may_act=actor.user is not None and actor.refused is None,
        refused=actor.refused, mode=service.identities.mode.value, identity=service.identities.describe(),
        model=service.model.name if service.model is not None else None,
        metrics_interval_s=service.settings.sample_interval_s, latest_event_id=observe.latest_event_id(tools),
    )


@router.get("/dashboard/session")
def session(tools: ToolsDep, service: ServiceDep) -> Session:
    """Who the server takes this browser for, the mode, and whether chat has a model."""
    return session_of(tools, service)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200, description="A token minted with `herd token`.")


@router.post("/auth/login")
def login(body: Login, request: Request, response: Response, service: ServiceDep) -> Session:
    """Log this browser in with a token: it is kept in an HttpOnly, SameSite=Strict cookie that every
    later request of the page carries. 401 for a token that is unknown or revoked."""
    loopback = request.client is not None and is_loopback(request.client.host)
    actor = service.identities.actor(peer_uid=None, authorization=None, cookie=body.token, loopback=loopback)
    response.set_cookie(TOKEN_COOKIE, body.token.strip(), max_age=COOKIE_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return session_of(service.tools(actor), service)


@router.post("/auth/logout")
def logout(request: Request, response: Response) -> dict[str, str]:
    """Forget the token this browser logged in with."""
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return {"detail": "logged out"}


# -- the views only the page needs ----------------------------------------------------------------------
@router.get("/dashboard/history")
def history(tools: ToolsDep, hours: Annotated[int, Query(ge=1, le=168, description="Hours of hourly figures.")] = 24,
            ) -> observe.History:
    """The charts' data: samples of GPUs busy and free, the queue's length and utilization (the last
    hour, every ``metrics_interval_s``); per hour, jobs started and finished, mean wait, GPU-hours per user."""
    return observe.history(tools, observe.GetHistory(hours=hours))


@router.get("/dashboard/topology")
def topology(tools: ToolsDep) -> observe.Topology:
    """Nodes, their GPUs and the links between GPUs where NVML reports them."""
    return observe.topology(tools)


# -- /docs without the internet ------------------------------------------------------------------------
def install(app: FastAPI) -> None:
    """The page and its files, and Swagger UI from the ``swagger-ui-bundle-v2`` package instead of a CDN."""
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=WEB), name="web")
    events.track_shutdown()  # the page's event stream ends when the server stops
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # the page still works; /docs says what is missing
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if swagger_ui_path is None:
            raise HTTPException(503, "the interactive API page needs the swagger-ui-bundle-v2 package; "
                                "/openapi.json has the schema")
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/web/favicon.svg", oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
