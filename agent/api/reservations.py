"""``/reservations``: GPUs kept for a user or a group in a time window (an administrator's)."""

from __future__ import annotations

from fastapi import APIRouter, status

from agent.api.deps import ServiceDep, ToolsDep
from tools import toolkit
from tools.models import Reservation

router = APIRouter(prefix="/reservations", tags=["reservations"])


@router.get("")
def list_reservations(tools: ToolsDep) -> list[Reservation]:
    """The reservations not over yet."""
    return toolkit.list_reservations(tools, toolkit.ListReservations())


@router.post("", status_code=status.HTTP_201_CREATED)
def reserve(body: toolkit.ReserveGpus, service: ServiceDep) -> Reservation:
    """Keep GPUs for a user or group; 422 if the window is empty or past, a GPU is unknown or already
    reserved then, or no node has room."""
    reservation = toolkit.reserve_gpus(service.tools(), body)
    service.wake()
    return reservation


@router.delete("/{reservation_id}")
def unreserve(reservation_id: int, service: ServiceDep) -> Reservation:
    """Remove a reservation; 404 if there is none with this id."""
    reservation = toolkit.unreserve(service.tools(), toolkit.Unreserve(reservation_id=reservation_id))
    service.wake()
    return reservation
