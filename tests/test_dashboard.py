"""The dashboard's server side: /metrics in Prometheus' format, the event stream, the charts' history
(kept by the service's sampler, and read back from the event log after a restart), the login cookie,
and the page and /docs served with nothing from elsewhere. The page itself, in a browser:
``test_dashboard_browser.py``."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.api.dashboard import WEB
from agent.service import Service
from agent.settings import Settings
from tests.dashboard_server import DashboardServer
from tests.fake_nvml import FakeNvml, h100s
from tests.rest import T0
from tests.helpers import wait_until
from tools.door import jobs, observe
from tools.door.context import ToolContext
from tools.models import Event, JobRequest
from tools.nvml import NvmlProbe, UnavailableProbe
from tools.sim_executor import SimExecutor
from tools.store import MemoryStore
from tools.clock import SimClock


def families(text: str) -> dict[str, list]:
    """name -> samples, parsed by prometheus-client's own parser."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def value(samples, name: str, **labels) -> float:
    (found,) = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return found


def test_metrics_parse_and_carry_the_cluster_the_queue_and_the_scheduler(make_api, tmp_path):
    gpus = h100s(3)
    gpus[0].utilization_pct, gpus[0].memory_used_mib, gpus[0].temperature_c, gpus[0].power_mw = 87, 40_960, 66, 512_000
    api = make_api(gpus=None, probe=NvmlProbe("gpu01", FakeNvml(gpus), proc_root=tmp_path))
    service = api.service
    first = api.submit_ok(user="ana", gpu_count=2)
    api.submit_ok(user="ben", gpu_count=2)  # waits: one GPU left
    observe.sample(service.tools())  # the service's sampler, as its loop runs it
    api.clock.advance(90)
    report = api.tick()
    service.core.observer.observe_pass(report.phases_s, report.duration_s)
    service.resources.refresh_metrics(api.clock.now())
    observe.sample(service.tools())

    response = api.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = families(response.text)
    assert value(found["gpuherd_gpus"], "gpuherd_gpus", node="gpu01", state="allocated") == 2
    assert value(found["gpuherd_gpus"], "gpuherd_gpus", node="gpu01", state="free") == 1
    assert value(found["gpuherd_inventory_detected"], "gpuherd_inventory_detected") == 1
    util = found["gpuherd_gpu_utilization_ratio"]
    assert value(util, "gpuherd_gpu_utilization_ratio", gpu="0") == pytest.approx(0.87)
    assert value(found["gpuherd_gpu_memory_used_bytes"], "gpuherd_gpu_memory_used_bytes", gpu="0") == 40_960 * 2**20
    assert value(found["gpuherd_gpu_temperature_celsius"], "gpuherd_gpu_temperature_celsius", gpu="0") == 66
    assert value(found["gpuherd_gpu_power_watts"], "gpuherd_gpu_power_watts", gpu="0") == 512
    assert value(found["gpuherd_jobs"], "gpuherd_jobs", status="running") == 1
    assert value(found["gpuherd_jobs"], "gpuherd_jobs", status="queued") == 1
    assert value(found["gpuherd_queue_length"], "gpuherd_queue_length") == 1
    assert value(found["gpuherd_user_gpus_in_use"], "gpuherd_user_gpus_in_use", user="ana") == 2
    waits = found["gpuherd_job_wait_seconds"]  # job 1 waited 90 s
    assert value(waits, "gpuherd_job_wait_seconds_bucket", le="60.0") == 0
    assert value(waits, "gpuherd_job_wait_seconds_bucket", le="300.0") == 1
    assert value(waits, "gpuherd_job_wait_seconds_count") == 1 and value(waits, "gpuherd_job_wait_seconds_sum") == 90
    passes = found["gpuherd_scheduler_pass_seconds"]
    assert {s.labels["phase"] for s in passes} >= {"collect", "decide", "apply", "total"}
    assert value(passes, "gpuherd_scheduler_pass_seconds_count", phase="total") == 1
    assert value(found["gpuherd_agent_fallbacks"], "gpuherd_agent_fallbacks_total") == 0
    assert value(found["gpuherd_jobs_started"], "gpuherd_jobs_started_total") == 1
    assert all(name.startswith("gpuherd_") for name in found)
    assert api.job(first)["status"] == "running"


