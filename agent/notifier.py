"""Sending notifications: a thread follows the event log, others post to the webhooks, never the scheduler.

The scheduling pass only writes events, as it always did; this is a reader of the log, like the
dashboard's. One follower thread reads the events after a cursor, asks ``tools/notify.py`` what each one
tells whom, and queues the notifications; ``senders`` threads post them, each with a timeout and retries
after a doubling pause (``backoff_s`` up to ``backoff_max_s``). A notification that still fails is an event
(``notify_failed``, naming the receiver's host and the reason); one that finds the queue full
(``queue_size``: the receiver is down, or slow) is dropped, and the drop is an event (``notify_dropped``).

The cursor is kept in the store's settings (``notify.cursor``): it is the last event whose notification
was sent, failed for good or dropped, so a restart sends none of those again, and sends again only those
it had queued but not finished (with the same ``Idempotency-Key``, ``gpuherd-event-<id>``, so a receiver
may drop the repeat). On a database without a cursor (the first start, or an older gpuherd) the cursor
starts at the newest event: history is not sent.

A reservation's window beginning is not an event of its own, so the follower writes one
(``reservation_began``) for each window that began since it last looked (``notify.reservations_until``).

A ``mailto:`` target is sent as a mail through the config's SMTP server (``smtplib``), with the same
retries; its Message-ID is the notification's key.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import queue
import smtplib
import ssl
import threading
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage

from tools.door.context import Core, ToolContext
from tools.door.observe import latest_event_id
from tools.models import ACTIVE, Event, Job
from tools.notify import (
    ARRAY_WHOLE,
    NOTIFYING_KINDS,
    RESERVATION_BEGAN,
    Destination,
    Note,
    NotifyConfig,
    NotifyEvent,
    SmtpConfig,
    Style,
    array_outcome,
    destination,
    note,
    what_happened,
)

log = logging.getLogger("gpuherd")

CURSOR_KEY = "notify.cursor"
RESERVATIONS_KEY = "notify.reservations_until"
EVENTS_PER_READ = 500  # a long catch-up is read a page at a time, so memory stays bounded
POLL_S = 1.0  # how often the follower looks at the log
ARRAYS_REMEMBERED = 10_000  # arrays whose end was told, so that tasks that ended together tell it once
REPLY_BYTES = 65_536  # read of a receiver's answer, then the connection is let go


class DeliveryFailed(Exception):
    """A try that did not reach the receiver, or that it refused; ``permanent``: trying again will not help."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect is refused as it is (its final URL should be configured)."""

    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


_THROUGH_PROXY = urllib.request.build_opener(_NoRedirects())  # http(s)_proxy from the environment
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def post_webhook(to: Destination, body: bytes, key: str, timeout_s: float) -> None:
    """POST ``body`` (JSON) to ``to``; DeliveryFailed unless the receiver answers 2xx."""
    request = urllib.request.Request(to.url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "gpuherd", "Idempotency-Key": key})
    opener = _DIRECT if _is_loopback(to.host) else _THROUGH_PROXY
    try:
        with opener.open(request, timeout=timeout_s) as response:
            response.read(REPLY_BYTES)
    except urllib.error.HTTPError as exc:
        # 4xx is the receiver refusing this body or URL (bad token, gone): the same body will not fare
        # better; 408 and 429 ask to come back later, and 5xx is the receiver's own trouble.
        permanent = 300 <= exc.code < 500 and exc.code not in (408, 425, 429)
        raise DeliveryFailed(f"HTTP {exc.code} {exc.reason}".strip(), permanent=permanent) from None
    except urllib.error.URLError as exc:
        raise DeliveryFailed(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:  # a timeout, a connection reset mid-answer
        raise DeliveryFailed(str(exc) or type(exc).__name__) from None


def send_mail(smtp: SmtpConfig, to: Destination, message: Note, timeout_s: float) -> None:
    """Mail ``message`` to ``to``'s address through ``smtp``; DeliveryFailed unless the server takes it."""
    mail = EmailMessage()
    mail["From"] = smtp.sender
    mail["To"] = to.address
    mail["Subject"] = message.text[:200]
    mail["Message-ID"] = f"<{message.key}@gpuherd>"
    mail.set_content(f"{message.text}\n\n{message.body.get('message') or ''}\n")
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s) as client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            client.send_message(mail)
    except smtplib.SMTPRecipientsRefused as exc:
        code, why = next(iter(exc.recipients.values()))
        raise DeliveryFailed(f"SMTP {code} {why.decode(errors='replace')}", permanent=code >= 500) from None
    except smtplib.SMTPResponseException as exc:  # 5xx is a refusal; 4xx asks to come back later
        why = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise DeliveryFailed(f"SMTP {exc.smtp_code} {why}", permanent=exc.smtp_code >= 500) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryFailed(str(exc) or type(exc).__name__) from None


