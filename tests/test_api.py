"""The REST API through the real app (FastAPI's TestClient runs its lifespan), on a simulated clock and
executor so that every scheduler pass is the test's own ``tick()``."""

from __future__ import annotations

import threading
import time

import pytest

import agent.service
from agent.settings import Settings
from tests.fake_nvml import FakeNvml, h100s
from tests.helpers import wait_until
from tests.rest import T0
from tools.logs import read_log
from tools.nvml import NvmlProbe
from tools.sim_executor import SimExecutor

SEED_PATHS = {
    ("/gpu/status", "get"), ("/gpu/initialize", "post"), ("/queue", "get"), ("/queue/submit", "post"),
    ("/queue/{job_id}", "delete"), ("/queue/{job_id}/priority", "patch"), ("/orchestrator/status", "get"),
    ("/orchestrator/start", "post"), ("/orchestrator/stop", "post"), ("/orchestrator/policy", "put"),
    ("/jobs/{job_id}/complete", "post"), ("/jobs/{job_id}", "get"), ("/jobs", "get"),
    ("/jobs/{job_id}/logs", "get"), ("/healthz", "get"),
}


# -- submit and the queue --------------------------------------------------------------------------
def test_submit_answers_201_with_id_status_and_position(api):
    first = api.submit(gpu_count=2, priority=3)
    assert first.status_code == 201
    assert first.json() == {"job_id": 1, "status": "queued", "position": 1, "not_before": None}
    assert api.submit(priority=9).json() == {"job_id": 2, "status": "queued", "position": 1, "not_before": None}
    assert api.submit(priority=1).json()["position"] == 3


def test_submit_keeps_every_field(api, tmp_path):
    job_id = api.submit_ok(
        run_id="exp-7", user="bob", command="python train.py --lr 3e-4", gpu_count=2, priority=8, cwd=str(tmp_path),
        env={"WANDB_MODE": "offline"}, est_duration_s=600, time_limit_s=3600, max_retries=0,
    )
    job = api.job(job_id)
    assert {k: job[k] for k in ("name", "user", "command", "gpu_count", "priority", "cwd", "env", "est_duration_s",
                                "time_limit_s", "max_retries", "status", "submit_time")} == {
        "name": "exp-7", "user": "bob", "command": "python train.py --lr 3e-4", "gpu_count": 2, "priority": 8,
        "cwd": str(tmp_path), "env": {"WANDB_MODE": "offline"}, "est_duration_s": 600, "time_limit_s": 3600,
        "max_retries": 0, "status": "queued", "submit_time": T0,
    }


def test_queue_lists_holders_then_waiting_jobs_in_order_with_reasons(api):
    low = api.submit_ok(gpu_count=2, priority=1)
    high = api.submit_ok(gpu_count=2, priority=9)
    big = api.submit_ok(gpu_count=4, priority=5)
    assert api.tick().started == (high, low)
    view = api.http.get("/queue").json()
    assert [(e["job"]["id"], e["position"], e["job"]["status"]) for e in view["jobs"]] == [
        (low, None, "running"), (high, None, "running"), (big, 1, "queued")
    ]
    waiting = view["jobs"][2]["job"]
    assert waiting["pending_reason"] == "Resources"
    assert waiting["pending_message"].startswith("needs 4 free GPU(s) on one node; the most free on any node is 2")
    # Both running jobs are expected to run the default hour; then the big one starts.
    assert [e["estimated_start"] for e in view["jobs"]] == [None, None, T0 + 3600]
    assert view["policy"] == "multifactor"
    assert view["stats"]["counts"]["running"] == 2 and view["stats"]["queued_gpus"] == 4
    assert view["stats"]["running_gpus"] == 4 and view["stats"]["max_queued"] == 100
    assert [e["job"]["id"] for e in api.http.get("/queue", params={"user": "nobody"}).json()["jobs"]] == []