def test_a_declared_inventory_exports_no_readings_and_fallback_events_are_counted(api):
    service = api.service
    observe.sample(service.tools())
    service.store.add_event(Event(time=T0, kind="fallback", message="the model did not answer"))
    observe.sample(service.tools())
    found = families(api.http.get("/metrics").text)
    assert found["gpuherd_gpu_utilization_ratio"] == [] and found["gpuherd_gpu_temperature_celsius"] == []
    assert value(found["gpuherd_inventory_detected"], "gpuherd_inventory_detected") == 0
    assert len(found["gpuherd_gpu_info"]) == 4
    assert value(found["gpuherd_agent_fallbacks"], "gpuherd_agent_fallbacks_total") == 1


def test_the_history_has_samples_jobs_per_hour_waits_and_gpu_hours_per_user(make_api):
    api = make_api(durations={1: 1800.0})
    tools = api.service.tools()
    api.submit_ok(user="ana", gpu_count=2)  # 30 minutes on 2 GPUs: 1 GPU-hour
    api.submit_ok(user="ben", gpu_count=1)  # runs on
    observe.sample(tools)
    api.clock.advance(60)
    api.tick()
    api.clock.advance(1800)
    api.tick()  # job 1 ends
    observe.sample(tools)
    history = api.http.get("/dashboard/history", params={"hours": 3}).json()
    assert history["samples"]["busy"] == [0, 1] and history["samples"]["queued"] == [2, 0]
    assert history["detected"] is False and history["samples"]["gpu_utilization"] == {}
    assert len(history["hours"]) == 3
    assert sum(h["started"] for h in history["hours"]) == 2
    assert sum(h["finished"].get("completed", 0) for h in history["hours"]) == 1
    assert [w[1] for w in history["waits"]] == [60.0, 60.0]
    assert history["gpu_hours_by_user"] == {"ana": pytest.approx(1.0), "ben": pytest.approx(0.5)}
    assert api.http.get("/dashboard/history", params={"hours": 0}).status_code == 422


def test_the_charts_survive_a_restart_but_the_counters_start_again(tmp_path):
    settings = Settings.plain(workdir=tmp_path / "herd", gpus=2, single_user=True)
    clock = SimClock(T0)

    def service() -> Service:
        return Service(settings, clock=clock, executor=SimExecutor(duration_of=lambda job: 600.0),
                       probe=UnavailableProbe("no NVML"), run_loop=False)

    first = service()
    first.start()
    for _ in range(2):
        jobs.submit_job(first.tools(), JobRequest(command="true", gpu_count=1), user="ana")
    clock.advance(30)
    first.orchestrator.tick()
    clock.advance(600)
    first.orchestrator.tick()
    first.stop()

    second = service()
    second.start()
    observe.sample(second.tools())
    history = observe.history(second.tools(), observe.GetHistory(hours=2))
    assert sum(h.started for h in history.hours) == 2
    assert sum(h.finished.get("completed", 0) for h in history.hours) == 2
    assert history.gpu_hours_by_user == {"ana": pytest.approx(2 * 600 / 3600, abs=1e-3)}
    figures = observe.figures(second.tools())
    assert figures.wait.count == 0 and figures.jobs_started == 0  # Prometheus' counters: this process only
    second.stop()


