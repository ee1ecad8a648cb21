"""The one place where domain exceptions become HTTP answers.

Every answer to a bad request is a 4xx whose ``detail`` is one sentence a person can act on; the
request changed nothing (the core checks before it writes, and writes in transactions).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from agent.build import ModelNotConfigured
from agent.messages import describe_errors
from policies.reservations import InvalidReservation
from tools.door.context import PermissionDenied
from tools.door.rules import ReservationNotFound
from tools.inventory import InventoryConflict, UnknownGpu
from tools.nvml import ProbeUnavailable
from tools.orchestrator import InvalidJob
from tools.queue import IllegalTransition, JobNotFound
from tools.store import GpuConflict, QueueFull

# Starlette picks the handler of the nearest class in an exception's MRO, so InvalidJob and
# InvalidReservation (ValueErrors) and ValidationError (also a ValueError) keep their own entries.
STATUS_BY_EXCEPTION: dict[type[Exception], int] = {
    JobNotFound: 404,
    ReservationNotFound: 404,
    UnknownGpu: 404,
    PermissionDenied: 403,
    IllegalTransition: 409,  # e.g. cancelling a completed job
    InventoryConflict: 409,  # a new inventory would drop GPUs that running jobs hold
    GpuConflict: 409,
    ProbeUnavailable: 409,  # asked to detect GPUs where NVML cannot read any
    QueueFull: 429,
    ModelNotConfigured: 503,  # chat or the agent policy without a model endpoint
    InvalidJob: 422,  # can never run here, e.g. more GPUs than any node has
    InvalidReservation: 422,  # an empty or past window, unknown GPUs, an overlap, no room
    ValidationError: 422,  # a field out of range (pydantic, raised by the core's models)
    ValueError: 422,  # a value the core refused (unknown policy, bad cwd, ...)
}


def _detail(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_errors(exc.errors())
    if isinstance(exc, KeyError) and not isinstance(exc, UnknownGpu):
        return str(exc.args[0]) if exc.args else "not found"
    return str(exc)


def install(app: FastAPI) -> None:
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


def _jsonable(errors) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")} for e in errors]