def test_cancel_a_queued_job(api):
    job_id = api.submit_ok()
    response = api.http.delete(f"/queue/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert api.http.get("/queue").json()["jobs"] == []


def test_cancel_a_running_job_stops_it_and_frees_its_gpus(api):
    job_id = api.submit_ok(gpu_count=4)
    api.tick()
    response = api.http.delete(f"/queue/{job_id}")
    assert response.json()["status"] == "running" and response.json()["stop_reason"] == "cancel"
    api.tick()  # the simulated job honours SIGTERM at once
    job = api.job(job_id)
    assert (job["status"], job["exit_code"]) == ("cancelled", 143)
    assert api.http.get("/gpu/status").json()["free_gpus"] == 4


def test_set_priority_reorders_the_queue(api):
    a, b = api.submit_ok(), api.submit_ok()
    response = api.http.patch(f"/queue/{b}/priority", json={"priority": 9})
    assert response.status_code == 200 and response.json()["priority"] == 9
    assert [e["job"]["id"] for e in api.http.get("/queue").json()["jobs"]] == [b, a]


@pytest.mark.parametrize("body, want_status", [({}, "completed"), ({"exit_code": 0}, "completed"), ({"exit_code": 3}, "failed")])
def test_complete_by_hand_frees_the_gpus(api, body, want_status):
    job_id = api.submit_ok(gpu_count=4)
    api.tick()
    response = api.http.post(f"/jobs/{job_id}/complete", json=body)
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["exit_code"]) == (want_status, body.get("exit_code", 0))
    assert api.http.get("/gpu/status").json()["free_gpus"] == 4
    api.tick()  # the stopped process's own exit is ignored
    assert api.job(job_id)["status"] == want_status


def test_complete_without_a_body(api):
    job_id = api.submit_ok()
    api.tick()
    assert api.http.post(f"/jobs/{job_id}/complete").json()["status"] == "completed"


# -- bad input: a 4xx with a readable detail, and nothing changed -----------------------------------
@pytest.mark.parametrize(
    "body, want_status, want_detail",
    [
        ({"gpu_count": 0}, 422, "gpu_count: Input should be greater than or equal to 1"),
        ({"gpu_count": 5}, 422, "asks for 5 GPUs but the largest node has 4"),
        ({"gpu_count": "two"}, 422, "gpu_count: Input should be a valid integer"),
        ({"priority": 0}, 422, "priority: Input should be greater than or equal to 1"),
        ({"priority": 11}, 422, "priority: Input should be less than or equal to 10"),
        ({"command": ""}, 422, "command: String should have at least 1 character"),
        ({"command": "   "}, 422, "command: command is empty"),
        ({"user": 5}, 422, "user: Input should be a valid string"),
        ({"user": "a b"}, 422, "user: String should match pattern '^[A-Za-z0-9._@-]+$'"),
        ({"cwd": "relative/dir"}, 422, "cwd must be an absolute path, not 'relative/dir'"),
        ({"cwd": "/no/such/dir"}, 422, "cwd /no/such/dir is not an existing directory on this server"),
        ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, 422, "env: CUDA_VISIBLE_DEVICES is set by gpuherd for each job and cannot be overridden"),
        ({"env": {"1BAD": "x"}}, 422, "env: '1BAD' is not a valid environment variable name"),
        ({"est_duration_s": -5}, 422, "est_duration_s: Input should be greater than 0"),
        ({"max_retries": 11}, 422, "max_retries: Input should be less than or equal to 10"),
        ({"gpus": 2}, 422, "gpus: is not a known field"),
    ],
    ids=lambda v: None if isinstance(v, (dict, int)) else v[:40],
)
def test_bad_submissions_are_refused_and_change_nothing(api, body, want_status, want_detail):
    api.submit_ok()
    before = api.all_jobs()
    response = api.submit(**body)
    assert response.status_code == want_status
    assert response.json()["detail"] == want_detail
    assert api.all_jobs() == before


def test_missing_fields_are_named(api):
    response = api.http.post("/queue/submit", json={"command": "true"})
    assert response.status_code == 422
    assert response.json()["detail"] == "gpu_count: is required"


def test_malformed_json_is_422(api):
    response = api.http.post("/queue/submit", content=b'{"user": "a",', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("the request body is not valid JSON")
    assert api.all_jobs() == []


def test_a_full_queue_is_429(make_api):
    api = make_api(max_queue_size=2)
    api.submit_ok(), api.submit_ok()
    response = api.submit()
    assert response.status_code == 429
    assert response.json()["detail"] == "the queue is full (2 jobs waiting); try again when some have started"
    assert len(api.all_jobs()) == 2


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/jobs/42", None), ("DELETE", "/queue/42", None), ("PATCH", "/queue/42/priority", {"priority": 5}),
        ("POST", "/jobs/42/complete", {}), ("GET", "/jobs/42/logs", None), ("GET", "/jobs/42/events", None),
    ],
)
def test_an_unknown_job_is_404(api, method, path, body):
    response = api.http.request(method, path, json=body)
    assert (response.status_code, response.json()) == (404, {"detail": "no job 42"})


