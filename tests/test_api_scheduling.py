"""Deferred starts, dependencies, preemptible jobs, estimated starts, explain, quotas and reservations
through the REST app (simulated clock and executor: every pass is the test's own ``tick()``); and
what the LLM agent sees of them."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from agent.scheduler import compact_snapshot
from agent.model_tools import CHAT_TOOLS, SCHEDULING_TOOLS
from tests.rest import T0
from tests.cores import SimCluster, busy_cluster
from tests.scripted_model import ScriptedModel, call, say
from tools.models import JobSpec, Reservation
from tools.timespec import local_time

HOUR = 3600.0
GROUPS = dict(groups={"nlp": ["alice", "bob"], "vision": ["carol"]}, user_quotas={"alice": 3}, group_quotas={"nlp": 4})


@pytest.fixture
def api(make_api):
    return make_api(**GROUPS)


# -- begin_at ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("begin_at, want", [
    ("+2h", T0 + 2 * HOUR),
    ("+90m", T0 + 90 * 60),
    (T0 + 600, T0 + 600),
    ("2030-01-02 03:04", datetime(2030, 1, 2, 3, 4).timestamp()),
    ("2030-01-02T03:04", datetime(2030, 1, 2, 3, 4).timestamp()),
])
def test_a_deferred_job_waits_for_its_begin_time(api, begin_at, want):
    job_id = api.submit_ok(begin_at=begin_at)
    api.tick()
    job = api.job(job_id)
    assert (job["status"], job["begin_at"], job["not_before"], job["pending_reason"]) == ("queued", want, want, "BeginTime")
    assert job["pending_message"] == f"deferred: not before {local_time(want)}"
    assert job["estimated_start"] == want  # the cluster is idle: it starts at its begin time
    api.clock.advance(want - T0)
    api.tick()
    assert api.job(job_id)["status"] == "running"


def test_a_time_of_day_is_its_next_occurrence_in_local_time(api):
    job = api.job(api.submit_ok(begin_at="22:00"))
    at = time.localtime(job["begin_at"])
    assert (at.tm_hour, at.tm_min) == (22, 0)
    assert T0 < job["begin_at"] <= T0 + 24 * HOUR


def test_begin_now_starts_at_once(api):
    job_id = api.submit_ok(begin_at="now")
    api.tick()
    assert api.job(job_id)["status"] == "running"


@pytest.mark.parametrize("begin_at, detail", [
    ("soon", "begin_at: 'soon' is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now"),
    ("25:00", "begin_at: '25:00' is not a time of day; hours run 00-23, minutes and seconds 00-59"),
    ("+3", "begin_at: '+3' is not a time from now: '3' is not a duration; write e.g. 2h, 90m, 30s or 1h30m"),
    (-1, "begin_at: -1.0 is not a time in Unix seconds"),
    ([1], "begin_at.str: Input should be a valid string; begin_at.float: Input should be a valid number"),
])
def test_a_bad_begin_time_is_422_and_changes_nothing(api, begin_at, detail):
    api.submit_ok()
    before = api.all_jobs()
    response = api.submit(begin_at=begin_at)
    assert (response.status_code, response.json()["detail"]) == (422, detail)
    assert api.all_jobs() == before


# -- dependencies and preemptible jobs -----------------------------------------------------------------
def test_dependencies_wait_and_start_after_their_jobs(make_api):
    api = make_api(codes={1: 3})
    first = api.submit_ok(gpu_count=4, max_retries=0)
    on_success = api.submit_ok(after=[first])
    either_way = api.submit_ok(after_any=[first])
    api.tick()
    api.tick()  # the pass that started the first job saw it queued
    for job_id in (on_success, either_way):
        job = api.job(job_id)
        assert (job["pending_reason"], job["pending_message"]) == ("Dependency", f"waits for job(s) {first} (running)")
    api.sim.finish(first, 3, api.clock.now())
    api.tick()
    assert api.job(first)["status"] == "failed"
    assert api.job(either_way)["status"] == "running"
    never = api.job(on_success)
    assert (never["status"], never["pending_reason"]) == ("queued", "DependencyNeverSatisfied")
    response = api.submit(after=[first])
    assert (response.status_code, response.json()["detail"]) == (
        422, f"runs after job {first} completes, but it failed; it would never start")


def test_a_dependency_on_an_unknown_job_is_422(api):
    response = api.submit(after=[99])
    assert (response.status_code, response.json()["detail"]) == (422, "runs after job 99, which does not exist")
    response = api.submit(after_any=[98])
    assert (response.status_code, response.json()["detail"]) == (422, "runs after job 98, which does not exist")
    assert api.all_jobs() == []


def test_submission_keeps_dependencies_and_preemptible(api):
    first, second = api.submit_ok(), api.submit_ok()
    job = api.job(api.submit_ok(after=[first], after_any=[second], preemptible=True))
    assert (job["after"], job["after_any"], job["preemptible"], job["preemptions"]) == ([first], [second], True, 0)
    assert api.job(first)["preemptible"] is False
    both = api.submit(after=[first], after_any=[first])
    assert both.status_code == 422 and "in both after and after_any" in both.json()["detail"]


# -- why and when ------------------------------------------------------------------------------------
def test_waiting_jobs_show_their_position_and_estimated_start(api):
    running = api.submit_ok(gpu_count=4, user="dan", time_limit_s=600)
    api.tick()
    first = api.submit_ok(gpu_count=2, user="dan", est_duration_s=HOUR)
    second = api.submit_ok(gpu_count=4, user="erin", est_duration_s=HOUR)
    api.tick()
    view = api.http.get("/queue").json()
    assert [(e["job"]["id"], e["position"], e["estimated_start"]) for e in view["jobs"]] == [
        (running, None, None), (first, 1, T0 + 600), (second, 2, T0 + 600 + HOUR),
    ]
    job = api.job(second)
    assert (job["position"], job["estimated_start"], job["pending_reason"]) == (2, T0 + 600 + HOUR, "Resources")
    assert (api.job(running)["position"], api.job(running)["estimated_start"]) == (None, None)


def test_a_stopped_scheduler_gives_no_estimated_start(api):
    api.http.post("/orchestrator/stop")
    job_id = api.submit_ok()
    api.tick()
    assert api.http.get("/queue").json()["jobs"][0]["estimated_start"] is None
    assert (api.job(job_id)["pending_reason"], api.job(job_id)["estimated_start"]) == ("Held", None)


def test_explain_lists_the_priority_factors_reason_place_and_quotas(api):
    holder = api.submit_ok(gpu_count=2, user="bob")
    api.tick()
    waiting = api.submit_ok(gpu_count=3, user="alice", priority=8, est_duration_s=2 * HOUR)
    api.tick()
    api.clock.advance(HOUR)
    data = api.http.get(f"/jobs/{waiting}/explain").json()
    assert {k: data[k] for k in ("job_id", "user", "status", "gpu_count", "position", "policy", "note")} == {
        "job_id": waiting, "user": "alice", "status": "queued", "gpu_count": 3, "position": 1,
        "policy": "multifactor", "note": None,
    }
    assert data["reason"] == "QuotaExceeded" and data["message"] == api.job(waiting)["pending_message"]
    assert data["user_quota"] == {"name": "alice", "quota": 3, "in_use": 0}
    assert data["group_quota"] == {"name": "nlp", "quota": 4, "in_use": 2}
    factors = {f["name"]: f for f in data["factors"]}
    assert list(factors) == ["priority", "age", "fair_share", "size"]
    assert factors["priority"]["value"] == pytest.approx(7 / 9) and factors["priority"]["weight"] == 1000
    assert factors["age"]["value"] == pytest.approx(1 / 24) and factors["age"]["detail"].startswith("waited 1.0 h")
    assert factors["size"]["value"] == pytest.approx(1 / (1 + 6 / 8))  # 3 GPUs x 2 h against 8 GPU-hours
    assert all(f["points"] == pytest.approx(f["value"] * f["weight"]) for f in data["factors"])
    assert data["total"] == pytest.approx(sum(f["points"] for f in data["factors"]))
    assert data["estimated_start"] is None  # a quota holds it back: when depends on its group's other jobs
    assert api.job(holder)["status"] == "running"


def test_explain_says_which_policy_orders_the_queue(api):
    api.http.put("/orchestrator/policy", json={"policy": "fcfs"})
    job_id = api.submit_ok()
    data = api.http.get(f"/jobs/{job_id}/explain").json()
    assert data["policy"] == "fcfs"
    assert data["note"] == "the queue is ordered by the fcfs policy; these factors are how multifactor would rank it"
    assert len(data["factors"]) == 4


def test_the_configured_weights_explain_priorities(make_api):
    api = make_api(weight_priority=90, weight_size=0)
    data = api.http.get(f"/jobs/{api.submit_ok(priority=10)}/explain").json()
    points = {f["name"]: f["points"] for f in data["factors"]}
    assert (points["priority"], points["size"]) == (90, 0)


def test_explain_a_job_that_is_not_waiting(api):
    job_id = api.submit_ok(gpu_count=2)
    api.tick()
    running = api.http.get(f"/jobs/{job_id}/explain").json()
    assert (running["status"], running["message"], running["factors"], running["position"]) == (
        "running", "running on local GPU(s) 0,1", None, None)
    api.sim.finish(job_id, 0, api.clock.now())
    api.tick()
    done = api.http.get(f"/jobs/{job_id}/explain").json()
    assert (done["status"], done["message"], done["factors"], done["total"]) == ("completed", "completed with exit code 0", None, None)
    response = api.http.get("/jobs/42/explain")
    assert (response.status_code, response.json()["detail"]) == (404, "no job 42")


# -- quotas ------------------------------------------------------------------------------------------
def test_quotas_show_each_user_and_group(api):
    api.submit_ok(gpu_count=2, user="alice")
    api.submit_ok(gpu_count=1, user="dan")
    api.tick()
    api.submit_ok(gpu_count=2, user="bob")
    api.tick()
    assert api.http.get("/quotas").json() == {
        "default_user_quota": None,
        "users": [
            {"user": "alice", "group": "nlp", "quota": 3, "in_use": 2, "waiting_gpus": 0},
            {"user": "bob", "group": "nlp", "quota": None, "in_use": 0, "waiting_gpus": 2},
            {"user": "dan", "group": None, "quota": None, "in_use": 1, "waiting_gpus": 0},
        ],
        "groups": [
            {"group": "nlp", "members": ["alice", "bob"], "quota": 4, "in_use": 2, "waiting_gpus": 2},
            {"group": "vision", "members": ["carol"], "quota": None, "in_use": 0, "waiting_gpus": 0},
        ],
    }


def test_a_job_larger_than_its_quota_is_refused(api):
    response = api.submit(gpu_count=4, user="alice")
    assert (response.status_code, response.json()["detail"]) == (422, "asks for 4 GPUs but user alice's quota is 3 GPUs at once")


# -- reservations ------------------------------------------------------------------------------------
def reserve(api, **body):
    return api.http.post("/reservations", json=body)


def test_reserve_by_count_takes_the_first_gpus_free_of_other_reservations(api):
    first = reserve(api, user="carol", gpu_count=2, start="+1h", end="+8h", note="deadline")
    assert first.status_code == 201
    assert first.json() == {"id": 1, "node": "local", "gpus": [0, 1], "user": "carol", "group": None,
                            "start": T0 + HOUR, "end": T0 + 9 * HOUR, "note": "deadline", "movable": True}
    second = reserve(api, group="nlp", gpu_count=2, start=T0 + 2 * HOUR, end=T0 + 3 * HOUR).json()
    assert (second["node"], second["gpus"], second["group"]) == ("local", [2, 3], "nlp")
    later = reserve(api, user="dan", gpu_count=4, start="+9h", end="+1h").json()  # after both: all four
    assert (later["gpus"], later["start"], later["end"]) == ([0, 1, 2, 3], T0 + 9 * HOUR, T0 + 10 * HOUR)
    full = reserve(api, user="dan", gpu_count=1, start="+2h", end="+30m")
    assert (full.status_code, full.json()["detail"]) == (
        422, f"no node has 1 usable GPU(s) free of other reservations from {local_time(T0 + 2 * HOUR)} "
             f"to {local_time(T0 + 2.5 * HOUR)}")
    assert [r["id"] for r in api.http.get("/reservations").json()] == [1, 2, 3]


def test_reserve_named_gpus_and_remove_reservations(api):
    made = reserve(api, user="carol", node="local", gpus=[3, 1], start="now", end="+1h").json()
    assert (made["gpus"], made["start"]) == ([1, 3], T0)
    clash = reserve(api, user="dan", gpus=[1], start="+30m", end="+2h")  # one node: --node may be left out
    assert (clash.status_code, clash.json()["detail"]) == (
        422, f"GPU(s) 1 of local are already reserved for user carol then (reservation {made['id']})")
    removed = api.http.delete(f"/reservations/{made['id']}")
    assert removed.status_code == 200 and removed.json() == made
    assert api.http.get("/reservations").json() == []
    again = api.http.delete(f"/reservations/{made['id']}")
    assert (again.status_code, again.json()["detail"]) == (404, f"no reservation {made['id']}")


def test_reserve_on_a_cluster_of_several_nodes(api):
    api.http.post("/gpu/initialize", json={"nodes": [{"name": "a", "gpus": 2}, {"name": "b", "gpus": 4}]})
    assert reserve(api, user="carol", gpu_count=3, end="+1h").json()["node"] == "b"
    assert reserve(api, user="carol", gpu_count=1, end="+1h").json() | {"id": 0} == {
        "id": 0, "node": "a", "gpus": [0], "user": "carol", "group": None, "start": T0, "end": T0 + HOUR, "note": "",
        "movable": True}
    on_b = reserve(api, user="dan", gpu_count=2, node="b", end="+1h")
    assert on_b.json()["detail"] == (f"node b has 2 usable GPU(s) free of other reservations from {local_time(T0)} "
                                     f"to {local_time(T0 + HOUR)}")
    unnamed = reserve(api, user="dan", gpus=[0], end="+1h")
    assert (unnamed.status_code, unnamed.json()["detail"]) == (422, "say which node the GPUs are on")


@pytest.mark.parametrize("body, detail", [
    ({"user": "carol", "group": "nlp", "gpu_count": 1}, "a reservation is for exactly one of user or group"),
    ({"gpu_count": 1}, "a reservation is for exactly one of user or group"),
    ({"group": "physics", "gpu_count": 1}, "there is no group 'physics'; the groups are: nlp, vision"),
    ({"user": "carol"}, "say how many GPUs (gpu_count) or which ones (node and gpus)"),
    ({"user": "carol", "gpus": [0, 0]}, "a GPU is named twice"),
    ({"user": "carol", "gpus": [0, 1], "gpu_count": 3}, "gpu_count is 3 but 2 GPU(s) are named"),
    ({"user": "carol", "gpus": [7]}, "there is no GPU 7 on node 'local'"),
    ({"user": "carol", "node": "z", "gpu_count": 1}, "there is no node 'z'; the nodes are local"),
    ({"user": "carol", "gpu_count": 1, "start": "+2h", "end": T0 + HOUR}, "a reservation must end after it starts"),
    ({"user": "carol", "gpu_count": 1, "start": T0 - 2 * HOUR, "end": T0 - HOUR}, "the reservation's window is already over"),
    ({"user": "carol", "gpu_count": 1, "start": "later"},
     "start: 'later' is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now"),
    ({"user": "carol", "gpu_count": 1, "end": "+8"},
     "end: '+8' is not a time from now: '8' is not a duration; write e.g. 2h, 90m, 30s or 1h30m"),
    ({"user": "carol", "gpu_count": 0}, "gpu_count: Input should be greater than or equal to 1"),
    ({"user": "carol", "gpu_count": 1, "end": "+1h", "color": "red"}, "color: is not a known field"),
], ids=lambda v: None if isinstance(v, dict) else v[:30])
def test_bad_reservations_are_422_and_change_nothing(api, body, detail):
    response = reserve(api, **{"end": "+1h", **body})
    assert (response.status_code, response.json()["detail"]) == (422, detail)
    assert api.http.get("/reservations").json() == []


def test_a_reservation_keeps_its_gpus_from_others(api):
    reserve(api, user="carol", gpu_count=4, start="now", end="+2h")
    other = api.submit_ok(gpu_count=1, user="dan")
    holder = api.submit_ok(gpu_count=1, user="carol")
    api.tick()
    assert api.job(holder)["status"] == "running"
    assert (api.job(other)["status"], api.job(other)["pending_reason"]) == ("queued", "Reservation")
    assert api.job(other)["estimated_start"] == T0 + 2 * HOUR


# -- what the agent sees -------------------------------------------------------------------------------
def test_the_chat_agent_may_read_but_not_make_reservations():
    names = {t.name for t in CHAT_TOOLS}
    assert {"explain_job", "get_quotas", "list_reservations"} <= names
    assert not any("reserve" in name and name != "list_reservations" for name in names)
    assert [t.name for t in SCHEDULING_TOOLS] == ["propose_allocation", "get_quotas", "list_reservations"]


def test_the_scheduling_agent_reads_quotas_and_reservations_of_its_snapshot():
    model = ScriptedModel(call("get_quotas"), call("list_reservations"), say("done"))
    c = busy_cluster(model)
    c.orch.reserve(Reservation(node="b", gpus=(0, 1), user="cy", start=c.clock.now() + 600, end=c.clock.now() + 3600))
    c.orch.tick()
    quotas = json.loads(model.sent[1][-1]["content"])["result"]
    assert quotas["users"] == [
        {"user": "ana", "group": None, "quota": None, "in_use": 2, "waiting_gpus": 0},
        {"user": "bo", "group": None, "quota": None, "in_use": 0, "waiting_gpus": 2},
    ]
    (reservation,) = json.loads(model.sent[2][-1]["content"])["result"]
    assert (reservation["node"], reservation["gpus"], reservation["user"]) == ("b", [0, 1], "cy")


def test_the_chat_agent_explains_with_factors():
    c = SimCluster()
    for _ in range(3):
        c.submit(gpus=4)
    c.orch.tick()
    model = ScriptedModel(call("explain_job", job_id=3), say("It waits."))
    c.chat(model).ask("why does job 3 wait?", user="ana")
    result = json.loads(model.sent[1][-1]["content"])["result"]
    assert result["policy"] == "priority" and [f["name"] for f in result["factors"]] == ["priority", "age", "fair_share", "size"]
    assert result["estimated_start"] == c.clock.now() + HOUR


def test_the_scheduling_view_has_reasons_plans_and_dependencies():
    c = SimCluster()
    now = c.clock.now()
    first = c.orch.submit(JobSpec(user="ana", command="x", gpu_count=4, time_limit_s=HOUR))
    c.orch.tick()
    c.orch.submit(JobSpec(user="ana", command="x", gpu_count=4, time_limit_s=HOUR))  # takes node b
    c.orch.submit(JobSpec(user="bo", command="x", gpu_count=4, after=(first.id,), preemptible=True))
    c.orch.submit(JobSpec(user="cy", command="x", gpu_count=1, begin_at=now + 600))
    c.orch.tick()
    c.orch.tick()  # the pass that started job 1 saw it queued
    snapshot = c.orch.snapshot()
    data = json.loads(compact_snapshot(snapshot, c.orch.policy.order(snapshot)).split("\n", 1)[1])
    jobs = {j["job_id"]: j for j in data["queued_jobs"]}
    assert sorted(jobs) == [3, 4]
    assert (jobs[3]["pending_reason"], jobs[3]["after_completed"], jobs[3]["preemptible"]) == ("Dependency", [1], True)
    assert jobs[3]["planned_start_in_s"] == HOUR  # after job 1's time limit
    assert jobs[3]["pending_message"] == "waits for job(s) 1 (running)"
    assert (jobs[4]["pending_reason"], jobs[4]["begins_in_s"], jobs[4]["may_start"], jobs[4]["planned_start_in_s"]) == (
        "BeginTime", 600, False, HOUR)  # every GPU is busy for the next hour
    assert "after_completed" not in jobs[4] and "preemptible" not in jobs[4]
