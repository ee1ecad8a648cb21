"""Notifications: what each event tells whom (pure), and the notifier against a webhook receiver on loopback.

The receiver is a tiny ``http.server`` in a thread; the core is the real one on a simulated clock, so the
events come from real passes (starts, ends, time limits) or are written as their producer writes them
(``idle``). Nothing leaves the machine.
"""

from __future__ import annotations

import email
import email.message
import getpass
import json
import re
import socketserver
import threading
import time

import pytest
from pydantic import ValidationError

from agent.cli import main
from agent.notifier import CURSOR_KEY, Notifier
from agent.settings import Settings
from tests.cores import make_core
from tests.helpers import WebhookReceiver, wait_until
from tools.clock import SimClock
from tools.door import jobs
from tools.door.context import Actor, PermissionDenied, ToolContext
from tools.models import Event, JobRequest, Reservation
from tools.notify import NotifyConfig, NotifyEvent, Style, destination, note, parse_destination, what_happened
from tools.sim_executor import SimExecutor
from tools.store import SqliteStore

T0 = 1_700_000_000.0


# -- the receiver -------------------------------------------------------------------------------------------
@pytest.fixture
def receiver():
    made = WebhookReceiver()
    yield made
    made.close()


class Lab:
    """The real core on a simulated clock, with a notifier whose threads the test starts and stops."""

    def __init__(self, config: NotifyConfig, *, store=None, durations=None, codes=None) -> None:
        self.clock = SimClock(T0)
        self.sim = SimExecutor(duration_of=lambda job: (durations or {}).get(job.id),
                               exit_code_of=lambda job: (codes or {}).get(job.id, 0))
        kwargs = {"store": store} if store is not None else {}
        self.core = make_core(nodes={"a": 4}, clock=self.clock, executor=self.sim, **kwargs)
        self.config = config
        self.notifier = Notifier(self.core, config, poll_s=0.02)

    def submit(self, user: str = "alice", **request) -> int:
        ctx = ToolContext(self.core, Actor(user=user))
        return jobs.queue_job(ctx, JobRequest(command="true", gpu_count=1, **request)).id

    def tick(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.core.orchestrator.tick()

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.core.store.events(limit=100_000) if e.kind == kind]

    def restart_notifier(self) -> None:
        self.notifier.stop()
        self.notifier = Notifier(self.core, self.config, poll_s=0.02)
        self.notifier.start()


def fast(**values) -> NotifyConfig:
    return NotifyConfig(**{"timeout_s": 2.0, "backoff_s": 0.01, "backoff_max_s": 0.05, **values})


# -- pure: destinations, routing, words ------------------------------------------------------------------------
@pytest.mark.parametrize("text, want_style", [
    ("https://hooks.example.org/gpuherd", Style.JSON),
    ("http://10.0.0.5:8080/hook?token=abc", Style.JSON),
    ("slack:https://hooks.slack.com/services/T0/B0/XYZ", Style.SLACK),
], ids=["https", "http-port-query", "slack"])
def test_a_webhook_is_an_http_url_with_slack_as_a_prefix(text, want_style):
    assert parse_destination(text).style == want_style


@pytest.mark.parametrize("text, want_error", [
    ("ftp://files.example.org/x", "not an http(s) URL"),
    ("hooks.example.org/x", "not an http(s) URL"),
    ("https://", "not an http(s) URL"),
    ("https://a.example/x y", "no spaces"),
    ("https://a.example:port/x", "not a URL"),
    ("slack:mailto:a@b.c", "not an http(s) URL"),
    ("https://a.example/" + "x" * 2100, "at most 2048"),
], ids=["ftp", "no-scheme", "no-host", "space", "bad-port", "slack-not-http", "too-long"])
def test_a_bad_webhook_is_refused_saying_what_to_write(text, want_error):
    with pytest.raises(ValueError, match=re.escape(want_error)):
        parse_destination(text)


def test_the_host_alone_is_named_never_the_secret_path():
    assert parse_destination("slack:https://hooks.slack.com/services/T0/B0/SECRET").host == "hooks.slack.com"


def test_the_variable_takes_the_block_as_json(monkeypatch):
    monkeypatch.delenv("HERD_CONFIG", raising=False)
    monkeypatch.setenv("HERD_NOTIFY", '{"default": "https://lab.example/hook", "events": "start,end"}')
    assert Settings().notify == NotifyConfig(default="https://lab.example/hook", events=("start", "end"))


