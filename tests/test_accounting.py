"""Accounting: run time and GPU-hours over every attempt, the first start (wait), TIMEOUT as an end reason
that can be filtered on, and the report per user, group or node (``GET /jobs/report``)."""

from __future__ import annotations

import pytest

from tests.rest import T0


def test_a_time_limit_end_is_a_timeout_that_can_be_filtered_on(make_api):
    api = make_api(durations={1: 600, 2: 5})
    late = api.submit_ok(time_limit_s=60)
    fine = api.submit_ok(time_limit_s=60)
    api.tick()
    api.clock.advance(10)
    api.tick()
    api.clock.advance(60)
    api.tick()  # past its limit: stopped (SIGTERM)
    api.tick()  # its end is recorded
    job = api.job(late)
    assert (job["status"], job["end_reason"], job["exit_code"]) == ("failed", "timeout", 143)
    assert api.job(fine)["end_reason"] == "completed"
    assert [j["id"] for j in api.http.get("/jobs", params={"status": "timeout"}).json()["jobs"]] == [late]
    assert [j["id"] for j in api.http.get("/jobs", params={"end_reason": "timeout"}).json()["jobs"]] == [late]
    assert api.http.get("/jobs", params={"status": "timeout,completed"}).status_code == 422
    events = api.http.get(f"/jobs/{late}/events").json()
    assert events[-1]["message"].endswith("stopped at its time limit of 60 s (TIMEOUT)")


def test_run_time_counts_every_attempt_and_the_wait_the_first_start(make_api):
    api = make_api(durations={1: 10}, codes={1: 1})
    job_id = api.submit_ok(gpu_count=2, max_retries=1)
    api.clock.advance(30)  # waits 30 s
    api.tick()  # starts at T0 + 30
    api.clock.advance(10)
    api.tick()  # fails after 10 s; a retry after its backoff
    api.service.core.executor._exit_code_of = lambda job: 0
    api.clock.advance(20)
    api.tick()
    api.clock.advance(10)
    api.tick()
    job = api.job(job_id)
    assert (job["status"], job["attempts"], job["run_s"]) == ("completed", 2, 20)
    assert job["first_start_time"] == T0 + 30 and job["start_time"] == T0 + 60


def test_the_report_per_user_group_and_node(make_api, tmp_path):
    config = tmp_path / "herd.yaml"
    config.write_text("groups: {nlp: [ana, bob]}\n")
    api = make_api(durations={1: 3600, 2: 1800, 3: 7200}, codes={2: 1}, config=config)
    api.submit_ok(user="ana", gpu_count=2)
    api.submit_ok(user="bob", gpu_count=1, max_retries=0)
    api.submit_ok(user="cat", gpu_count=1)
    waiting = api.submit_ok(user="cat", gpu_count=4, max_retries=0)
    api.clock.advance(60)
    api.tick()  # ana, bob and cat start after 60 s; cat's second job waits
    api.clock.advance(3600)
    api.tick()  # ana's completed, bob's failed; cat's still runs
    rows = {r["key"]: r for r in api.http.get("/jobs/report", params={"since": "1d"}).json()["rows"]}
    assert rows["ana"] | {"mean_wait_s": None} == {
        "key": "ana", "jobs": 1, "completed": 1, "failed": 0, "timeout": 0, "cancelled": 0, "running": 0,
        "waiting": 0, "gpu_hours": 2.0, "mean_wait_s": None, "mean_utilization_pct": None, "peak_memory_mib": None}
    assert rows["ana"]["mean_wait_s"] == 60
    assert (rows["bob"]["failed"], rows["bob"]["gpu_hours"]) == (1, 0.5)
    assert (rows["cat"]["running"], rows["cat"]["waiting"], rows["cat"]["gpu_hours"]) == (1, 1, 1.0)
    report = api.http.get("/jobs/report", params={"since": "1d", "by": "group"}).json()
    assert [(r["key"], r["gpu_hours"]) for r in report["rows"]] == [("nlp", 2.5), ("-", 1.0)]
    assert report["total"]["jobs"] == 2 and report["total"]["gpu_hours"] == 3.5
    by_node = api.http.get("/jobs/report", params={"since": "1d", "by": "node"}).json()["rows"]
    assert [(r["key"], r["jobs"], r["running"], r["waiting"]) for r in by_node] == [("local", 2, 1, 0), ("-", 0, 0, 1)]
    # a window that starts after the ends holds only what is active now
    api.clock.advance(120)
    recent = api.http.get("/jobs/report", params={"since": "1m"}).json()
    assert recent["total"]["jobs"] == 0 and recent["total"]["running"] == 1
    assert api.job(waiting)["status"] == "queued"


@pytest.mark.parametrize("since, message", [
    ("tomorrow", "since: 'tomorrow' is not a time"), ("+1h", "is in the future"),
])
def test_a_report_window_is_read_in_words(api, since, message):
    response = api.http.get("/jobs/report", params={"since": since})
    assert response.status_code == 422 and message in response.json()["detail"]