def test_the_newest_event_and_where_a_time_begins_are_found_in_a_few_lookups():
    for count in (0, 1, 2, 7, 1000, 1025):
        store = MemoryStore()
        for i in range(count):
            store.add_event(Event(time=float(i), kind="x"))
        reads = []
        events = store.events

        def counted(**kw):
            reads.append(kw)
            return events(**kw)

        store.events = counted  # type: ignore[method-assign]
        ctx = ToolContext(_core_over(store))
        assert observe.latest_event_id(ctx) == count
        assert len(reads) <= 2 * max(1, count).bit_length() + 3
        if count:
            assert observe._first_id_where(ctx, lambda e: e.time >= count // 2) == count // 2


def _core_over(store):
    """Enough of a core for the event-log tools, which read only the store."""

    class Core:
        pass

    core = Core()
    core.store = store
    return core


# -- the event stream ---------------------------------------------------------------------------------
class Follower:
    """Reads /events/stream in a thread: each (id, event) as it arrives. ``close`` shuts the socket, which
    ends the blocked read at once."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.received: list[tuple[int, dict]] = []
        self.comments: list[str] = []
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        event_id, data = None, None
        try:
            while line := self.response.readline():
                line = line.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and data is not None:
                    self.received.append((event_id, data))
                    event_id, data = None, None
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by the test

    def close(self) -> None:
        sock = self.connection.sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.connection.close()


@pytest.fixture
def live(tmp_path):
    with DashboardServer(tmp_path / "herd") as server:
        yield server


def test_the_stream_sends_every_event_as_it_happens_and_resumes_with_last_event_id(live):
    follower = Follower(live.url + "/events/stream")
    wait_until(lambda: follower.comments, 5, what="the stream to open")
    job_id = live.submit(name="streamed")
    wait_until(lambda: any(e["kind"] == "running" and e["job_id"] == job_id for _, e in follower.received), 3,
               what="the job's start to be streamed")
    kinds = [e["kind"] for _, e in follower.received if e["job_id"] == job_id]
    assert kinds[:3] == ["submitted", "scheduled", "running"]
    ids = [i for i, _ in follower.received]
    assert ids == sorted(ids) and all(e["id"] == i for i, e in follower.received)
    families_ = families(live.http.get("/metrics").text)
    assert value(families_["gpuherd_event_stream_clients"], "gpuherd_event_stream_clients") == 1
    follower.close()

    # Reconnecting after the submission's event: the events since, and nothing twice.
    resumed = Follower(live.url + "/events/stream", headers={"Last-Event-ID": str(ids[0])})
    wait_until(lambda: len(resumed.received) >= len(ids) - 1, 3, what="the missed events")
    assert [i for i, _ in resumed.received][:len(ids) - 1] == ids[1:]
    resumed.close()

    replay = Follower(live.url + "/events/stream?after=0")  # the whole log, from the first event
    wait_until(lambda: len(replay.received) >= ids[-1], 3, what="the whole log")
    assert [i for i, _ in replay.received][:ids[-1]] == list(range(1, ids[-1] + 1))
    replay.close()
    page = live.http.get("/events", params={"after": ids[0], "limit": 2}).json()
    assert [e["id"] for e in page] == ids[1:3]


def test_fifty_clients_share_one_reader(live):
    followers = [Follower(live.url + "/events/stream") for _ in range(50)]
    wait_until(lambda: all(f.comments for f in followers), 10, what="50 streams to open")
    reads_before = live.service.store.events
    calls = []

    def counted(**kw):
        calls.append(kw)
        return reads_before(**kw)

    live.service.store.events = counted  # type: ignore[method-assign]
    job_id = live.submit(name="broadcast")
    wait_until(lambda: all(any(e["job_id"] == job_id for _, e in f.received) for f in followers), 5,
               what="every client to get the submission")
    time.sleep(0.5)
    live.service.store.events = reads_before  # type: ignore[method-assign]
    assert len(calls) < 20  # the hub's polls (4 a second) and the sampler's, not one per client
    for f in followers:
        f.close()


# -- identity: the login cookie ------------------------------------------------------------------------
def test_login_keeps_the_token_in_an_httponly_strict_cookie_that_acts_like_a_bearer_token(make_api):
    api = make_api(single_user=False)
    tokens = api.service.core.tokens
    _, token = tokens.mint("root", now=T0)
    anonymous = api.http.get("/dashboard/session").json()
    assert (anonymous["user"], anonymous["may_act"]) == (None, False)

    login = api.http.post("/auth/login", json={"token": token})
    assert login.status_code == 200 and login.json()["user"] == "root" and login.json()["via"] == "cookie"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"herd_token={token};")
    assert {"httponly", "samesite=strict", "path=/"} <= {p.strip().lower() for p in cookie.split(";")}
    assert "secure" not in cookie.lower()  # plain HTTP here; over TLS the cookie is Secure too

    api.http.cookies.clear()
    as_cookie = {"Cookie": f"herd_token={token}"}
    assert api.http.get("/dashboard/session", headers=as_cookie).json()["user"] == "root"
    submitted = api.http.post("/queue/submit", json={"command": "true", "gpu_count": 1}, headers=as_cookie)
    assert submitted.status_code == 201
    assert api.job(submitted.json()["job_id"])["user"] == "root"

    stale = api.http.get("/dashboard/session", headers={"Cookie": "herd_token=not-a-token"})
    assert stale.status_code == 401 and "log out" in stale.json()["detail"]
    assert api.http.post("/auth/login", json={"token": "not-a-token"}).status_code == 401
    logout = api.http.post("/auth/logout", json={})
    assert logout.status_code == 200 and "max-age=0" in logout.headers["set-cookie"].lower()


def test_no_other_site_can_log_in_or_act_with_the_cookie(make_api):
    api = make_api(single_user=False)
    _, token = api.service.core.tokens.mint("root", now=T0)
    foreign = api.http.post("/auth/login", json={"token": token}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    cookie = {"Cookie": f"herd_token={token}"}
    form = api.http.post("/queue/submit", content="command=true&gpu_count=1", headers={
        **cookie, "Origin": "http://localhost", "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415  # a cookie is no token: a change from a page must be JSON
    assert api.all_jobs() == []


# -- the page and /docs --------------------------------------------------------------------------------
def test_the_page_and_the_docs_load_nothing_from_elsewhere(api):
    page = api.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    referenced = re.findall(r'(?:src|href)="(/web/[^"]+)"', page.text)
    assert {"/web/app.js", "/web/app.css"} <= set(referenced)
    for path in referenced + ["/web/charts.js"]:
        assert api.http.get(path).status_code == 200, path
    for path in WEB.iterdir():  # the modules import each other only by relative path
        if path.suffix == ".js":
            assert "http" not in "".join(re.findall(r"import .* from '([^']+)'", path.read_text()))

    docs = api.http.get("/docs")
    assert docs.status_code == 200
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]|url: ?['"]([^'"]+)['"]""", docs.text)
    assert urls and all(u.startswith("/") for pair in urls for u in pair if u)
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert api.http.get(asset).status_code == 200
    assert api.http.get("/redoc").status_code == 404  # it would load from a CDN: not offered


def test_the_page_ships_with_the_package():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'agent = ["web/*"]' in pyproject
    assert {p.name for p in WEB.iterdir()} >= {"index.html", "app.js", "app.css", "charts.js", "favicon.svg"}


def test_the_grafana_dashboard_asks_only_for_series_the_server_exports(make_api, tmp_path):
    api = make_api(gpus=None, probe=NvmlProbe("gpu01", FakeNvml(h100s(2)), proc_root=tmp_path))
    api.service.resources.refresh_metrics(api.clock.now())
    report = api.tick()
    api.service.core.observer.observe_pass(report.phases_s, report.duration_s)
    exported = set()
    for family in text_string_to_metric_families(api.http.get("/metrics").text):
        exported |= {family.name} | {s.name for s in family.samples}
    dashboard = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json").read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"gpuherd_[a-z_]+", target["expr"])}
    asked |= set(re.findall(r"gpuherd_[a-z_]+", json.dumps(dashboard["templating"])))
    assert asked and asked <= exported, asked - exported