def test_config_refuses_a_bad_webhook_or_an_unknown_key_naming_it(tmp_path):
    with pytest.raises(ValidationError, match=r"notify\.users[\s\S]*alice: not an http\(s\) URL"):
        Settings.plain(notify={"users": {"alice": "ftp://x"}})
    with pytest.raises(ValidationError, match=r"notify\.default"):
        Settings.plain(notify={"default": "nope"})
    with pytest.raises(ValidationError, match=r"notify\.defualt"):
        Settings.plain(notify={"defualt": "https://x.example/h"})
    with pytest.raises(ValidationError, match=r"notify\.events"):
        Settings.plain(notify={"events": "start,bogus"})
    config = tmp_path / "herd.yaml"
    config.write_text("notify:\n  default: slack:https://hooks.slack.com/services/T/B/X\n  users:\n    bob: off\n"
                      "  events: [start, fail, reservation]\n")
    read = Settings(config=config).notify
    assert read.default.startswith("slack:") and read.users == {"bob": "off"}
    assert read.events == (NotifyEvent.START, NotifyEvent.FAIL, NotifyEvent.RESERVATION)


@pytest.mark.parametrize("body, want_field", [
    ({"notify": "ftp://x"}, "notify"),
    ({"notify": "file:///etc/passwd"}, "notify"),
    ({"notify_on": "start,bogus"}, "notify_on"),
    ({"notify_on": ["reservation"]}, "notify_on"),
    ({"notify_on": "start,start,end,fail,timeout,idle,preempt"}, "notify_on"),
], ids=["ftp", "file", "unknown-event", "reservation-is-not-a-job-event", "too-many"])
def test_a_job_refuses_a_bad_webhook_or_event_naming_the_field(body, want_field):
    with pytest.raises(ValidationError) as err:
        JobRequest(command="true", gpu_count=1, **body)
    assert [e["loc"][0] for e in err.value.errors()] == [want_field]


def test_a_job_takes_events_as_a_list_or_as_the_shell_writes_them():
    assert JobRequest(command="true", gpu_count=1, notify_on="start, end").notify_on == ("start", "end")
    assert JobRequest(command="true", gpu_count=1, notify_on=["idle"], notify="off").notify_on == ("idle",)


LAB = "slack:https://lab.example/hook"
ALICE = "https://alice.example/hook"
OWN = "https://own.example/hook"


@pytest.mark.parametrize("what, user, job_fields, config, want", [
    ("start", "alice", {}, {"default": LAB, "users": {"alice": ALICE}}, ALICE),
    ("start", "bob", {}, {"default": LAB, "users": {"alice": ALICE}}, LAB),
    ("start", "bob", {}, {"users": {"alice": ALICE}}, None),
    ("start", "bob", {}, {"default": LAB, "users": {"bob": "off"}}, None),
    ("start", "alice", {"notify": OWN}, {"default": LAB, "users": {"alice": ALICE}}, OWN),
    ("start", "alice", {"notify": "off"}, {"default": LAB, "users": {"alice": ALICE}}, None),
    ("start", "alice", {"notify_on": ("end",)}, {"default": LAB}, None),
    ("end", "alice", {"notify_on": ("end",)}, {"default": LAB}, LAB),
    ("start", "alice", {}, {"default": LAB, "events": ("end", "fail")}, None),
    ("start", "alice", {"notify_on": ("start",)}, {"default": LAB, "events": ("end",)}, LAB),
    ("reservation", "alice", None, {"default": LAB, "users": {"alice": ALICE}}, ALICE),
    ("reservation", None, None, {"default": LAB, "users": {"alice": ALICE}}, LAB),
    ("reservation", "alice", None, {"default": LAB, "events": ("start",)}, None),
], ids=["user", "lab", "nobody", "user-off", "job-url", "job-off", "job-filter-out", "job-filter-in",
        "config-filter", "job-events-win", "reservation-user", "reservation-group-to-lab", "reservation-not-wanted"])
def test_where_a_notification_goes(what, user, job_fields, config, want):
    job = None
    if job_fields is not None:
        job = make_job(user, **job_fields)
    found = destination(NotifyEvent(what), user, job, NotifyConfig(**config))
    assert (found.url if found is not None and found.style == Style.JSON else
            f"slack:{found.url}" if found is not None else None) == want