def test_impossible_transitions_are_409_and_change_nothing(api):
    done, running, queued = api.submit_ok(gpu_count=2), api.submit_ok(gpu_count=2), api.submit_ok(gpu_count=2)
    api.tick()
    api.sim.finish(done, 0, api.clock.now())
    api.tick()  # `done` completes; `queued` takes its GPUs
    assert [api.job(i)["status"] for i in (done, running, queued)] == ["completed", "running", "running"]
    waiting = api.submit_ok(gpu_count=2)
    before = api.all_jobs()
    cases = [
        (api.http.delete(f"/queue/{done}"), f"job {done} is completed; there is nothing to cancel"),
        (api.http.patch(f"/queue/{running}/priority", json={"priority": 9}),
         f"job {running} is running; only a queued job's priority can change"),
        (api.http.post(f"/jobs/{waiting}/complete", json={}), f"job {waiting} is queued; only a running job can be completed"),
        (api.http.post(f"/jobs/{done}/complete", json={}), f"job {done} is completed; only a running job can be completed"),
    ]
    for response, want in cases:
        assert (response.status_code, response.json()["detail"]) == (409, want)
    assert api.all_jobs() == before


def test_priority_out_of_range_is_422(api):
    job_id = api.submit_ok()
    response = api.http.patch(f"/queue/{job_id}/priority", json={"priority": 11})
    assert (response.status_code, response.json()["detail"]) == (422, "priority: Input should be less than or equal to 10")
    assert api.job(job_id)["priority"] == 5


# -- GPUs ------------------------------------------------------------------------------------------
def test_gpu_status_says_the_inventory_is_declared(api):
    job_id = api.submit_ok(gpu_count=2, user="carol")
    api.tick()
    status = api.http.get("/gpu/status").json()
    assert status["detected"] is False
    assert "declared" in status["notice"] and "not detected (no NVML in tests)" in status["notice"]
    (node,) = status["nodes"]
    assert node["name"] == "local" and node["source"] == "declared"
    assert [(g["index"], g["state"], g["job_id"], g["user"]) for g in node["gpus"]] == [
        (0, "allocated", job_id, "carol"), (1, "allocated", job_id, "carol"), (2, "free", None, None), (3, "free", None, None)
    ]
    assert node["gpus"][0]["uuid"] == "GPU-declared-local-0" and node["gpus"][0]["utilization_pct"] is None
    assert (status["total_gpus"], status["free_gpus"]) == (4, 2)


def test_without_gpus_flag_or_nvml_eight_gpus_are_assumed_and_said_so(make_api):
    status = make_api(gpus=None).http.get("/gpu/status").json()
    assert status["total_gpus"] == 8 and status["detected"] is False
    assert "They are declared, not detected" in status["notice"]


def test_declare_an_inventory(api):
    response = api.http.post("/gpu/initialize", json={"nodes": [{"name": "a", "gpus": 2, "model": "H100"}, {"name": "b", "gpus": 8}]})
    assert response.status_code == 200
    status = response.json()
    assert [(n["name"], len(n["gpus"])) for n in status["nodes"]] == [("a", 2), ("b", 8)]
    assert status["nodes"][0]["gpus"][0]["model"] == "H100"
    assert "declared, not detected" in status["notice"]
    assert api.submit(gpu_count=8).status_code == 201


def test_declaring_refuses_to_drop_gpus_running_jobs_hold(api):
    api.submit_ok(gpu_count=4)
    api.tick()
    response = api.http.post("/gpu/initialize", json={"nodes": [{"name": "local", "gpus": 2}]})
    assert response.status_code == 409
    assert response.json()["detail"].startswith("the new inventory drops GPU(s) local:2, local:3, which running jobs hold")
    assert api.http.get("/gpu/status").json()["total_gpus"] == 4


@pytest.mark.parametrize(
    "body, want_detail",
    [
        ({"nodes": [{"name": "a", "gpus": 0}]}, "nodes.0.gpus: Input should be greater than or equal to 1"),
        ({"nodes": []}, "declare at least one node"),
        ({"nodes": [{"name": "a", "gpus": 1}, {"name": "a", "gpus": 2}]}, "a node is declared twice: ['a']"),
    ],
)
def test_bad_inventories_are_422(api, body, want_detail):
    response = api.http.post("/gpu/initialize", json=body)
    assert (response.status_code, response.json()["detail"]) == (422, want_detail)


def test_redetect_without_nvml_says_why(api):
    for response in (api.http.post("/gpu/initialize"), api.http.post("/gpu/initialize", json={})):
        assert (response.status_code, response.json()["detail"]) == (409, "no NVML in tests")


