"""Typed tools on the rules: GPU quotas, and reservations (an administrator's; the model may only list them)."""

from __future__ import annotations

from pydantic import Field

from policies.quotas import Quotas, quotas_of
from policies.reservations import InvalidReservation, choose_gpus
from policies.snapshot import Snapshot
from tools.door.context import Args, ToolContext
from tools.door.jobs import when
from tools.door.proposals import ProposalSession
from tools.models import MAX_ID, Reservation, UserName


class ReservationNotFound(LookupError):
    """No reservation has this id."""


def _snapshot(ctx: ToolContext | ProposalSession) -> Snapshot:
    """The state a read tool answers from: now (chat, REST), or the scheduling decision's snapshot."""
    if isinstance(ctx, ProposalSession):
        return ctx.snapshot
    with ctx.orchestrator.lock:
        return ctx.orchestrator.snapshot()


class GetQuotas(Args):
    """GPU quotas (GPUs held at once) per user and per group, with the GPUs each holds now and the GPUs
    its waiting jobs ask for."""


def get_quotas(ctx: ToolContext | ProposalSession, args: GetQuotas) -> Quotas:
    return quotas_of(_snapshot(ctx))


class ListReservations(Args):
    """GPU reservations not over yet: which GPUs of which node are kept for which user or group, and when."""


def list_reservations(ctx: ToolContext | ProposalSession, args: ListReservations) -> list[Reservation]:
    return list(_snapshot(ctx).reservations)


class ReserveGpus(Args):
    """Keep GPUs for one user or one group from ``start`` to ``end``: either ``node`` and ``gpus``, or
    ``gpu_count`` (on ``node``, or the first node in inventory order with that many GPUs free of
    overlapping reservations). Never given to the model, so its fields may have defaults."""

    user: UserName | None = Field(None, description="The user the GPUs are kept for.")
    group: str | None = Field(None, description="The group the GPUs are kept for (instead of a user).")
    start: str | float = Field("now", description="'22:00', '2026-11-30 22:00', '+1h', 'now' or Unix seconds.")
    end: str | float = Field(description="As start; '+8h' and '06:00' count from the start.")
    node: str | None = Field(None, description="The node; may be left out with gpus on a one-node cluster.")
    gpus: list[int] | None = Field(None, description="GPU indices on the node.")
    gpu_count: int | None = Field(None, ge=1, description="How many GPUs, when not naming them.")
    note: str = Field("", max_length=200, description="Why, for the people who see it.")


def reserve_gpus(ctx: ToolContext, args: ReserveGpus) -> Reservation:
    ctx.check_admin("reserving GPUs")
    if (args.user is None) == (args.group is None):
        raise InvalidReservation("a reservation is for exactly one of user or group")
    orch = ctx.orchestrator
    known = sorted(set(orch.rules.groups.values()))
    if args.group is not None and args.group not in known:
        raise InvalidReservation(f"there is no group {args.group!r}; the groups are: {', '.join(known) or 'none'}")
    now = ctx.core.clock.now()
    start = when("start", args.start, now)
    end = when("end", args.end, now, start=start)
    with orch.lock:
        node, gpus = choose_gpus(orch.snapshot().layout, orch.reservations, node=args.node, gpus=args.gpus,
                                 gpu_count=args.gpu_count, start=start, end=end)
        # For a count, the GPUs are the server's choice: it may swap them for free ones when the window begins.
        reservation = orch.reserve(Reservation(node=node, gpus=gpus, user=args.user, group=args.group,
                                               start=start, end=end, note=args.note, movable=not args.gpus))
    ctx.record(f"reserve {reservation.node} GPU(s) {','.join(map(str, reservation.gpus))} for {reservation.holder()} "
               f"(reservation {reservation.id})")
    ctx.core.changed()
    return reservation


class Unreserve(Args):
    """Remove a reservation; its GPUs are for everyone again."""

    reservation_id: int = Field(ge=1, le=MAX_ID, description="The reservation's id.")


def unreserve(ctx: ToolContext, args: Unreserve) -> Reservation:
    ctx.check_admin("removing a reservation")
    try:
        reservation = ctx.orchestrator.unreserve(args.reservation_id)
    except LookupError as exc:
        raise ReservationNotFound(str(exc)) from None
    ctx.record(f"remove reservation {reservation.id}")
    ctx.core.changed()
    return reservation