def make_job(user: str, **fields):
    from tools.models import Job
    return Job(id=7, user=user, command="true", gpu_count=1, submit_time=T0, **fields)


def test_a_failed_job_that_hit_its_time_limit_is_a_timeout():
    failed = Event(id=3, time=T0, kind="failed", job_id=7)
    assert what_happened(failed, make_job("alice", end_reason="failed")) == NotifyEvent.FAIL
    assert what_happened(failed, make_job("alice", end_reason="timeout")) == NotifyEvent.TIMEOUT
    assert what_happened(Event(id=4, time=T0, kind="requeueing", job_id=7), None) == NotifyEvent.PREEMPT
    assert what_happened(Event(id=4, time=T0, kind="queued", job_id=7), None) is None
    assert what_happened(Event(id=5, time=T0, kind="notify_failed", job_id=7), None) is None


def test_the_words_generic_and_slack():
    job = make_job("alice", name="bert", status="running", start_time=T0 - 2400)
    idle = Event(id=9, time=T0, kind="idle", job_id=7, message="idle",
                 data={"gpus": ["a:0", "a:1"], "utilization_pct": 1, "idle_for_s": 2400, "action": "notify"})
    made = note(idle, job, NotifyEvent.IDLE)
    generic = json.loads(made.payload(Style.JSON))
    assert generic["event"] == "idle" and generic["id"] == "gpuherd-event-9"
    assert generic["job"]["user"] == "alice" and generic["data"]["utilization_pct"] == 1
    assert json.loads(made.payload(Style.SLACK)) == {
        "text": "[gpuherd] job 7 (bert) of alice has held GPU(s) a:0, a:1 at 1% utilization for 40 min"}
    requeued = idle.model_copy(update={"data": {**idle.data, "action": "requeue"}})
    assert note(requeued, job, NotifyEvent.IDLE).text.endswith("for 40 min; it is requeued (no retry used)")


# -- the notifier, against a receiver --------------------------------------------------------------------------
def test_json_to_a_user_and_slack_to_the_lab(receiver):
    lab = Lab(fast(default="slack:" + receiver.url("/lab"), users={"alice": receiver.url("/alice")}),
              durations={1: 60, 2: 60}, codes={2: 3})
    lab.notifier.start()
    try:
        lab.submit("alice", name="bert")
        lab.submit("bob", name="gan", max_retries=0)
        lab.tick()
        lab.tick(61)
        wait_until(lambda: len(receiver.got) == 4, what=lambda: f"4 notifications, got {receiver.got}")
    finally:
        lab.notifier.stop()
    alice = receiver.at("/alice")
    assert [r.body["event"] for r in alice] == ["start", "end"] or [r.body["event"] for r in alice] == ["end", "start"]
    start = next(r for r in alice if r.body["event"] == "start")
    # The job as it stands when the event is read (it may have ended by then): the event says what happened.
    assert {k: start.body["job"][k] for k in ("id", "name", "user", "gpus", "allocation")} == {
        "id": 1, "name": "bert", "user": "alice", "gpus": 1, "allocation": "a GPU(s) 0"}
    assert start.body["kind"] == "running" and start.body["data"]["allocation"] == {"node": "a", "gpus": [0]}
    assert start.body["text"] == "[gpuherd] job 1 (bert) of alice started on a GPU(s) 0"
    assert start.key == start.body["id"] == f"gpuherd-event-{lab.kinds('running')[0].id}"
    texts = sorted(r.body["text"] for r in receiver.at("/lab"))
    assert all(set(r.body) == {"text"} for r in receiver.at("/lab"))
    assert texts == ["[gpuherd] job 2 (gan) of bob failed (exit code 3) after 1 min",
                     "[gpuherd] job 2 (gan) of bob started on a GPU(s) 1"]


def test_a_jobs_own_url_its_off_and_its_events(receiver):
    lab = Lab(fast(default=receiver.url("/lab")), durations={1: 10, 2: 10, 3: 10})
    lab.notifier.start()
    try:
        lab.submit(notify=receiver.url("/own"), notify_on="end")
        lab.submit(notify="off")
        lab.tick()
        lab.tick(11)
        lab.submit(name="last")  # to the lab: once it is there, every earlier event was followed
        lab.tick()
        wait_until(lambda: receiver.at("/lab"), what="the last job's start at the lab's webhook")
        wait_until(lambda: receiver.at("/own"), what="the first job's end at its own webhook")
    finally:
        lab.notifier.stop()
    assert [(r.body["event"], r.body["job"]["id"]) for r in receiver.at("/own")] == [("end", 1)]
    assert [(r.body["event"], r.body["job"]["id"]) for r in receiver.at("/lab")] == [("start", 3)]