def test_nvml_gpus_are_detected_with_live_readings(make_api, tmp_path):
    gpus = h100s(2)
    gpus[1].utilization_pct, gpus[1].memory_used_mib = 87, 40_000
    api = make_api(gpus=None, probe=NvmlProbe("local", FakeNvml(gpus), proc_root=tmp_path))
    response = api.http.post("/gpu/initialize")  # re-detects, then reads the GPUs
    status = response.json()
    assert status["detected"] is True and status["notice"] == "Detected 2 GPU(s) through NVML on local."
    gpu = status["nodes"][0]["gpus"][1]
    assert (gpu["model"], gpu["memory_total_mib"], gpu["utilization_pct"], gpu["memory_used_mib"]) == (
        "NVIDIA H100 80GB HBM3", 81559, 87, 40_000
    )


# -- the orchestrator ------------------------------------------------------------------------------
def test_stop_holds_new_starts_and_start_releases_them(api):
    running = api.submit_ok()
    api.tick()
    status = api.http.post("/orchestrator/stop").json()
    assert (status["state"], status["running"]) == ("stopped", False)
    waiting = api.submit_ok()
    api.tick()
    assert api.job(running)["status"] == "running"  # running jobs go on
    assert (api.job(waiting)["status"], api.job(waiting)["pending_reason"]) == ("queued", "Held")
    assert api.http.post("/orchestrator/start").json()["state"] == "running"
    api.tick()
    assert api.job(waiting)["status"] == "running"


def test_orchestrator_status_reports_the_last_pass(api):
    api.submit_ok()
    api.tick()
    status = api.http.get("/orchestrator/status").json()
    assert status["policy"] == "multifactor" and status["policies"] == ["priority", "fcfs", "sjf", "fair_share", "backfill", "multifactor", "agent"]
    assert status["last_tick"]["started"] == [1] and status["last_tick"]["time"] == T0
    assert status["counts"]["running"] == 1 and status["last_error"] is None


def test_set_policy(api):
    assert api.http.put("/orchestrator/policy", json={"policy": "sjf"}).json()["policy"] == "sjf"
    assert api.http.get("/queue").json()["policy"] == "sjf"
    response = api.http.put("/orchestrator/policy", json={"policy": "lottery"})
    assert (response.status_code, response.json()["detail"]) == (
        422, "unknown policy 'lottery'; choose one of: priority, fcfs, sjf, fair_share, backfill, multifactor"
    )


def test_policy_and_stopped_state_survive_a_restart_unless_given_explicitly(make_api):
    first = make_api()
    first.http.put("/orchestrator/policy", json={"policy": "fair_share"})
    first.http.post("/orchestrator/stop")
    first.http.__exit__(None, None, None)
    status = make_api().http.get("/orchestrator/status").json()
    assert (status["policy"], status["state"]) == ("fair_share", "stopped")
    status = make_api(policy="fcfs", orchestration_enabled=True).http.get("/orchestrator/status").json()
    assert (status["policy"], status["state"]) == ("fcfs", "running")


# -- settings --------------------------------------------------------------------------------------
def test_settings_take_flags_then_herd_variables_then_the_seeds(monkeypatch):
    assert (Settings().policy, Settings().max_queue_size, Settings().orchestration_enabled) == ("multifactor", 100, True)
    monkeypatch.setenv("RESEARCH_AGENT_SCHEDULING_POLICY", "sjf")
    monkeypatch.setenv("RESEARCH_AGENT_MAX_QUEUE_SIZE", "7")
    monkeypatch.setenv("RESEARCH_AGENT_GPU_ORCHESTRATION_ENABLED", "false")
    seed = Settings()
    assert (seed.policy, seed.max_queue_size, seed.orchestration_enabled) == ("sjf", 7, False)
    assert seed.explicit >= {"policy", "max_queue_size", "orchestration_enabled"}
    monkeypatch.setenv("HERD_POLICY", "fair_share")
    assert Settings().policy == "fair_share"
    assert Settings(policy="fcfs").policy == "fcfs"
    monkeypatch.setenv("HERD_POLICY", "lottery")
    with pytest.raises(ValueError, match="unknown policy 'lottery'"):
        Settings()


def test_seed_variable_can_start_the_service_stopped(make_api, monkeypatch):
    monkeypatch.setenv("RESEARCH_AGENT_GPU_ORCHESTRATION_ENABLED", "false")
    api = make_api()
    assert api.http.get("/orchestrator/status").json()["state"] == "stopped"


