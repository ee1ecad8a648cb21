"""The dashboard in a real browser: Playwright drives Debian's chromium, headless, against a real server
on loopback (``tests/dashboard_server.py``). The page loads with no console error and nothing from
outside; the grid shows the declared GPUs; a job submitted through the API appears in the queue and
moves to running without a reload; cancelling from the page works for the job's owner and is refused
for another user; the charts draw; /docs works offline.

Skipped, saying why, where chromium or Playwright is missing (``make test`` installs chromium)."""

from __future__ import annotations

import shutil
import time
from urllib.parse import urlsplit

import pytest

from tests.dashboard_server import DashboardServer
from tests.helpers import wait_until
from tests.scripted_model import ScriptedModel, call, say

sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install -e '.[dev]')")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (make test installs it)")

# Playwright's own browser download is not reachable here: Debian's chromium, headless, without a sandbox
# (tests run as root) and without anything that talks to the internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LIVE_S = 2.0  # what the page must show arrives this fast, without a reload


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page, with every console error, uncaught exception and request it made."""

    def __init__(self, context) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, url: str, ready: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector(f"body[data-ready='{ready}']", timeout=10_000)


@pytest.fixture
def single_user(tmp_path):
    with DashboardServer(tmp_path / "herd") as server:
        yield server


@pytest.fixture
def shared(tmp_path):
    with DashboardServer(tmp_path / "herd", shared=True) as server:
        yield server


def test_every_view_loads_with_no_console_error_and_nothing_from_elsewhere(browser, single_user):
    context = browser.new_context()
    page = Watched(context)
    page.open(single_user.url + "/", "gpus")

    tiles = page.page.locator("article.gpu")
    assert tiles.count() == 4  # the 4 declared GPUs
    assert [tiles.nth(i).get_attribute("data-state") for i in range(4)] == ["free"] * 4
    assert page.page.locator(".node .badge").inner_text() == "declared"
    assert not page.page.locator("#nav-chat").is_visible()  # no model configured: no chat panel
    assert "root" in page.page.locator("#who").inner_text() or page.page.locator("#who strong").count() == 1
    wait_until(lambda: page.page.locator("#live").inner_text() == "live", 5, what="the event stream to connect")

    for view in ("queue", "topology", "charts"):
        page.page.click(f"#nav a[data-view='{view}']")
        page.page.wait_for_selector(f"body[data-ready='{view}']", timeout=10_000)
        if view == "topology":
            assert page.page.locator("svg.topology .gpu-box").count() == 4

    docs = Watched(context)
    docs.page.goto(single_user.url + "/docs")
    docs.page.wait_for_selector(".opblock", timeout=15_000)  # Swagger UI drew the operations
    assert docs.page.locator(".opblock").count() > 20

    assert page.errors == [] and docs.errors == []
    outside = [u for u in page.requests + docs.requests if urlsplit(u).hostname not in ("127.0.0.1", None)
               and not u.startswith("data:")]
    assert outside == []  # offline: every script, style and font is the server's own
    context.close()


def test_a_job_submitted_through_the_api_appears_in_the_queue_and_moves_to_running_without_a_reload(browser, single_user):
    blockers = [single_user.submit(name=f"blocker-{i}") for i in range(4)]
    for job_id in blockers:
        single_user.wait_for(job_id, "running")
    context = browser.new_context()
    page = Watched(context)
    page.open(single_user.url + "/#/queue", "queue")
    page.page.evaluate("window.notReloaded = true")
    assert page.page.locator("#running tr.job").count() == 4

    submitted = time.monotonic()
    job_id = single_user.submit(name="newcomer", gpu_count=2)
    row = page.page.locator(f"#waiting tr.job[data-job='{job_id}']")
    row.wait_for(timeout=LIVE_S * 1000)
    seen_waiting = time.monotonic() - submitted
    assert "Resources" in row.inner_text() or "Priority" in row.inner_text()

    for blocker in blockers[:2]:  # frees two GPUs: the newcomer starts
        assert single_user.http.delete(f"/queue/{blocker}").status_code == 200
    freed = time.monotonic()
    page.page.locator(f"#running tr.job[data-job='{job_id}']").wait_for(timeout=LIVE_S * 1000 + 1000)
    seen_running = time.monotonic() - freed
    assert page.page.evaluate("window.notReloaded") is True
    assert seen_waiting < LIVE_S and seen_running < LIVE_S + 1.0, (seen_waiting, seen_running)
    assert page.errors == []
    context.close()


def login(page: Watched, token: str) -> None:
    page.page.click("#login-button")
    page.page.fill("#login-token", token)
    page.page.click("#login-form button[type=submit]")
    page.page.wait_for_selector("#logout-button:not([hidden])", timeout=5000)


def test_cancel_from_the_page_works_for_the_owner_and_is_refused_for_another_user(browser, shared):
    alice, bob = shared.token("alice"), shared.token("bob")
    job_id = shared.submit(alice, name="alices-run", begin_at="+1h")

    context = browser.new_context()
    page = Watched(context)
    page.open(shared.url + f"/#/job/{job_id}", "job")
    assert page.page.locator("#cancel-job").count() == 0  # nobody: read-only
    login(page, bob)
    page.page.wait_for_selector("body[data-ready='job']")
    assert "bob" in page.page.locator("#who").inner_text()
    assert page.page.locator("#cancel-job").count() == 0
    assert "only alice and administrators" in page.page.locator(".controls").inner_text()
    # The cookie holds the token where the page's scripts cannot read it, and only this site sends it.
    (cookie,) = context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("herd_token", True, "Strict")
    assert "herd_token" not in page.page.evaluate("document.cookie")
    # Even a request the page makes by hand is refused by the server, in its words.
    refused = page.page.evaluate(f"""async () => {{
        const r = await fetch('/queue/{job_id}', {{method: 'DELETE', headers: {{'Content-Type': 'application/json'}}}});
        return [r.status, (await r.json()).detail];
    }}""")
    assert refused == [403, f"job {job_id} belongs to alice; bob may act only on their own jobs"]
    assert shared.status(job_id) == "queued"

    page.page.click("#logout-button")
    page.page.wait_for_selector("#login-button:not([hidden])")
    assert context.cookies() == []
    login(page, alice)
    page.page.wait_for_selector("#cancel-job")
    page.page.click("#cancel-job")
    page.page.wait_for_selector("#job-status.status-cancelled", timeout=LIVE_S * 1000)
    assert shared.status(job_id) == "cancelled"
    events = shared.http.get(f"/jobs/{job_id}/events").json()
    assert any(e["kind"] == "request" and e["message"] == f"alice: cancel job {job_id}" for e in events)
    assert [e for e in page.errors if "403" not in e] == []  # the refused fetch logs its 403; nothing else
    context.close()


def test_the_charts_draw(browser, single_user):
    single_user.durations.update({1: 0.3, 2: 0.3})
    for i in range(3):
        single_user.submit(name=f"job-{i}", user="ana" if i else "ben")
    single_user.wait_for(1, "completed")
    wait_until(lambda: len(single_user.http.get("/dashboard/history").json()["samples"]["time"]) >= 3, 5,
               what="three samples")
    context = browser.new_context()
    page = Watched(context)
    page.open(single_user.url + "/#/charts", "charts")
    for chart in ("chart-busy", "chart-queue", "chart-jobs", "chart-waits", "chart-gpu-hours"):
        page.page.wait_for_selector(f"#{chart}[data-drawn='true'] svg .series", state="attached", timeout=5000)
    assert page.page.locator("#chart-busy path.series").count() == 2  # busy and free
    assert page.page.locator("#chart-gpu-hours text.label").all_text_contents()[0] in ("ana", "ben")
    assert "declared" in page.page.locator("#chart-node-util").inner_text()  # nothing measured, and it says why
    assert page.errors == []
    context.close()


def test_the_chat_panel_shows_each_action_and_the_validators_verdict(browser, tmp_path):
    model = ScriptedModel(call("submit_job", command="python ft.py", gpu_count=8),  # more than any node has
                          call("submit_job", command="python ft.py", gpu_count=4), say("Queued job 1 on 4 GPUs."))
    with DashboardServer(tmp_path / "herd", model=model) as server:
        context = browser.new_context()
        page = Watched(context)
        page.open(server.url + "/", "gpus")
        assert page.page.locator("#nav-chat").is_visible()  # only where a model is configured
        page.page.click("#nav-chat")
        page.page.wait_for_selector("body[data-ready='chat']")
        page.page.fill("#chat-input", "I need 8 GPUs for a fine-tune -- python ft.py")
        page.page.click(".chat-form button[type=submit]")
        page.page.wait_for_selector(".bubble.agent table.actions", timeout=10_000)
        verdicts = page.page.locator(".bubble.agent .verdict").all_inner_texts()
        assert verdicts == ["rejected", "ok"]
        assert "asks for 8 GPUs" in page.page.locator(".bubble.agent table.actions").inner_text()
        assert "Queued job 1" in page.page.locator(".bubble.agent").inner_text()
        assert page.errors == []
        context.close()


def test_an_arrays_waiting_tasks_fold_into_one_row_that_opens(browser, single_user):
    single_user.http.post("/orchestrator/stop")
    response = single_user.http.post("/queue/submit", json={"command": "train", "gpu_count": 1, "array": "0-19",
                                                             "name": "sweep"})
    assert response.status_code == 201, response.text
    context = browser.new_context()
    page = Watched(context)
    page.open(single_user.url + "/#/queue", "queue")
    folded = page.page.locator("#waiting tr.array")
    assert page.page.locator("#waiting tr.job").count() == 1
    assert "[0-19]" in folded.inner_text() and "20 tasks" in folded.inner_text()
    folded.locator("button").click()
    wait_until(lambda: page.page.locator("#waiting tr.job").count() == 20, 3, what="the array's 20 tasks")
    assert page.errors == []
    context.close()