def test_a_time_limit_an_idle_job_and_a_preemption_each_notify(receiver):
    lab = Lab(fast(default=receiver.url("/lab")))
    lab.notifier.start()
    try:
        limited = lab.submit(time_limit_s=30, notify_on="timeout")
        idle = lab.submit(notify_on=["idle", "preempt"])
        lab.tick()
        lab.tick(31)  # past the limit: stopped
        lab.tick()  # its end recorded
        store = lab.core.store
        store.add_event(Event(time=lab.clock.now(), kind="idle", job_id=idle, message="idle",
                              data={"gpus": ["a:1"], "utilization_pct": 0, "idle_for_s": 1800, "action": "notify"}))
        store.add_event(Event(time=lab.clock.now(), kind="preempting", job_id=idle, message="for job 9"))
        wait_until(lambda: len(receiver.got) == 3, what=lambda: f"3 notifications, got {receiver.got}")
    finally:
        lab.notifier.stop()
    by_event = {r.body["event"]: r.body for r in receiver.got}
    assert set(by_event) == {"timeout", "idle", "preempt"}
    assert by_event["timeout"]["text"] == f"[gpuherd] job {limited} (job-{limited}) of alice was stopped at its time limit of 30 s"
    assert by_event["idle"]["data"]["idle_for_s"] == 1800
    assert by_event["preempt"]["text"] == (f"[gpuherd] job {idle} (job-{idle}) of alice is being stopped and will be "
                                           "requeued, using no retry (for job 9)")


def test_a_reservations_start_notifies_its_user_once(receiver):
    lab = Lab(fast(users={"alice": receiver.url("/alice")}))
    lab.notifier.follow()  # the first look: nothing began yet
    lab.core.orchestrator.reserve(Reservation(node="a", gpus=(0, 1), user="alice", start=T0 + 100, end=T0 + 1000))
    lab.clock.advance(50)
    lab.notifier.follow()
    lab.clock.advance(100)
    lab.notifier.follow()
    lab.notifier.follow()
    assert [e.data["reservation"] for e in lab.kinds("reservation_began")] == [1]
    lab.notifier.start()
    try:
        wait_until(lambda: receiver.got, what="the reservation's notification")
    finally:
        lab.notifier.stop()
    assert receiver.got[0].body["event"] == "reservation"
    assert receiver.got[0].body["text"].startswith("[gpuherd] reservation 1 for user alice began: a GPU(s) 0,1 until ")


def test_a_reservation_that_began_while_the_server_was_down_is_told_after_it_and_only_once():
    lab = Lab(fast(users={"alice": "https://alice.example/hook"}))
    lab.notifier.follow()
    reserve = lab.core.orchestrator.reserve
    reserve(Reservation(node="a", gpus=(0,), user="alice", start=T0 + 100, end=T0 + 1000))
    lab.clock.advance(150)
    lab.notifier.follow()  # reservation 1 begins, and is told
    reserve(Reservation(node="a", gpus=(1,), user="alice", start=T0 + 300, end=T0 + 1000))
    reserve(Reservation(node="a", gpus=(2,), user="alice", start=T0 + 400, end=T0 + 500))
    lab.clock.advance(450)  # down meanwhile: 2 began and is still open; 3 began and ended
    Notifier(lab.core, lab.config).follow()
    assert [e.data["reservation"] for e in lab.kinds("reservation_began")] == [1, 2]


def test_retries_then_a_failure_event_naming_the_host_and_reason(receiver):
    receiver.statuses = [500, 503, 502]
    lab = Lab(fast(default=receiver.url("/lab"), retries=2, events=("start",)))
    lab.notifier.start()
    try:
        lab.submit()
        lab.tick()
        failed = wait_until(lambda: lab.kinds("notify_failed"), what="a notify_failed event")
    finally:
        lab.notifier.stop()
    assert receiver.hits == 3 and not receiver.got
    assert failed[0].job_id == 1
    assert failed[0].data == {"host": "127.0.0.1", "reason": "HTTP 502 Bad Gateway", "tries": 3, "event": "start",
                              "event_id": lab.kinds("running")[0].id}
    assert "/lab" not in failed[0].message  # the path of a webhook is its secret


