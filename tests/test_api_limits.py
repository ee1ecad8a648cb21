"""Bad input is a 4xx that names the field and changes nothing; limits on what a request may be; the
body-size cap, enforced while reading; a refusal or a bug keeps the connection; the history and the
queue a page at a time, at a cost that does not grow with the history."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading

import pytest
import uvicorn

import tools.store
from tests.helpers import free_port, wait_until
from tools.models import MAX_ENV_BYTES, MAX_ENV_VALUE, MAX_ENV_VARS, Job, JobStatus

BIG = 2**63  # one past SQLite's INTEGER


# -- each bad input: a 4xx naming the field ------------------------------------------------------------
@pytest.mark.parametrize("body, want_field", [
    ({"priority": True}, "priority"),
    ({"priority": 5.0}, "priority"),
    ({"gpu_count": True}, "gpu_count"),
    ({"gpu_count": 10_000}, "gpu_count"),
    ({"preemptible": "yes"}, "preemptible"),
    ({"preemptible": 1}, "preemptible"),
    ({"max_retries": "2"}, "max_retries"),
    ({"est_duration_s": True}, "est_duration_s"),
    ({"est_duration_s": "60"}, "est_duration_s"),
    ({"est_duration_s": 1e300}, "est_duration_s"),
    ({"time_limit_s": 400 * 86_400}, "time_limit_s"),
    ({"begin_at": 1e308}, "begin_at"),
    ({"begin_at": True}, "begin_at"),
    ({"begin_at": "+99999999d"}, "begin_at"),
    ({"begin_at": "+" + "9" * 400 + "d"}, "begin_at"),
    ({"after": [BIG]}, "after"),
    ({"after_any": [BIG]}, "after_any"),
    ({"after": [0]}, "after"),
    ({"after": [True]}, "after"),
    ({"after": list(range(1, 40))}, "after"),
    ({"cwd": "/" + "a" * 100_000}, "cwd"),
    ({"cwd": "/" + "a" * 300}, "cwd"),  # one name longer than any file system allows
    ({"cwd": "/tmp/\u0000x"}, "cwd"),
    ({"command": "echo a\u0000b"}, "command"),
    ({"command": "x" * 20_001}, "command"),
    ({"name": "a\u0000"}, "name"),
    ({"name": "n" * 201}, "name"),
    ({"env": {"A": "x\u0000y"}}, "env"),
    ({"env": {"A": "x" * (MAX_ENV_VALUE + 1)}}, "env"),
    ({"env": {"A": "\u00e9" * (MAX_ENV_VALUE // 2 + 1)}}, "env"),  # counted in bytes, as the kernel counts
    ({"env": {f"V{i}": "x" for i in range(MAX_ENV_VARS + 1)}}, "env"),
    ({"env": {f"V{i}": "x" * (MAX_ENV_VALUE - 10) for i in range(MAX_ENV_BYTES // MAX_ENV_VALUE + 1)}}, "env"),
    ({"user": "a" * 65}, "user"),
], ids=lambda v: None if isinstance(v, dict) else v)
def test_a_bad_submission_is_a_4xx_naming_the_field(api, body, want_field):
    api.submit_ok()
    before = api.all_jobs()
    response = api.submit(**body)
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert detail.startswith(want_field) or f" {want_field}" in detail or f"{want_field}:" in detail, detail
    assert "\n" not in detail and len(detail) < 1000
    assert api.all_jobs() == before


@pytest.mark.parametrize("body", [
    b'{"user": "ana", "command": "true", "gpu_count": 1, "est_duration_s": 1e309}',
    b'{"user": "ana", "command": "true", "gpu_count": 1, "time_limit_s": Infinity}',
    b'{"user": "ana", "command": "true", "gpu_count": 1, "est_duration_s": NaN}',
    b'{"user": "ana", "command": "true", "gpu_count": 1, "begin_at": -Infinity}',
], ids=["1e309", "Infinity", "NaN", "-Infinity"])
def test_numbers_must_be_finite(api, body):
    response = api.http.post("/queue/submit", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    field = body.decode().rsplit(",", 1)[1].split(":")[0].strip(' "')
    assert response.json()["detail"].startswith(f"{field}:")
    assert api.all_jobs() == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/jobs/{id}"), ("GET", "/jobs/{id}/events"), ("GET", "/jobs/{id}/logs"), ("GET", "/jobs/{id}/explain"),
    ("POST", "/jobs/{id}/complete"), ("DELETE", "/queue/{id}"), ("PATCH", "/queue/{id}/priority"),
    ("GET", "/jobs?cursor={id}"), ("GET", "/queue?cursor={id}"),
])
def test_an_id_beyond_sqlite_is_a_422_naming_it(api, method, path):
    body = {"priority": 3} if "priority" in path else None
    response = api.http.request(method, path.format(id=BIG), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].split(":")[0] in ("job_id", "cursor")


@pytest.mark.parametrize("path", ["/reservations", "/tokens"])
def test_an_id_beyond_sqlite_names_the_field(api, path):
    response = api.http.delete(f"{path}/{BIG}")
    assert response.status_code == 422 and response.json()["detail"].split(":")[0].endswith("_id")


@pytest.mark.parametrize("body, field", [
    ({"priority": True}, "priority"), ({"priority": 0}, "priority"), ({"priority": "7"}, "priority"),
], ids=str)
def test_a_bad_priority_names_the_field(api, body, field):
    job_id = api.submit_ok()
    response = api.http.patch(f"/queue/{job_id}/priority", json=body)
    assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}:")
    assert api.job(job_id)["priority"] == 5


def test_a_bad_exit_code_names_the_field(api):
    job_id = api.submit_ok()
    api.tick()
    for exit_code in (True, 2**40, 1.5):
        response = api.http.post(f"/jobs/{job_id}/complete", json={"exit_code": exit_code})
        assert response.status_code == 422 and response.json()["detail"].startswith("exit_code:")
    assert api.job(job_id)["status"] == "running"


def test_the_largest_legal_environment_is_accepted(api):
    env = {f"V{i}": "x" * (MAX_ENV_BYTES // 8 - 10) for i in range(8)}
    job_id = api.submit_ok(env=env)
    assert api.job(job_id)["env"] == env


# -- the body cap --------------------------------------------------------------------------------------
def test_a_body_over_the_cap_is_refused_as_its_length_says_without_reading_it(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"POST /queue/submit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 209715200\r\n\r\n{\"user\": ")  # 200 MB announced, a few bytes sent
        answer = _read_response(s)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"detail":"the request body is larger than 1048576 bytes' in answer


def test_a_streamed_body_over_the_cap_is_refused_once_the_cap_is_passed(api):
    """Chunked (no length given): the app reads until the cap is passed, answers 413, and reads no more."""
    chunk, chunks = 64 * 1024, 3200  # 200 MiB on offer
    state = {"read": 0}
    sent: list[dict] = []

    async def receive():
        state["read"] += 1
        return {"type": "http.request", "body": b" " * chunk, "more_body": state["read"] < chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/queue/submit", "raw_path": b"/queue/submit", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                                          (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 50000), "server": ("localhost", 80), "state": {}, "app": api.http.app}
    asyncio.run(api.http.app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert state["read"] * chunk <= (1 << 20) + chunk  # read up to the cap, and one chunk to pass it
    assert api.all_jobs() == []


# -- a refusal or a bug keeps the connection -------------------------------------------------------------
def test_a_refusal_and_a_bug_keep_the_connection(served, monkeypatch):
    from tools.door import jobs

    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    conn.request("POST", "/queue/submit", body=b'{"user": "ana", "command": "true", "gpu_count": 1, "begin_at": 1e308}',
                 headers={"Content-Type": "application/json"})
    first = conn.getresponse()
    assert (first.status, first.will_close) == (422, False)
    first.read()
    sock = conn.sock

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(jobs, "list_jobs", broken)
    conn.request("GET", "/jobs")
    bug = conn.getresponse()
    assert (bug.status, bug.getheader("content-type"), bug.will_close) == (500, "application/json", False)
    assert b"RuntimeError: a bug" in bug.read()
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200 and conn.sock is sock  # the same connection all along
    conn.close()


# -- pages ----------------------------------------------------------------------------------------------
def finished_history(api, n: int) -> list[int]:
    """``n`` finished jobs of three users, written straight into the store (a REST submission each would
    take minutes); ids 1..n."""
    store = api.service.store
    statuses = (JobStatus.COMPLETED, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
    for i in range(n):
        job = store.add_job(Job(id=0, user=f"u{i % 3}", command="true", gpu_count=1, submit_time=float(i)),
                            max_queued=None)
        store.save_job(job.model_copy(update={"status": statuses[i % 4], "end_time": float(i + 1)}), None)
    return list(range(1, n + 1))


def walk(api, path: str, **params) -> list[list[int]]:
    pages, cursor = [], None
    while True:
        page = api.http.get(path, params=params | ({"cursor": cursor} if cursor else {})).json()
        key = "jobs"
        pages.append([j["id"] if path == "/jobs" else j["job"]["id"] for j in page[key]])
        cursor = page["next"]
        if cursor is None:
            return pages


def test_the_history_comes_a_page_at_a_time_newest_first(api):
    ids = finished_history(api, 1_200)
    live = api.submit_ok()
    pages = walk(api, "/jobs", limit=100)
    assert [len(p) for p in pages] == [100] * 12 + [1]
    assert sum(pages, []) == [live, *reversed(ids)]
    assert len(api.http.get("/jobs").json()["jobs"]) == 100  # a default page, never the whole history
    failed = sum(walk(api, "/jobs", status="failed,cancelled", user="u1", limit=50), [])
    want = [i for i in reversed(ids) if (i - 1) % 3 == 1 and (i - 1) % 4 in (2, 3)]
    assert failed == want and len(failed) > 50


def test_a_page_costs_the_same_however_long_the_history(api, monkeypatch):
    """Counted in jobs read back from the database: a page reads its own jobs and one more."""
    finished_history(api, 1_500)
    parsed = []
    real = tools.store._job
    monkeypatch.setattr(tools.store, "_job", lambda data: parsed.append(1) or real(data))
    for params in ({"limit": 10}, {"limit": 10, "cursor": 40}, {"limit": 10, "cursor": 1_400},
                   {"limit": 10, "status": "cancelled,failed"}, {"limit": 10, "user": "u2", "cursor": 900},
                   {"limit": 10, "user": "u2", "status": "completed"}):
        parsed.clear()
        assert len(api.http.get("/jobs", params=params).json()["jobs"]) == 10
        assert len(parsed) <= 11, params


def test_the_queue_comes_a_page_at_a_time_in_its_order(api):
    for priority in (1, 5, 9, 3, 7, 2, 8, 4, 6, 10, 5, 5):
        api.submit_ok(priority=priority, gpu_count=2)
    api.tick()  # two run; ten wait
    whole = api.http.get("/queue").json()
    assert whole["next"] is None and len(whole["jobs"]) == 12
    pages = walk(api, "/queue", limit=5)
    assert pages == [[e["job"]["id"] for e in whole["jobs"]][i:i + 5] for i in (0, 5, 10)]
    page = api.http.get("/queue", params={"limit": 5}).json()
    assert page["stats"] == whole["stats"] and page["policy"] == whole["policy"]
    gone = page["jobs"][-1]["job"]["id"]
    api.http.delete(f"/queue/{gone}")
    response = api.http.get("/queue", params={"limit": 5, "cursor": gone})
    assert response.status_code == 409 and response.json()["detail"].startswith("cursor:")


# -- a real server on loopback ---------------------------------------------------------------------------
class Served:
    def __init__(self, app) -> None:
        self.port = free_port()
        # The app's lifespan already ran (the api fixture): serve it as it is.
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="off",
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, what="uvicorn to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(api):
    with Served(api.http.app) as server:
        yield server


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
