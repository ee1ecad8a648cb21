"""``GET /queue`` is read from the queue's index without the scheduler's lock: it answers while a pass (or a
write stuck on the database) holds the lock; its pages, followed to the end, are the whole queue in the
policy's order with the plan of the whole; its stats are the totals of the jobs; and a submission whose
write failed never shows in it."""

from __future__ import annotations

import threading
import time

import pytest

from tests.test_store_faults import IO_ERROR, failing_writes
from tools.door import jobs
from tools.door.context import OPERATOR


def pages(api, limit: int, **params) -> list[dict]:
    found, cursor = [], None
    while True:
        page = api.http.get("/queue", params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        found += page.json()["jobs"]
        cursor = page.json()["next"]
        if cursor is None:
            return found


@pytest.mark.parametrize("policy", ["multifactor", "priority", "fair_share"])
def test_pages_followed_to_the_end_are_the_whole_queue_in_order(make_api, policy):
    api = make_api(policy=policy, max_queue_size=500)
    for i in range(40):
        api.submit_ok(user=["ann", "bob", "cat"][i % 3], gpu_count=1 + i % 4, priority=1 + i % 10)
        api.clock.advance(7.0)
    api.tick()
    whole = jobs.list_queue(api.service.tools(OPERATOR), jobs.ListQueue(user=None))
    order = api.service.orchestrator.policy.order(api.service.orchestrator.snapshot())
    assert [e.job.id for e in whole.jobs if e.position is not None] == [j.id for j in order]
    assert [e.position for e in whole.jobs if e.position is not None] == list(range(1, len(order) + 1))
    expected = [(e.job.id, e.position, e.estimated_start) for e in whole.jobs]
    assert [(e["job"]["id"], e["position"], e["estimated_start"]) for e in pages(api, 7)] == expected
    assert any(e.estimated_start is not None for e in whole.jobs)
    for_bob = pages(api, 5, user="bob")
    assert [e["job"]["id"] for e in for_bob] == [i for i, _, _ in expected if api.job(i)["user"] == "bob"]
    stats = api.http.get("/queue", params={"limit": 1}).json()["stats"]
    waiting = [api.job(i) for i, place, _ in expected if place is not None]
    running = [api.job(i) for i, place, _ in expected if place is None]
    assert stats["queued_gpus"] == sum(j["gpu_count"] for j in waiting)
    assert stats["running_gpus"] == sum(j["gpu_count"] for j in running) > 0
    assert stats["oldest_wait_s"] == pytest.approx(api.service.clock.now() - min(j["submit_time"] for j in waiting))
    assert stats["counts"]["queued"] == len(waiting)


def test_the_queue_and_a_job_answer_while_the_scheduler_holds_its_lock(make_api):
    api = make_api()
    first, waiting = api.submit_ok(gpu_count=4), api.submit_ok(gpu_count=4)
    api.tick()
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with api.service.orchestrator.lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(5)
    try:
        t = time.monotonic()
        view = api.http.get("/queue").json()
        detail = api.http.get(f"/jobs/{waiting}").json()
        assert time.monotonic() - t < 2.0
    finally:
        release.set()
        holder.join()
    assert [(e["job"]["id"], e["position"]) for e in view["jobs"]] == [(first, None), (waiting, 1)]
    assert detail["position"] == 1 and detail["estimated_start"] is not None


def test_a_submission_that_could_not_be_stored_never_shows_in_the_queue(make_api):
    api = make_api()
    kept = api.submit_ok()
    with failing_writes(api.service.store, IO_ERROR, ("COMMIT",)):
        assert api.submit().status_code == 503
    assert [e["job"]["id"] for e in api.http.get("/queue").json()["jobs"]] == [kept]
    assert api.http.get("/queue").json()["stats"]["counts"]["queued"] == 1