def test_a_refusal_is_not_retried_and_a_receiver_that_is_gone_fails_too(receiver):
    receiver.statuses = [404]
    gone = WebhookReceiver()
    gone_url = gone.url("/x")
    gone.close()
    lab = Lab(fast(users={"alice": receiver.url("/a"), "bob": gone_url}, retries=1, events=("start",)))
    lab.notifier.start()
    try:
        lab.submit("alice")
        lab.submit("bob")
        lab.tick()
        failed = wait_until(lambda: len(lab.kinds("notify_failed")) == 2 and lab.kinds("notify_failed"),
                            what="two notify_failed events")
    finally:
        lab.notifier.stop()
    by_job = {e.job_id: e.data for e in failed}
    assert by_job[1]["tries"] == 1 and by_job[1]["reason"].startswith("HTTP 404")
    assert by_job[2]["tries"] == 2 and "refused" in by_job[2]["reason"].lower()


def test_a_receiver_slower_than_the_timeout_fails_and_delays_no_pass(receiver):
    receiver.delay_s = 2.0
    lab = Lab(fast(default=receiver.url("/lab"), timeout_s=1.0, retries=0, senders=1), durations={})
    lab.notifier.start()
    try:
        for _ in range(4):
            lab.submit()
        passes = []
        for _ in range(20):  # jobs start and notifications queue up behind the slow receiver meanwhile
            began = time.perf_counter()
            lab.tick(1)
            passes.append(time.perf_counter() - began)
        failed = wait_until(lambda: lab.kinds("notify_failed"), what="a timed-out notification")
    finally:
        lab.notifier.stop()
    assert "timed out" in failed[0].data["reason"]
    assert max(passes) < 0.5  # a pass takes milliseconds; one that waited on a post would take its 1 s timeout


def test_a_full_queue_drops_and_says_so():
    lab = Lab(fast(default="https://lab.example/hook", queue_size=2))
    lab.notifier.follow()
    for _ in range(4):
        lab.submit()
    lab.tick()  # four starts; nothing sends (the threads are not started), so two wait and two are dropped
    lab.notifier.follow()
    dropped = lab.kinds("notify_dropped")
    assert [(e.data["host"], e.data["count"]) for e in dropped] == [("lab.example", 2)]


def test_history_is_not_sent_at_the_first_start(receiver):
    lab = Lab(fast(default=receiver.url("/lab")), durations={1: 5})
    lab.submit()
    lab.tick()
    lab.tick(6)  # a start and an end before any notifier looked
    lab.notifier.start()
    try:
        lab.submit(name="new")
        lab.tick()
        wait_until(lambda: receiver.got, what="the new job's start")
        time.sleep(0.1)
    finally:
        lab.notifier.stop()
    assert [(r.body["event"], r.body["job"]["name"]) for r in receiver.got] == [("start", "new")]


