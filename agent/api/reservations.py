"""``/reservations``: GPUs kept for a user or a group in a time window (an administrator's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from agent.api.deps import ToolsDep
from tools.door import rules
from tools.models import MAX_ID, Reservation

router = APIRouter(prefix="/reservations", tags=["reservations"])


@router.get("")
def list_reservations(tools: ToolsDep) -> list[Reservation]:
    """The reservations not over yet."""
    return rules.list_reservations(tools, rules.ListReservations())


@router.post("", status_code=status.HTTP_201_CREATED)
def reserve(body: rules.ReserveGpus, tools: ToolsDep) -> Reservation:
    """Keep GPUs for a user or group; 422 if the window is empty or past, a GPU is unknown or already
    reserved then, or no node has room."""
    return rules.reserve_gpus(tools, body)


@router.delete("/{reservation_id}")
def unreserve(reservation_id: Annotated[int, Path(ge=1, le=MAX_ID)], tools: ToolsDep) -> Reservation:
    """Remove a reservation; 404 if there is none with this id."""
    return rules.unreserve(tools, rules.Unreserve(reservation_id=reservation_id))
