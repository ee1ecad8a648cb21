"""Where a reservation goes and whether it can be kept: pure checks on the layout and the other reservations;
and where a reservation made for a count of GPUs moves when its window begins on GPUs someone still uses."""

from __future__ import annotations

from typing import Callable

from policies.snapshot import Layout
from tools.models import Job, Reservation
from tools.timespec import local_time


class InvalidReservation(ValueError):
    """A reservation that cannot be kept (unknown GPUs, an empty window, an overlap, no room)."""


def choose_gpus(layout: Layout, reservations: tuple[Reservation, ...], *, node: str | None, gpus: list[int] | None,
                gpu_count: int | None, start: float, end: float) -> tuple[str, tuple[int, ...]]:
    """The node and GPUs a reservation names, or the first that fit its count in its window."""
    if node is not None and node not in layout.usable:
        raise InvalidReservation(f"there is no node {node!r}; the nodes are {', '.join(layout.usable)}")
    if gpus:
        if len(set(gpus)) != len(gpus):
            raise InvalidReservation("a GPU is named twice")
        if gpu_count is not None and gpu_count != len(gpus):
            raise InvalidReservation(f"gpu_count is {gpu_count} but {len(gpus)} GPU(s) are named")
        if node is None:
            if len(layout.usable) != 1:
                raise InvalidReservation("say which node the GPUs are on")
            (node,) = layout.usable
        return node, tuple(sorted(gpus))
    if gpu_count is None:
        raise InvalidReservation("say how many GPUs (gpu_count) or which ones (node and gpus)")
    for name in [node] if node is not None else list(layout.usable):
        kept = {g for r in reservations if r.node == name and r.covers(start, end) for g in r.gpus}
        free = [g for g in layout.usable[name] if g not in kept]
        if len(free) >= gpu_count:
            return name, tuple(free[:gpu_count])
    where = f"node {node}" if node is not None else "no node"
    raise InvalidReservation(f"{where} has {gpu_count} usable GPU(s) free of other reservations from "
                             f"{local_time(start)} to {local_time(end)}")


def move_off_busy_gpus(reservation: Reservation, layout: Layout, reservations: tuple[Reservation, ...],
                       holder_of: Callable[[str, int], Job | None], group_of: Callable[[str], str | None],
                       now: float) -> Reservation | None:
    """A reservation made for a count of GPUs (``movable``) whose window has begun, with GPUs that a job it
    does not admit still holds: the same reservation with as many of those GPUs as can be swapped for
    free GPUs of its node (usable, held by nobody, kept by no other reservation in its window), so that
    nobody is stopped for GPUs that were free elsewhere. None if nothing moves."""
    r = reservation
    if not r.movable or not r.start <= now < r.end or r.node not in layout.usable:
        return None
    busy = []
    for gpu in r.gpus:
        job = holder_of(r.node, gpu)
        if job is not None and not r.admits(job.user, group_of(job.user)):
            busy.append(gpu)
    if not busy:
        return None
    kept = {g for other in reservations if other.id != r.id and other.node == r.node and other.covers(r.start, r.end)
            for g in other.gpus}
    free = [g for g in layout.usable[r.node] if g not in r.gpus and g not in kept and holder_of(r.node, g) is None]
    swap = min(len(busy), len(free))
    if not swap:
        return None
    gpus = tuple(sorted((set(r.gpus) - set(busy[:swap])) | set(free[:swap])))
    return r.model_copy(update={"gpus": gpus})


def check_reservation(layout: Layout, reservations: tuple[Reservation, ...], reservation: Reservation,
                      now: float) -> None:
    """Refuse (``InvalidReservation``) a reservation with an empty or past window, unknown GPUs, or GPUs
    another reservation keeps at an overlapping time."""
    if reservation.end <= reservation.start:
        raise InvalidReservation("a reservation must end after it starts")
    if reservation.end <= now:
        raise InvalidReservation("the reservation's window is already over")
    if not reservation.gpus:
        raise InvalidReservation("a reservation keeps at least one GPU")
    for gpu in reservation.gpus:
        if (reservation.node, gpu) not in layout.gpus:
            raise InvalidReservation(f"there is no GPU {gpu} on node {reservation.node!r}")
    for other in reservations:
        shared = set(other.gpus) & set(reservation.gpus)
        if other.node == reservation.node and shared and other.covers(reservation.start, reservation.end) and other.end > now:
            raise InvalidReservation(
                f"GPU(s) {','.join(map(str, sorted(shared)))} of {other.node} are already reserved for "
                f"{other.holder()} then (reservation {other.id})")
