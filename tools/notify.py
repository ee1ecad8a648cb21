"""Notifications, decided purely: which events of the log tell whom, where, and in what words.

A notification is an event of the log seen from its owner's side: a job's start, end, failure, time
limit, idle GPUs or preemption, or a reservation's window beginning. Where it goes is, in order: the
job's own ``notify`` (a URL, or ``off``), its owner's webhook in the config (``notify.users``), the lab's
(``notify.default``); which events go is the job's ``notify_on``, else the config's ``events``.

An array is told of as one job, as Slurm mails of one: its start when its first task first starts, its
end (``end``, or ``fail`` if a task failed or hit its time limit, with the count of each outcome) when
its last task ends; a task's idle GPUs and preemption are told of one by one.

A webhook is an http(s) URL. A generic receiver gets a JSON object (``event``, ``text``, ``job``, ...); a
URL written ``slack:https://...`` gets Slack's incoming-webhook body ``{"text": ...}`` instead (Mattermost,
Rocket.Chat and Discord's ``/slack`` endpoint take it too). A URL may hold a secret token, so only its
host is ever written to the event log. Where the config has an ``smtp`` block, a user's or the lab's
target may also be ``mailto:address`` (a job's own ``notify`` stays a webhook).

The threads that follow the log and send are ``agent/notifier.py``; nothing here reads a clock, the store
or the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Iterable, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from tools.models import Event, Job


class NotifyEvent(StrEnum):
    """What a person may be told of (``--notify-on``, the config's ``events``)."""

    START = "start"  # a job started running (every attempt)
    END = "end"  # it completed, or was cancelled
    FAIL = "fail"  # it failed for good (no retry left)
    TIMEOUT = "timeout"  # it was stopped at its time limit
    IDLE = "idle"  # it holds GPUs it does not use
    PREEMPT = "preempt"  # it is being stopped and will be requeued: for another job, a failed GPU, idle GPUs
    RESERVATION = "reservation"  # a reservation's window began: not a job's event, so not in notify_on


# A job's own events (``notify_on``), as a Literal so that a schema offers exactly these.
JobEvent = Literal["start", "end", "fail", "timeout", "idle", "preempt"]
JOB_EVENTS = get_args(JobEvent)
assert set(JOB_EVENTS) == set(NotifyEvent) - {NotifyEvent.RESERVATION}
OFF = "off"
SLACK_PREFIX = "slack:"
MAILTO = "mailto:"
_ADDRESS = re.compile(r"^[^@\s<>,;:\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
MAX_URL = 2048
# The event the notifier writes when a reservation's window begins (the log has none of its own).
RESERVATION_BEGAN = "reservation_began"
# Events of the log that notify, by kind ("failed" is a failure or a time limit, told apart by the job).
_BY_KIND = {
    "running": NotifyEvent.START,
    "completed": NotifyEvent.END,
    "cancelled": NotifyEvent.END,
    "failed": NotifyEvent.FAIL,
    "idle": NotifyEvent.IDLE,
    "preempting": NotifyEvent.PREEMPT,  # for a job of higher priority, or a reservation
    "requeueing": NotifyEvent.PREEMPT,  # for a reason not its own: its GPU failed, or it held its GPUs idle
    RESERVATION_BEGAN: NotifyEvent.RESERVATION,
}
NOTIFYING_KINDS = frozenset(_BY_KIND)
# What follows an idle event (the config's idle_action), as the notification says it.
_IDLE_ACTIONS = {"requeue": "; it is requeued (no retry used)", "stop": "; it is stopped"}
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
EXAMPLE = "e.g. https://hooks.example.org/gpuherd or slack:https://hooks.slack.com/services/..."


class Style(StrEnum):
    JSON = "json"  # gpuherd's own object
    SLACK = "slack"  # {"text": ...}
    EMAIL = "email"  # a mail through the config's SMTP server; url is mailto:address


@dataclass(frozen=True)
class Destination:
    url: str
    style: Style

    @property
    def host(self) -> str:
        """What the event log may name: the URL's host, never its path (a webhook's path is its secret);
        for a mail, the address's domain."""
        if self.style == Style.EMAIL:
            return self.url.rpartition("@")[2]
        return urlsplit(self.url).hostname or "?"

    @property
    def address(self) -> str:
        return self.url[len(MAILTO):]


def parse_destination(text: str) -> Destination:
    """A target as people write it: ``https://...``, ``slack:https://...`` for a Slack-style body, or
    ``mailto:address``. ValueError says what to write."""
    if text.startswith(MAILTO):
        if len(text) > 254 + len(MAILTO) or not _ADDRESS.match(text[len(MAILTO):]):
            raise ValueError(f"{text[len(MAILTO):]!r} is not an e-mail address; write e.g. mailto:alice@lab.example")
        return Destination(text, Style.EMAIL)
    style, url = (Style.SLACK, text[len(SLACK_PREFIX):]) if text.startswith(SLACK_PREFIX) else (Style.JSON, text)
    if len(text) > MAX_URL:
        raise ValueError(f"a webhook URL is at most {MAX_URL} characters")
    if _UNSAFE.search(url):
        raise ValueError("a webhook URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  raises on a port that is no number
    except ValueError:
        raise ValueError(f"not a URL; give an http(s) webhook, {EXAMPLE}, or off") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL; give a webhook, {EXAMPLE}, or off")
    return Destination(url, style)


def check_target(text: str, *, email: bool = False) -> str:
    """``off``, a webhook, or with ``email`` a ``mailto:`` address (``parse_destination``'s rules); the text unchanged."""
    if text != OFF and parse_destination(text).style == Style.EMAIL and not email:
        raise ValueError("a job's notify is an http(s) webhook or off; e-mail addresses are the config's (notify.users)")
    return text


class SmtpConfig(BaseModel):
    """The mail server that ``mailto:`` targets go through (``notify.smtp``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="The SMTP server.")
    port: int = Field(25, ge=1, le=65535, description="Its port: 25, or 587 with starttls.")
    sender: str = Field(description="The From address.")
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS before anything is sent.")
    username: str | None = Field(None, description="Log in as this user (after STARTTLS).")
    password: str | None = Field(None, repr=False, description="And this password.")

    @field_validator("sender")
    @classmethod
    def _an_address(cls, v: str) -> str:
        if not _ADDRESS.match(v):
            raise ValueError(f"{v!r} is not an e-mail address")
        return v


def read_events(value: Any) -> Any:
    """``start,end`` as a shell gives it, or a list as JSON and YAML do."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class NotifyConfig(BaseModel):
    """The config's ``notify:`` block: where the lab's and each user's notifications go, and how hard to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = Field(None, description="The lab's webhook: every user without one of their own.")
    users: dict[str, str] = Field(default_factory=dict, description="A user's own webhook, or off for none.")
    events: tuple[NotifyEvent, ...] = Field(tuple(NotifyEvent), description="What is sent, unless a job says "
                                            "otherwise (notify_on): " + ", ".join(NotifyEvent) + ".")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Longest wait for a receiver's answer.")
    retries: int = Field(3, ge=0, le=10, description="Tries after a failed one, each after a longer pause.")
    backoff_s: float = Field(1.0, ge=0, le=60, description="Pause before the first retry; doubles after each.")
    backoff_max_s: float = Field(30.0, ge=0, le=600, description="Longest pause between two tries.")
    queue_size: int = Field(1000, ge=1, le=100_000, description="Notifications waiting to be sent; past it, new "
                            "ones are dropped (and the drop is an event), so a receiver down for hours costs no memory.")
    senders: int = Field(2, ge=1, le=16, description="Threads sending at once, so one slow receiver holds up no other.")
    smtp: SmtpConfig | None = Field(None, description="The mail server for mailto: targets; none: no mail.")

    @field_validator("default", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return OFF if v is False else v  # YAML reads a bare `off` as false

    @field_validator("users", mode="before")
    @classmethod
    def _yaml_offs(cls, v: Any) -> Any:
        return {user: OFF if target is False else target for user, target in v.items()} if isinstance(v, dict) else v

    @field_validator("default")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        return v if v is None else check_target(v, email=True)

    @field_validator("users")
    @classmethod
    def _webhooks(cls, v: dict[str, str]) -> dict[str, str]:
        for user, target in v.items():
            try:
                check_target(target, email=True)
            except ValueError as exc:
                raise ValueError(f"{user}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _mail_needs_a_server(self) -> NotifyConfig:
        mailed = [k for k, t in (("default", self.default), *((f"users.{u}", t) for u, t in self.users.items()))
                  if t is not None and t.startswith(MAILTO)]
        if mailed and self.smtp is None:
            raise ValueError(f"{', '.join(mailed)}: a mailto: target needs a mail server: add smtp: {{host: ..., "
                             "sender: ...}")
        return self

    @field_validator("events", mode="before")
    @classmethod
    def _events(cls, v: Any) -> Any:
        return read_events(v)


# -- deciding --------------------------------------------------------------------------------------------
def what_happened(event: Event, job: Job | None) -> NotifyEvent | None:
    """The notification ``event`` makes, if any (``job``: its job's record, to tell a time limit apart)."""
    found = _BY_KIND.get(event.kind)
    if found == NotifyEvent.FAIL and job is not None and job.end_reason == "timeout":
        return NotifyEvent.TIMEOUT
    if found is not None and found != NotifyEvent.RESERVATION and event.job_id is None:
        return None
    return found


ARRAY_WHOLE = frozenset({NotifyEvent.START, NotifyEvent.END, NotifyEvent.FAIL, NotifyEvent.TIMEOUT})


def array_outcome(tasks: Iterable[Job]) -> tuple[NotifyEvent, dict[str, int]]:
    """What an array's end is (``end``, or ``fail`` if any task failed or hit its limit) and how many
    tasks ended how (``completed``, ``failed``, ``timeout``, ``cancelled``)."""
    counts: dict[str, int] = {}
    for task in tasks:
        how = task.end_reason.value if task.end_reason is not None else task.status.value
        counts[how] = counts.get(how, 0) + 1
    failed = counts.get("failed", 0) + counts.get("timeout", 0)
    return (NotifyEvent.FAIL if failed else NotifyEvent.END), counts


def destination(what: NotifyEvent, user: str | None, job: Job | None, config: NotifyConfig) -> Destination | None:
    """Where ``what`` (about ``job``, or about ``user``'s reservation) goes, or None: nowhere."""
    wanted: Iterable[NotifyEvent] = config.events
    target: str | None = None
    if job is not None:
        if job.notify_on is not None:
            wanted = job.notify_on
        target = job.notify
    if what not in wanted or target == OFF:
        return None
    if target is None and user is not None:
        target = config.users.get(user)
    if target is None:
        target = config.default
    if target is None or target == OFF:
        return None
    return parse_destination(target)


# -- the words ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Note:
    """One notification, ready to send to any destination."""

    key: str  # the same on every try and after a restart, so a receiver can drop a repeat
    what: NotifyEvent
    text: str  # one line a person reads
    body: dict[str, Any]  # the generic JSON object

    def payload(self, style: Style) -> bytes:
        return json.dumps({"text": self.text} if style == Style.SLACK else self.body).encode()


def note(event: Event, job: Job | None, what: NotifyEvent, *, array: dict[str, int] | None = None) -> Note:
    """The notification of ``event``; for an array's start or end (``job`` a task of it), the array's, with
    ``array`` the count of its tasks' outcomes at its end."""
    key = f"gpuherd-event-{event.id}"
    whole = job is not None and job.array_id is not None and what in ARRAY_WHOLE
    sentence = _array_sentence(event, job, what, array) if whole and job is not None else _sentence(event, job, what)
    text = f"[gpuherd] {sentence}"
    body: dict[str, Any] = {
        "id": key, "event": what.value, "kind": event.kind, "time": event.time, "text": text,
        "message": event.message, "data": event.data, "job": _job_summary(job) if job is not None else None,
    }
    if whole and job is not None:
        body["array"] = {"id": job.array_id, "tasks": job.array_size, **(array or {})}
    return Note(key, what, text, body)


def _array_sentence(event: Event, job: Job, what: NotifyEvent, outcomes: dict[str, int] | None) -> str:
    who = f"array {job.array_id} ({job.display_name}) of {job.user}, {job.array_size} task(s),"
    if what == NotifyEvent.START:
        return f"{who} started: its first task is job {job.id}"
    told = ", ".join(f"{n} {how}" for how, n in sorted((outcomes or {}).items(), key=lambda kv: -kv[1]))
    return f"{who} ended: {told}" if what == NotifyEvent.END else f"{who} ended with failures: {told}"


def _job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "name": job.display_name, "user": job.user, "status": job.status.value,
        "gpus": job.gpu_count, "allocation": job.allocation.describe() if job.allocation else None,
        "exit_code": job.exit_code, "end_reason": job.end_reason.value if job.end_reason else None,
        "attempts": job.attempts,
    }


def _sentence(event: Event, job: Job | None, what: NotifyEvent) -> str:
    data = event.data
    if what == NotifyEvent.RESERVATION:
        gpus = ",".join(map(str, data.get("gpus", ())))
        until = f" until {_when(data['end'])}" if isinstance(data.get("end"), (int, float)) else ""
        return f"reservation {data.get('reservation', '?')} for {data.get('holder', '?')} began: {data.get('node', '?')} " \
               f"GPU(s) {gpus}{until}"
    if job is None:
        return f"job {event.job_id}: {event.message or event.kind}"
    who = f"job {job.id} ({job.display_name}) of {job.user}"
    ran = f" after {_duration(job.run_seconds(event.time))}" if job.start_time is not None else ""
    code = f"exit code {job.exit_code}" if job.exit_code is not None else "no exit code"
    if what == NotifyEvent.START:
        where = data.get("allocation") or {}
        gpus = ",".join(map(str, where.get("gpus", ())))
        return f"{who} started on {where.get('node', '?')} GPU(s) {gpus}" if where else f"{who} started"
    if what == NotifyEvent.END:
        return f"{who} was cancelled{ran}" if event.kind == "cancelled" else f"{who} completed ({code}){ran}"
    if what == NotifyEvent.FAIL:
        return f"{who} failed ({code}){ran}"
    if what == NotifyEvent.TIMEOUT:
        limit = f" of {_duration(job.time_limit_s)}" if job.time_limit_s else ""
        return f"{who} was stopped at its time limit{limit}"
    if what == NotifyEvent.PREEMPT:
        return f"{who} is being stopped and will be requeued, using no retry ({event.message})"
    gpus = ", ".join(map(str, data.get("gpus", ()))) or "its"
    pct = data.get("utilization_pct")
    idle_for = data.get("idle_for_s")
    level = f" at {pct:g}% utilization" if isinstance(pct, (int, float)) else " unused"
    span = f" for {_duration(idle_for)}" if isinstance(idle_for, (int, float)) else ""
    return f"{who} has held GPU(s) {gpus}{level}{span}{_IDLE_ACTIONS.get(data.get('action'), '')}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")