@dataclass(frozen=True)
class Delivery:
    event_id: int
    job_id: int | None
    note: Note
    to: Destination


class Notifier:
    """Follows ``core``'s event log and sends its notifications as ``config`` says. ``follow()`` reads once
    (the follower thread calls it every ``poll_s``); ``start()`` and ``stop()`` run the threads."""

    def __init__(self, core: Core, config: NotifyConfig, *, poll_s: float = POLL_S) -> None:
        self._core = core
        self._config = config
        self._poll_s = poll_s
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=config.queue_size)
        self._lock = threading.Lock()
        self._read_to: int | None = None  # the last event read
        self._pending: set[int] = set()  # events whose notification is queued or being sent
        self._saved: int | None = None
        self._arrays_ended: dict[int, None] = {}  # arrays whose end was told, oldest first
        self._reservations_until = 0.0  # reservations that began by then are told (saved when one is)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        loops = [(self._follow_loop, "herd-notify-follow")]
        loops += [(self._send_loop, f"herd-notify-send-{i}") for i in range(self._config.senders)]
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following and sending; a try in progress ends within its timeout. What was not sent is
        sent after the next start (the cursor stays before it)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s + self._config.timeout_s)
        self._threads.clear()
        try:  # once every sender is done: what they sent while stopping is not sent again
            self._save_cursor()
        except Exception:
            log.exception("saving the notifications' cursor failed")

    def _follow_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                while self.follow() == EVENTS_PER_READ and not self._stopping.is_set():
                    pass  # catching up: read on at once
            except Exception:  # the follower must outlive a locked or failing database
                log.exception("following the event log for notifications failed")
            self._stopping.wait(self._poll_s)

    # -- following --------------------------------------------------------------------------------------
    def follow(self) -> int:
        """Queue the notifications of the events after the cursor (at most ``EVENTS_PER_READ``); the number read."""
        store = self._core.store
        now = self._core.clock.now()
        if self._read_to is None:
            self._begin(now)
        self._note_reservations(now)
        assert self._read_to is not None
        events = store.events(after_id=self._read_to, limit=EVENTS_PER_READ)
        dropped: Counter[str] = Counter()
        for event in events:
            delivery = self._delivery(event)
            with self._lock:
                self._read_to = event.id
                if delivery is None:
                    continue
                try:
                    self._queue.put_nowait(delivery)
                    self._pending.add(delivery.event_id)
                except queue.Full:
                    dropped[delivery.to.host] += 1
        for host, count in dropped.items():
            store.add_event(Event(time=now, kind="notify_dropped", message=f"{count} notification(s) to {host} dropped: "
                                  f"{self._config.queue_size} are waiting already (the receiver is down or slow)",
                                  data={"host": host, "count": count}))
        self._save_cursor()
        return len(events)

    def _begin(self, now: float) -> None:
        """Resume after the saved cursor; with none, start at the newest event (history is not sent)."""
        store = self._core.store
        saved = store.get_setting(CURSOR_KEY)
        if saved is None:
            self._read_to = latest_event_id(ToolContext(self._core))
            store.set_setting(CURSOR_KEY, str(self._read_to))
        else:
            self._read_to = int(saved)
        self._saved = self._read_to
        until = store.get_setting(RESERVATIONS_KEY)
        if until is None:
            store.set_setting(RESERVATIONS_KEY, repr(now))
        self._reservations_until = now if until is None else float(until)

    def _note_reservations(self, now: float) -> None:
        """An event for each reservation whose window began since the last look (one that began while the
        server was down is told if its window is still open)."""
        store = self._core.store
        since = self._reservations_until
        if now <= since:
            return
        began = [r for r in store.reservations() if since < r.start <= now < r.end]
        for r in sorted(began, key=lambda r: (r.start, r.id)):
            store.add_event(Event(
                time=now, kind=RESERVATION_BEGAN,
                message=f"reservation {r.id} for {r.holder()} began: {r.node} GPU(s) {','.join(map(str, r.gpus))}",
                data={"reservation": r.id, "user": r.user, "group": r.group, "holder": r.holder(), "node": r.node,
                      "gpus": list(r.gpus), "end": r.end}))
        if began:
            store.set_setting(RESERVATIONS_KEY, repr(now))
        self._reservations_until = now

    def _delivery(self, event: Event) -> Delivery | None:
        if event.kind not in NOTIFYING_KINDS or event.id is None:
            return None  # most events (requests, estimates, the notifier's own) notify nobody: no job read
        job = self._core.store.get_job(event.job_id) if event.job_id is not None else None
        what = what_happened(event, job)
        if what is None or (what != NotifyEvent.RESERVATION and job is None):
            return None  # a job's event whose job is no longer stored: nobody to tell
        outcomes = None
        if job is not None and job.array_id is not None and what in ARRAY_WHOLE:
            told = self._array(event, job, what)
            if told is None:
                return None
            what, outcomes = told
        user = job.user if job is not None else event.data.get("user")
        to = destination(what, user, job, self._config)
        return None if to is None else Delivery(event.id, event.job_id, note(event, job, what, array=outcomes), to)

    def _array(self, event: Event, task: Job, what: NotifyEvent) -> tuple[NotifyEvent, dict[str, int] | None] | None:
        """An array is told of once at its start (its first task's first start) and once at its end: at the
        end of a task among the last to end, once every task has ended (tasks that end in one pass end at
        the same time, and the first of their events read tells it); None for the other tasks."""
        if what == NotifyEvent.START:
            return (what, None) if task.id == task.array_id and event.time == task.first_start_time else None
        store, array_id = self._core.store, task.array_id
        assert array_id is not None and task.array_size is not None
        if array_id in self._arrays_ended or store.page_jobs(statuses=ACTIVE, array_id=array_id, limit=1):
            return None  # told already, or a task still waits or runs (a look in memory, before reading them all)
        tasks = store.page_jobs(array_id=array_id, before=array_id + task.array_size, limit=task.array_size)
        if max(t.end_time or 0.0 for t in tasks) != task.end_time:
            return None  # another task ended later: its event tells it
        self._arrays_ended[array_id] = None
        if len(self._arrays_ended) > ARRAYS_REMEMBERED:
            del self._arrays_ended[next(iter(self._arrays_ended))]
        return array_outcome(tasks)

    def _save_cursor(self) -> None:
        """Save the last event before which every notification is done (sent, failed or dropped)."""
        with self._lock:
            if self._read_to is None:
                return
            done_to = min(self._pending) - 1 if self._pending else self._read_to
        if done_to != self._saved:
            self._core.store.set_setting(CURSOR_KEY, str(done_to))
            self._saved = done_to

    # -- sending ------------------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                delivery = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                done = self._deliver(delivery)
            except Exception:  # a sender must outlive a failed write of its failure event
                log.exception("sending a notification failed")
                done = True
            if done:
                with self._lock:
                    self._pending.discard(delivery.event_id)

    def _deliver(self, d: Delivery) -> bool:
        """Try, and retry after a doubling pause; True once done (sent, or failed for good), False if
        stopped first (it is sent again after a restart)."""
        config = self._config
        tries = 0
        while True:
            tries += 1
            try:
                if d.to.style == Style.EMAIL:
                    assert config.smtp is not None  # NotifyConfig refuses a mailto: target without one
                    send_mail(config.smtp, d.to, d.note, config.timeout_s)
                else:
                    post_webhook(d.to, d.note.payload(d.to.style), d.note.key, config.timeout_s)
                return True
            except DeliveryFailed as exc:
                reason, permanent = str(exc), exc.permanent
            if permanent or tries > config.retries:
                break
            pause = min(config.backoff_max_s, config.backoff_s * 2 ** (tries - 1))
            if self._stopping.wait(pause):
                return False
        about = f"job {d.job_id}'s {d.note.what.value}" if d.job_id is not None else d.note.what.value
        self._core.store.add_event(Event(
            time=self._core.clock.now(), kind="notify_failed", job_id=d.job_id,
            message=f"notification of {about} to {d.to.host} failed after {tries} tr{'y' if tries == 1 else 'ies'}: {reason}",
            data={"host": d.to.host, "reason": reason, "tries": tries, "event": d.note.what.value, "event_id": d.event_id}))
        return True