# -- jobs, logs, health ----------------------------------------------------------------------------
def test_list_jobs_by_status_and_user(api):
    a, b = api.submit_ok(user="ann"), api.submit_ok(user="ben")
    api.http.delete(f"/queue/{a}")
    assert [j["id"] for j in api.http.get("/jobs", params={"status": "cancelled"}).json()["jobs"]] == [a]
    assert [j["id"] for j in api.http.get("/jobs?status=queued,cancelled").json()["jobs"]] == [b, a]  # newest first
    assert [j["id"] for j in api.http.get("/jobs", params={"user": "ben"}).json()["jobs"]] == [b]
    page = api.http.get("/jobs", params={"limit": 1}).json()
    assert ([j["id"] for j in page["jobs"]], page["next"]) == ([b], b)
    page = api.http.get("/jobs", params={"limit": 1, "cursor": page["next"]}).json()
    assert ([j["id"] for j in page["jobs"]], page["next"]) == ([a], None)
    response = api.http.get("/jobs", params={"status": "done"})
    assert response.status_code == 422 and response.json()["detail"].startswith("unknown status done")


def test_job_record_and_events(api):
    job_id = api.submit_ok(gpu_count=2)
    api.tick()
    job = api.job(job_id)
    assert job["status"] == "running" and job["attempts"] == 1 and job["start_time"] == T0
    assert job["allocation"] == {"node": "local", "gpus": [0, 1]}
    kinds = [e["kind"] for e in api.http.get(f"/jobs/{job_id}/events").json()]
    assert kinds == ["submitted", "scheduled", "running"]


def test_logs_of_a_job_that_has_not_started_are_empty(api):
    job_id = api.submit_ok()
    assert api.http.get(f"/jobs/{job_id}/logs").json() == {
        "job_id": job_id, "status": "queued", "path": None, "text": "", "offset": 0, "next_offset": 0, "size": 0
    }


def test_read_log_tail_and_offset(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("one\ntwo\nthree\n")
    assert read_log(log).text == "one\ntwo\nthree\n"
    assert read_log(log, tail=2).text == "two\nthree\n"
    assert read_log(log, tail=10).text == "one\ntwo\nthree\n"
    assert read_log(log, tail=0).text == ""
    chunk = read_log(log, offset=4)
    assert (chunk.text, chunk.next_offset, chunk.size) == ("two\nthree\n", 14, 14)
    assert read_log(log, offset=99).text == ""
    log.write_text("a\nb")  # no final newline: the unfinished line counts
    assert read_log(log, tail=1).text == "b"
    assert read_log(tmp_path / "missing.log").text == ""


def test_read_log_tail_of_a_long_log(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(50_000)))
    assert read_log(log, tail=3).text == "line 49997\nline 49998\nline 49999\n"


def test_healthz_and_openapi(api):
    assert api.http.get("/healthz").json() == {
        "ok": True, "status": "ok", "loop_alive": False, "inventory": "declared", "problems": [],
        "storage_error": None, "storage_error_at": None, "loop_error": None}
    schema = api.http.get("/openapi.json").json()
    have = {(path, method) for path, methods in schema["paths"].items() for method in methods}
    assert SEED_PATHS <= have


# -- the background loop ---------------------------------------------------------------------------
class BlockingSim(SimExecutor):
    """A simulated executor whose ``wait`` blocks like a real one, so only a wake-up can start a pass."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = threading.Event()

    def wait(self, timeout_s: float) -> None:
        self._closed.wait(timeout_s)

    def close(self) -> None:
        self._closed.set()  # like TmuxExecutor.close, wakes a thread blocked in wait


def test_a_submission_wakes_the_loop(make_api):
    api = make_api(executor=BlockingSim(), run_loop=True, tick_interval_s=30.0)
    assert api.http.get("/healthz").json()["loop_alive"] is True
    started = time.monotonic()
    job_id = api.submit_ok()
    wait_until(lambda: api.job(job_id)["status"] == "running")
    assert time.monotonic() - started < 5.0  # far less than the 30 s between timed passes


def test_the_loop_survives_a_failing_pass(make_api, monkeypatch):
    monkeypatch.setattr(agent.service, "ERROR_BACKOFF_S", 0.01)
    api = make_api(executor=BlockingSim(), run_loop=True, tick_interval_s=0.05)
    real_tick, calls = api.service.orchestrator.tick, []

    def flaky_tick():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return real_tick()

    api.service.orchestrator.tick = flaky_tick
    job_id = api.submit_ok()
    wait_until(lambda: api.job(job_id)["status"] == "running")
    assert api.service.loop_alive and api.service.ticks >= 1
    assert api.http.get("/orchestrator/status").json()["last_error"] is None  # cleared by the next good pass


def test_stopping_the_service_ends_its_threads(make_api):
    api = make_api(executor=BlockingSim(), run_loop=True)
    threads = list(api.service._threads)
    api.http.__exit__(None, None, None)
    assert not any(t.is_alive() for t in threads)
