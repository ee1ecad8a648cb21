"""Chat, the agent policy and the audit log through the REST app."""

from tests.scripted_model import ScriptedModel, call, propose_call, say


def test_without_a_model_chat_is_503_and_nothing_else_breaks(make_api):
    api = make_api()
    response = api.http.post("/chat", json={"message": "2 GPUs please", "user": "alice"})
    assert response.status_code == 503
    assert "OPENAI_BASE_URL" in response.json()["detail"]
    response = api.http.put("/orchestrator/policy", json={"policy": "agent"})
    assert response.status_code == 503
    assert api.http.get("/orchestrator/status").json()["policy"] == "multifactor"
    assert api.submit().status_code == 201


def test_chat_submits_for_the_user_and_is_audited(make_api):
    model = ScriptedModel(
        call("submit_job", name="ft", command="python ft.py", gpu_count=2, priority=8, est_duration_s=10800,
             time_limit_s=None, cwd=None, env=None, max_retries=None),
        say("Queued job 1."),
    )
    api = make_api(model=model)
    response = api.http.post("/chat", json={"message": "2 GPUs for 3h, urgent -- python ft.py", "user": "ana"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "Queued job 1." and body["stop"] == "answered"
    assert body["actions"][0]["tool"] == "submit_job" and body["actions"][0]["verdict"] == "ok"
    job = api.job(1)
    assert (job["user"], job["gpu_count"], job["priority"], job["est_duration_s"]) == ("ana", 2, 8, 10800)
    turns = api.http.get("/agent/turns", params={"session_id": body["session_id"], "messages": True}).json()
    assert len(turns) == 1 and turns[0]["user"] == "ana" and turns[0]["prompt_tokens"] == 220
    assert turns[0]["messages"][0]["role"] == "system"


def test_the_agent_policy_proposes_and_is_audited(make_api):
    model = ScriptedModel(propose_call(1, "local", 0, 1), say("done"))
    api = make_api(model=model, agent_wait_s=5.0)  # a scripted model answers within the pass's wait
    assert api.http.put("/orchestrator/policy", json={"policy": "agent"}).status_code == 200
    job_id = api.submit_ok(gpu_count=2)
    assert api.tick().started == (job_id,)
    assert api.job(job_id)["allocation"]["gpus"] == [0, 1]
    (turn,) = api.http.get("/agent/turns", params={"kind": "schedule"}).json()
    assert turn["actions"][0]["verdict"] == "ok" and turn["stop"] == "answered"
