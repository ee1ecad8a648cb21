"""``/events``: the event log as it grows, a page at a time or as a Server-Sent Events stream.

``GET /events/stream`` sends every event as it happens (``id:`` its id, ``data:`` its JSON), and a
comment every 15 s so that proxies keep the connection; a client that reconnects with
``Last-Event-ID`` (browsers do it by themselves) or ``?after=N`` gets the events it missed first. ``curl
-N localhost:10000/events/stream`` follows it too.

However many clients follow, one reader (``EventHub``) reads the log: it polls the store through the
door every ``POLL_S`` while someone listens, keeps the latest events in memory and wakes the clients;
a client that is further behind than that memory reads its pages from the store itself. Waiting clients
hold no thread, only a coroutine.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections import deque
from typing import Annotated, AsyncIterator

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from agent.api.deps import ToolsDep
from tools.door import observe
from tools.door.context import ANONYMOUS, ToolContext
from tools.models import MAX_ID, Event

log = logging.getLogger("gpuherd")
router = APIRouter(prefix="/events", tags=["events"])

POLL_S = 0.25  # how often the hub reads the log while someone listens
KEEPALIVE_S = 15.0
KEEP = 10_000  # events the hub keeps in memory for clients a little behind
ERROR_BACKOFF_S = 1.0
SHUTDOWN_CHECK_S = 1.0  # a stream notices the server stopping this fast


class EventHub:
    """The one reader of the event log for every stream client of an app."""

    def __init__(self, poll_s: float = POLL_S, keep: int = KEEP) -> None:
        self.poll_s = poll_s
        self.clients = 0
        self.seen: int | None = None  # the last id read; None until the reader first ran
        self._recent: deque[str] = deque(maxlen=keep)  # the latest events as Server-Sent Events
        self._ids: deque[int] = deque(maxlen=keep)
        self._complete_after: int = 0  # every event after this id up to `seen` is in `_recent`
        self._changed: asyncio.Event | None = None
        self._reader: asyncio.Task | None = None

    async def join(self, tools: ToolContext) -> None:
        """One more client; the reader starts (from the latest event) if it is not running."""
        if self._reader is None:
            latest = await anyio.to_thread.run_sync(observe.latest_event_id, tools)
            if self._reader is None:  # nobody started it meanwhile
                self._recent.clear()
                self._ids.clear()
                self.seen = self._complete_after = latest
                self._changed = asyncio.Event()
                self._reader = asyncio.get_running_loop().create_task(self._read(tools.core))
        self.clients += 1

    def leave(self) -> None:
        self.clients -= 1

    async def _read(self, core) -> None:
        """Poll the log while anyone listens. The shared read is the open view, so it reads as nobody."""
        tools = ToolContext(core, ANONYMOUS)
        try:
            while self.clients > 0:
                try:
                    events = await anyio.to_thread.run_sync(
                        observe.events_after, tools, observe.EventsAfter(after_id=self.seen or 0))
                except Exception:  # a storage fault: /healthz says so; the clients wait, then go on
                    log.exception("reading the event log for the event stream failed")
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
                if events:
                    for event in events:
                        if len(self._recent) == self._recent.maxlen:
                            self._complete_after = self._ids[0]
                        self._recent.append(sse(event))  # made once, sent to every client
                        self._ids.append(event.id or 0)
                    self.seen = events[-1].id
                    assert self._changed is not None
                    changed, self._changed = self._changed, asyncio.Event()
                    changed.set()
                if len(events) < observe.MAX_EVENTS:
                    await asyncio.sleep(self.poll_s)
        finally:
            self._reader = None

    async def after(self, tools: ToolContext, cursor: int) -> tuple[int, str]:
        """The events after ``cursor`` known so far, as Server-Sent Events, and the last one's id (``cursor``
        if none): from memory, or from the store for a client far behind."""
        if self.seen is None or cursor >= self.seen:
            return cursor, ""
        if cursor >= self._complete_after:
            start = bisect.bisect_right(self._ids, cursor)
            end = min(len(self._recent), start + observe.MAX_EVENTS)
            if start >= end:
                return cursor, ""
            return self._ids[end - 1], "".join(itertools.islice(self._recent, start, end))
        events = await anyio.to_thread.run_sync(observe.events_after, tools, observe.EventsAfter(after_id=cursor))
        return (events[-1].id or cursor, "".join(sse(e) for e in events)) if events else (cursor, "")

    async def wait(self, timeout_s: float) -> bool:
        """Until new events were read (True) or ``timeout_s`` passed (False)."""
        assert self._changed is not None
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False


def track_shutdown() -> None:
    """Let streams end when the server stops. uvicorn tells an app nothing when it begins to shut down:
    it waits (``timeout_graceful_shutdown``) for open responses to end, and a stream never does, so a
    dashboard left open would hold every restart for seconds and end in a traceback. So the server's
    exit handler (the signal handler; tests call it too) is wrapped, once, to mark its app's state
    ``shutting_down``, which every stream checks at least once a second."""
    import uvicorn

    original = uvicorn.Server.handle_exit
    if getattr(original, "marks_app", False):
        return

    def handle_exit(server: uvicorn.Server, sig, frame) -> None:
        state = getattr(server.config.app, "state", None)
        if state is not None:
            state.shutting_down = True
        original(server, sig, frame)

    handle_exit.marks_app = True  # type: ignore[attr-defined]
    uvicorn.Server.handle_exit = handle_exit  # type: ignore[method-assign]


def hub_of(request: Request) -> EventHub:
    state = request.app.state
    if getattr(state, "event_hub", None) is None:
        state.event_hub = EventHub()
    return state.event_hub


def sse(event: Event) -> str:
    return f"id: {event.id}\ndata: {event.model_dump_json()}\n\n"


@router.get("", response_model=list[Event])
def events(
    tools: ToolsDep,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Only events after this id (0: from the first).")] = 0,
    limit: Annotated[int, Query(ge=1, le=observe.MAX_EVENTS, description="At most this many.")] = 100,
) -> list[Event]:
    """The event log, oldest first, after an id: to poll it, pass the last id seen. ``/events/stream``
    sends each event as it happens (Server-Sent Events; resumable with ``Last-Event-ID``)."""
    return observe.events_after(tools, observe.EventsAfter(after_id=after, limit=limit))


# Not in the OpenAPI schema: a stream that never ends is no operation a schema-driven client can call.
@router.get("/stream", include_in_schema=False)
async def stream(
    request: Request,
    tools: ToolsDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Start after this event id (0: replay the "
                                       "whole log); from now if not given. Last-Event-ID wins over it.")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20,
                                                description="Resume after this id (sent by a reconnecting browser).")] = None,
) -> StreamingResponse:
    """Every event as it happens, as Server-Sent Events."""
    if last_event_id is not None and last_event_id.strip().isdigit():  # a reconnection resumes where it broke
        after = min(int(last_event_id.strip()), MAX_ID)
    hub = hub_of(request)

    async def feed() -> AsyncIterator[str]:
        await hub.join(tools)
        try:
            cursor = (hub.seen or 0) if after is None else after
            yield f"retry: 2000\n: following the event log after id {cursor}\n\n"
            quiet = 0.0
            while not getattr(request.app.state, "shutting_down", False):
                cursor, text = await hub.after(tools, cursor)
                if text:
                    quiet = 0.0
                    yield text
                elif not await hub.wait(SHUTDOWN_CHECK_S):
                    quiet += SHUTDOWN_CHECK_S
                    if quiet >= KEEPALIVE_S:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
        finally:
            hub.leave()

    return StreamingResponse(feed(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

