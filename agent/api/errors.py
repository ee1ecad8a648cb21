"""The one place where domain exceptions become HTTP answers.

Every answer to a bad request is a 4xx whose ``detail`` is one sentence a person can act on; the
request changed nothing (the core checks before it writes, and writes in transactions). A fault of
the server's own storage is a 503 with a one-line ``detail`` (try again; ``/healthz`` says degraded);
a body over the size limit a 413, found while reading it. Anything else that escapes a view is a bug:
a JSON 500 with a one-line ``detail``, logged with its traceback, and the connection kept. The OpenAPI
schema documents these answers as they are sent (``document``).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.api.deps import Starting
from agent.build import ModelNotConfigured
from agent.messages import describe_errors
from policies.reservations import InvalidReservation
from tools.door.context import NotAuthenticated, PermissionDenied
from tools.door.rules import ReservationNotFound
from tools.logs import UnsafeLog
from tools.tokens import TokenNotFound
from tools.inventory import InventoryConflict, UnknownGpu
from tools.nvml import ProbeUnavailable
from tools.orchestrator import InvalidJob
from tools.queue import IllegalTransition, JobNotFound
from tools.door.jobs import QueueGone
from tools.store import GpuConflict, QueueFull, StorageError

log = logging.getLogger("gpuherd")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a submission is a few KiB; its largest legal env is 128 KiB

# Starlette picks the handler of the nearest class in an exception's MRO, so InvalidJob and
# InvalidReservation (ValueErrors) and ValidationError (also a ValueError) keep their own entries.
STATUS_BY_EXCEPTION: dict[type[Exception], int] = {
    JobNotFound: 404,
    ReservationNotFound: 404,
    TokenNotFound: 404,
    UnsafeLog: 409,  # the job replaced its log with a link or another file: not served
    UnknownGpu: 404,
    NotAuthenticated: 401,  # a change asked for by nobody, or with a token that is not valid
    PermissionDenied: 403,
    IllegalTransition: 409,  # e.g. cancelling a completed job
    InventoryConflict: 409,  # a new inventory would drop GPUs that running jobs hold
    GpuConflict: 409,
    ProbeUnavailable: 409,  # asked to detect GPUs where NVML cannot read any
    QueueFull: 429,
    QueueGone: 409,  # a page of the queue asked to continue after a job that has left it
    Starting: 503,
    ModelNotConfigured: 503,  # chat or the agent policy without a model endpoint
    InvalidJob: 422,  # can never run here, e.g. more GPUs than any node has
    InvalidReservation: 422,  # an empty or past window, unknown GPUs, an overlap, no room
    ValidationError: 422,  # a field out of range (pydantic, raised by the core's models)
    ValueError: 422,  # a value the core refused (unknown policy, bad cwd, ...)
    # A number too large for SQLite or the clock, that a view let through unchecked: still the request's fault.
    OverflowError: 422,
}


def _detail(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_errors(exc.errors())
    if isinstance(exc, KeyError) and not isinstance(exc, UnknownGpu):
        return str(exc.args[0]) if exc.args else "not found"
    if isinstance(exc, OverflowError):
        return f"a number is out of range ({_first_line(exc)}); ids and counts are at most 9223372036854775807"
    return str(exc)


# The server's own storage failed (the database locked past its busy timeout, an I/O error, a
# read-only file): the request changed nothing, and may work when tried again.
STORAGE_FAULTS: tuple[type[Exception], ...] = (StorageError, sqlite3.Error, OSError)


def storage_detail(exc: Exception) -> str:
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return f"the database failed ({_first_line(exc)}); try again"
    why = getattr(exc, "strerror", None) or _first_line(exc)
    return f"the server could not read or write its files ({why}); try again"


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def install(app: FastAPI) -> None:
    """The handlers, the body-size limit and the last-resort answer, and the schema that documents them."""
    app.state.storage_fault = None  # (when, detail) of the last storage fault a request met
    for exc_type, status in STATUS_BY_EXCEPTION.items():

        def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse(status_code=status, content={"detail": _detail(exc)})

        app.add_exception_handler(exc_type, handler)

    def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Keep pydantic's list for programs, next to the sentence for people.
        return JSONResponse(
            status_code=422,
            content={"detail": describe_errors(list(exc.errors())), "errors": _jsonable(exc.errors())},
        )

    app.add_exception_handler(RequestValidationError, request_invalid)

    def storage_failed(request: Request, exc: Exception) -> JSONResponse:
        detail = storage_detail(exc)
        service = getattr(request.app.state, "service", None)
        request.app.state.storage_fault = (service.clock.now() if service is not None else None, detail)
        log.warning("%s %s: %s", request.method, request.url.path, detail)
        return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": "1"})

    for exc_type in STORAGE_FAULTS:
        app.add_exception_handler(exc_type, storage_failed)
    # Added last, so outermost of the two: a bug anywhere inside, the body limit's included, gets JSON.
    app.add_middleware(BodyLimit)
    app.add_middleware(LastResort)
    document(app)


# -- the body limit and the last resort --------------------------------------------------------------
class BodyTooLarge(HTTPException):
    """Raised while the body is read, so FastAPI passes it on as it is (other errors become a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes, the most this server accepts")


def max_body_bytes(app: Any) -> int:
    """The configured cap (``max_body_bytes`` in the settings, where there is one), else 1 MiB."""
    service = getattr(app.state, "service", None)
    configured = getattr(getattr(service, "settings", None), "max_body_bytes", None)
    return configured if isinstance(configured, int) and configured > 0 else DEFAULT_MAX_BODY_BYTES


class BodyLimit:
    """Refuses a request body over the cap with a 413: at once when its ``Content-Length`` says so,
    else as soon as the bytes read pass it; never reads more than the cap."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = max_body_bytes(scope["app"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _json(scope, send, 413, {"detail": BodyTooLarge(limit).detail}, close=True)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


class LastResort:
    """A bug that escapes every handler gets a JSON 500 with one line, and the connection is kept;
    without this the server answers plain text and closes the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            detail = f"internal error ({type(exc).__name__}: {_first_line(exc)}); the server's log has the details"
            await _json(scope, send, 500, {"detail": detail})


async def _json(scope: Scope, send: Callable[[Message], Awaitable[None]], status: int, body: dict, *,
                close: bool = False) -> None:
    """Answer without reading the request (its body may be what is refused)."""
    response = JSONResponse(status_code=status, content=body, headers={"Connection": "close"} if close else None)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


# -- the schema says what is sent ------------------------------------------------------------------
class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None


class ErrorAnswer(BaseModel):
    """Every 4xx and 5xx answer: one sentence a person can act on."""

    detail: str = Field(description="What went wrong, in one line, naming the field at fault.")
    errors: list[ErrorItem] | None = Field(None, description="A 422 for a malformed request: pydantic's list, "
                                           "for programs.")


ERROR_ANSWERS = {
    "422": "A field is missing, of the wrong type or out of range, or the core refused the value.",
    "503": "The server's storage failed (the database is locked or cannot be written) or it is starting; "
           "nothing was changed: try again.",
    "4XX": "Refused: detail says why (404 unknown id, 409 not in this state, 413 body too large, 429 queue full).",
    "500": "A bug: the server's log has the details.",
}


def document(app: FastAPI) -> None:
    """Every operation's error answers in the schema as they are sent: ``{"detail": str}`` (FastAPI
    documents a 422's detail as a list)."""

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        answer = ErrorAnswer.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(answer.pop("$defs", {}))
        components["ErrorAnswer"] = answer
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for code, description in ERROR_ANSWERS.items():
                    known = responses.get(code, {})
                    responses[code] = {"description": known.get("description") if code != "422" and known
                                       else description, "content": ref}
                for code, answer in responses.items():  # the ones a view declares itself
                    if code[0] in "45" and code not in ERROR_ANSWERS:
                        answer["content"] = ref
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _jsonable(errors) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")} for e in errors]