def test_a_restart_sends_nothing_twice_and_resends_what_was_unfinished(receiver, tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    lab = Lab(fast(default=receiver.url("/lab"), events=("start",)), store=store)
    lab.notifier.start()
    try:
        lab.submit()
        lab.tick()
        wait_until(lambda: len(receiver.got) == 1, what="the first start")
        lab.restart_notifier()
        time.sleep(0.1)
        assert len(receiver.got) == 1  # the new notifier resumed after it
        # A notification still being retried when the notifier stops is sent after the next start, with its key.
        lab.config = fast(default=receiver.url("/lab"), events=("start",), backoff_s=30, backoff_max_s=30)
        lab.restart_notifier()
        receiver.statuses = [500]
        lab.submit()
        lab.tick()
        wait_until(lambda: receiver.hits == 2, what="the second start's first try")
        lab.restart_notifier()
        wait_until(lambda: len(receiver.got) == 2, what="the second start, sent again after the restart")
    finally:
        lab.notifier.stop()
    assert len({r.key for r in receiver.got}) == 2
    assert int(store.get_setting(CURSOR_KEY)) >= lab.kinds("running")[-1].id
    store.close()


# -- identity: who sets a job's webhook, and who sees it ----------------------------------------------------
def test_a_jobs_webhook_is_its_owners_to_set_and_to_see():
    lab = Lab(NotifyConfig())
    alice, bob = ToolContext(lab.core, Actor(user="alice")), ToolContext(lab.core, Actor(user="bob"))
    job_id = jobs.queue_job(alice, JobRequest(command="true", gpu_count=1, notify=OWN)).id
    with pytest.raises(PermissionDenied):
        jobs.queue_job(bob, JobRequest(command="true", gpu_count=1, notify=OWN), user="alice")
    assert jobs.get_job(alice, jobs.GetJob(job_id=job_id)).notify == OWN
    assert jobs.get_job(bob, jobs.GetJob(job_id=job_id)).notify is None
    admin = ToolContext(lab.core, Actor(user="root", admin=True))
    assert jobs.get_job(admin, jobs.GetJob(job_id=job_id)).notify == OWN


def test_rest_refuses_a_bad_webhook_naming_the_field(api):
    answer = api.http.post("/queue/submit", json={"command": "true", "gpu_count": 1, "notify": "ftp://x"})
    assert answer.status_code == 422 and "notify" in answer.text
    answer = api.http.post("/queue/submit", json={"command": "true", "gpu_count": 1,
                                                  "notify": "slack:https://hooks.slack.com/services/T/B/X",
                                                  "notify_on": ["start", "fail"]})
    assert answer.status_code == 201, answer.text
    shown = api.http.get(f"/jobs/{answer.json()['job_id']}").json()
    assert shown["notify"].startswith("slack:") and shown["notify_on"] == ["start", "fail"]


# -- the CLI and the service -----------------------------------------------------------------------------------
def test_the_cli_refuses_an_unknown_event_before_asking_the_server(capsys):
    assert main(["submit", "--url", "http://127.0.0.1:9", "--notify-on", "start,ends", "--", "true"]) == 1
    assert capsys.readouterr().err.strip() == (
        "herd: notify_on: 'ends' is not one of a job's events: start, end, fail, timeout, idle, preempt")
    assert main(["submit", "--url", "http://127.0.0.1:9", "--notify", "hooks.example.org", "--", "true"]) == 1
    assert "herd: notify: not an http(s) URL" in capsys.readouterr().err


def test_serve_refuses_a_bad_webhook_in_its_config_naming_the_key(tmp_path, capsys):
    config = tmp_path / "herd.yaml"
    config.write_text("notify:\n  users:\n    ana: hooks.slack.com/services/T/B/X\n")
    assert main(["serve", "--config", str(config), "--workdir", str(tmp_path / "never-created")]) == 1
    assert capsys.readouterr().err.strip().startswith("herd: notify.users: ana: not an http(s) URL")


def test_herd_serve_notifies_a_jobs_own_webhook_and_the_lab(receiver, herd_server, tmp_path, capsys):
    config = tmp_path / "herd.yaml"
    config.write_text(f"notify:\n  default: 'slack:{receiver.url('/lab')}'\n  events: [start]\n")
    server = herd_server("--gpus", "1", "--config", str(config)).start()
    assert main(["submit", "--url", server.url, "--notify", receiver.url("/own"), "--notify-on", "start,end",
                 "-n", "mine", "--", "true"]) == 0
    assert main(["submit", "--url", server.url, "-n", "lab's", "--", "true"]) == 0
    capsys.readouterr()
    wait_until(lambda: len(receiver.at("/own")) == 2 and receiver.at("/lab"), timeout_s=30,
               what=lambda: f"the first job's start and end, the second's start; got {receiver.got}")
    assert sorted(r.body["event"] for r in receiver.at("/own")) == ["end", "start"]
    assert [r.body["text"].split(" started")[0] for r in receiver.at("/lab")] == [
        f"[gpuherd] job 2 (lab's) of {getpass.getuser()}"]
    assert main(["show", "--url", server.url, "1"]) == 0
    assert re.search(rf"^notify +{re.escape(receiver.url('/own'))} on start,end$", capsys.readouterr().out, re.M)


# -- mail ---------------------------------------------------------------------------------------------------------
class SmtpSink:
    """A mail server on loopback that speaks just enough SMTP: keeps (recipients, message) of each mail;
    answers ``refuse`` (e.g. 550) to RCPT while it is set."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], email.message.Message]] = []
        self.refuse: int | None = None
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                say = self.wfile.write
                say(b"220 sink\r\n")
                recipients: list[str] = []
                while line := self.rfile.readline():
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        say(b"354 go on\r\n")
                        lines = []
                        while (part := self.rfile.readline()) not in (b".\r\n", b""):
                            lines.append(part[1:] if part.startswith(b"..") else part)
                        sink.mails.append((recipients, email.message_from_bytes(b"".join(lines))))
                        recipients = []
                        say(b"250 queued\r\n")
                    elif verb == b"RCPT" and sink.refuse:
                        say(f"{sink.refuse} no such user\r\n".encode())
                    elif verb == b"RCPT":
                        recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                        say(b"250 ok\r\n")
                    elif verb == b"QUIT":
                        say(b"221 bye\r\n")
                        return
                    else:  # EHLO (no extensions), MAIL, RSET, NOOP
                        say(b"250 ok\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_config_mails_through_its_smtp_server_and_a_job_may_not():
    with pytest.raises(ValidationError, match=r"users\.alice: a mailto: target needs a mail server"):
        NotifyConfig(users={"alice": "mailto:alice@lab.example"})
    with pytest.raises(ValidationError, match="not an e-mail address"):
        NotifyConfig(users={"alice": "mailto:alice"}, smtp={"host": "localhost", "sender": "herd@lab.example"})
    with pytest.raises(ValidationError, match="e-mail addresses are the config's"):
        JobRequest(command="true", gpu_count=1, notify="mailto:alice@lab.example")


def test_mail_to_a_user_and_a_refused_address_is_a_failure_event():
    sink = SmtpSink()
    smtp = {"host": "127.0.0.1", "port": sink.port, "sender": "herd@lab.example"}
    lab = Lab(fast(users={"alice": "mailto:alice@lab.example", "bob": "mailto:bob@lab.example"}, smtp=smtp,
                   events=("start",)))
    lab.notifier.start()
    try:
        lab.submit("alice", name="bert")
        lab.tick()
        wait_until(lambda: sink.mails, what="alice's mail")
        sink.refuse = 550
        lab.submit("bob")
        lab.tick()
        failed = wait_until(lambda: lab.kinds("notify_failed"), what="bob's refused mail")
    finally:
        lab.notifier.stop()
        sink.close()
    (recipients, mail), = sink.mails
    assert recipients == ["alice@lab.example"] and mail["From"] == "herd@lab.example"
    assert mail["Subject"] == "[gpuherd] job 1 (bert) of alice started on a GPU(s) 0"
    assert mail["Message-ID"] == f"<gpuherd-event-{lab.kinds('running')[0].id}@gpuherd>"
    assert failed[0].data["host"] == "lab.example" and failed[0].data["tries"] == 1
    assert failed[0].data["reason"] == "SMTP 550 no such user"


def test_an_array_is_told_of_once_at_its_start_and_once_at_its_end(receiver):
    lab = Lab(fast(default=receiver.url("/lab")), durations={1: 10, 2: 10, 3: 20, 4: 5}, codes={2: 1})
    lab.notifier.start()
    try:
        lab.submit(name="sweep", array="0-2", max_retries=0)  # jobs 1, 2, 3; 2 fails
        lab.tick()
        lab.tick(10)  # 1 and 2 end together
        lab.tick(10)  # 3 ends
        lab.submit(name="last")  # job 4: once its start is told, every earlier event was followed
        lab.tick()
        wait_until(lambda: any(r.body["job"]["id"] == 4 for r in receiver.got), what="the last job's start")
    finally:
        lab.notifier.stop()
    told = [(r.body["event"], r.body["text"]) for r in receiver.got if r.body["job"]["id"] != 4]
    assert sorted(told) == [
        ("fail", "[gpuherd] array 1 (sweep) of alice, 3 task(s), ended with failures: 2 completed, 1 failed"),
        ("start", "[gpuherd] array 1 (sweep) of alice, 3 task(s), started: its first task is job 1"),
    ]
    end = next(r.body for r in receiver.got if r.body["event"] == "fail")
    assert end["array"] == {"id": 1, "tasks": 3, "completed": 2, "failed": 1}


def test_tasks_that_end_in_one_pass_tell_the_arrays_end_once():
    lab = Lab(fast(default="https://lab.example/hook"), durations={1: 10, 2: 10})
    lab.notifier.follow()
    lab.submit(array="0-1")
    lab.tick()
    lab.tick(10)  # both end in this pass
    lab.notifier.follow()
    queued = [lab.notifier._queue.get_nowait().note for _ in range(lab.notifier._queue.qsize())]
    assert [(n.what.value, n.body["array"]) for n in queued] == [
        ("start", {"id": 1, "tasks": 2}), ("end", {"id": 1, "tasks": 2, "completed": 2})]
