"""Every failure of the model, its adapter or a tool ends inside the loop: typed, audited, with the
actions already taken in the reply; ``/chat`` answers 502/504 for the model's fault, never a 4xx, and
never a 500 for anything the model sent."""

import json
import sqlite3

import pytest

from agent.llm import ModelError, ModelReply, ModelTimeout, ToolCall, as_text, normalized
from agent.loop import Bounds, Stop, run_loop
from agent.model_tools import CHAT_TOOLS, chat_tools
from agent.scheduler import compact_snapshot
from tools.clock import SimClock
from tools.models import JobStatus

from tests.cores import SimCluster, busy_cluster
from tests.fake_openai import FakeOpenAI, completion
from tests.scripted_model import ScriptedModel, call, calls, say
from tests.test_agent_http import model_for

SUBMIT = dict(name=None, command="python ft.py", gpu_count=1, priority=None, est_duration_s=None, time_limit_s=None,
              cwd=None, env=None, max_retries=None)
DEEP = "[" * 100_000 + "]" * 100_000


def submit_call(**changes):
    return call("submit_job", **{**SUBMIT, **changes})


# -- the loop ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    TypeError("unsupported operand"),
    RecursionError("maximum recursion depth exceeded"),
    ValueError("Expecting value: line 1 column 1"),
    KeyError("choices"),
], ids=["type-error", "recursion", "value-error", "key-error"])
def test_an_adapter_that_raises_anything_is_a_model_error_and_the_job_it_queued_is_listed(bad):
    c = SimCluster()
    reply = c.chat(ScriptedModel(submit_call(), bad)).ask("1 GPU -- python ft.py", user="ana")
    assert reply.stop == "model_error" and reply.failure == "model"
    assert c.job(1).status == JobStatus.QUEUED
    assert "submit_job (job 1)" in reply.reply and reply.reply.startswith("I could not finish: the model adapter failed")
    (entry,) = c.audit.entries()
    assert entry.stop == "model_error" and entry.actions[0]["verdict"] == "ok"


@pytest.mark.parametrize("arguments, want", [
    (DEEP, "not valid JSON"),
    ('{"job_id": ' + DEEP + "}", "not valid JSON"),
    ("{not json", "not valid JSON"),
    ('{"job_id": 1e309}', "job_id"),
    ('{"job_id": NaN}', "job_id"),
    ("[1, 2]", ""),
], ids=["deep", "deep-inside", "garbage", "infinite", "nan", "a-list"])
def test_arguments_that_cannot_be_read_are_rejected_and_the_loop_goes_on(arguments, want):
    c = SimCluster()
    model = ScriptedModel(calls(("submit_job", json.dumps(SUBMIT)), ("get_job", arguments)), say("Queued job 1."))
    reply = c.chat(model).ask("1 GPU -- python ft.py", user="ana")
    assert reply.stop == "answered" and reply.reply == "Queued job 1."
    assert [a["verdict"] for a in reply.actions] == ["ok", "rejected"]
    assert want in reply.actions[1]["detail"]
    assert len(json.dumps(reply.actions, allow_nan=False)) < 10_000  # valid JSON, and the raw text cut short
    assert c.job(1).status == JobStatus.QUEUED
    assert c.audit.entries()[0].stop == "answered"


def test_arguments_as_an_object_are_read_as_json():
    reply = normalized(ModelReply(content=[{"type": "text", "text": "a"}, {"type": "image_url"}, "b"],
                                  tool_calls=(ToolCall("c1", "get_job", {"job_id": 1}),)))  # type: ignore[arg-type]
    assert reply.content == "ab" and reply.tool_calls[0].arguments == '{"job_id": 1}'
    with pytest.raises(ModelError):
        as_text(42)
    with pytest.raises(ModelError, match="not a reply"):
        normalized("done")


def test_a_tool_that_fails_stops_the_loop_as_a_tool_error_and_is_audited(monkeypatch):
    c = SimCluster()

    def broken(ctx, args):
        raise sqlite3.OperationalError("disk I/O error")

    tools = tuple(t if t.name != "cancel_job" else type(t)(t.name, t.args, broken) for t in CHAT_TOOLS)
    agent = c.chat(ScriptedModel(calls(("submit_job", json.dumps(SUBMIT)), ("cancel_job", '{"job_id": 1}'),
                                       ("get_job", '{"job_id": 1}'))))
    agent.tools = tools
    reply = agent.ask("queue it, then cancel it", user="ana")
    assert reply.stop == "tool_error" and reply.failure == "tool"
    assert isinstance(reply.exception, sqlite3.OperationalError)
    assert [a["verdict"] for a in reply.actions] == ["ok", "error", "rejected"]  # the third call was not run
    assert "disk I/O error" in reply.actions[1]["detail"] and "submit_job (job 1)" in reply.reply
    (entry,) = c.audit.entries()
    assert entry.stop == "tool_error" and len(entry.actions) == 3
    # Every tool call has its answer in the conversation, so a follow-up can go on from it.
    assert [m["role"] for m in entry.messages[-3:]] == ["tool", "tool", "tool"]


def test_the_loop_never_raises():
    class Exploding:
        name = "exploding"

        def complete(self, messages, tools, timeout_s):
            raise SystemError("boom")

    result = run_loop(Exploding(), [{"role": "user", "content": "hi"}], CHAT_TOOLS, None, bounds=Bounds(), clock=SimClock())
    assert result.stop == Stop.MODEL_ERROR and "SystemError: boom" in result.error


def test_the_audit_record_is_written_even_for_values_json_cannot_hold():
    c = SimCluster()
    c.chat(ScriptedModel(say("ok"))).ask("hi", user="ana")
    from agent.loop import LoopResult

    weird = LoopResult(reply=None, stop=Stop.ANSWERED, messages=[{"role": "user", "content": float("inf")},
                                                                 {"role": "x", "content": object()}])
    c.audit.record(time=0, kind="chat", model="m", result=weird, session_id="s", user="ana")
    entry = c.audit.entries(session_id="s")[0]
    assert entry.messages[0]["content"] is None and entry.messages[1]["content"].startswith("<object")


# -- caps ------------------------------------------------------------------------------------------
def test_one_message_queues_at_most_the_cap_and_others_can_still_submit(make_api):
    flood = calls(*[("submit_job", json.dumps({**SUBMIT, "name": f"j{i}"})) for i in range(99)])
    api = make_api(model=ScriptedModel(flood, say("done")), max_queue_size=20, chat_max_submissions=5,
                   agent_max_tool_calls=16)
    api.service.orchestrator.enabled = False  # everything waits
    response = api.http.post("/chat", json={"message": "queue 99 jobs -- python ft.py"})
    assert response.status_code == 200, response.text
    body = response.json()
    verdicts = [a["verdict"] for a in body["actions"]]
    assert verdicts.count("ok") == 5 and len(verdicts) == 99 and body["stop"] == "rejections"
    assert "one chat message queues at most 5 job(s)" in body["actions"][5]["detail"]
    assert "at most 16 tool calls" in body["actions"][16]["detail"]
    assert len(api.all_jobs()) == 5
    assert api.submit(user="bo").status_code == 201  # the queue is not full for the others
    # The cap is per message: the next one may queue again.
    api.service.model.steps[:] = [submit_call(), say("Queued.")]
    assert api.http.post("/chat", json={"message": "one more -- python ft.py"}).json()["actions"][0]["verdict"] == "ok"


def test_an_array_counts_each_of_its_tasks_against_the_cap(make_api):
    api = make_api(model=ScriptedModel(submit_call(array="0-99"), submit_call(array="0-3"), say("ok")),
                   chat_max_submissions=5)
    api.service.orchestrator.enabled = False
    body = api.http.post("/chat", json={"message": "an array of 100 -- python ft.py"}).json()
    assert [a["verdict"] for a in body["actions"]] == ["rejected", "ok"]
    assert "this would add 100" in body["actions"][0]["detail"]
    assert len(api.all_jobs()) == 4


def test_chat_submissions_count_against_the_user_s_queue_limit(make_api):
    api = make_api(model=ScriptedModel(submit_call(), say("No.")), max_queued_per_user=2)
    api.service.orchestrator.enabled = False
    user = api.service.identities.actor(peer_uid=None, authorization=None, loopback=True).user
    for _ in range(2):
        api.submit_ok(user=user)  # through REST
    response = api.http.post("/chat", json={"message": "1 GPU -- python ft.py"})
    assert response.status_code == 200, response.text  # the model's request was refused, not the caller's
    action = response.json()["actions"][0]
    assert action["verdict"] == "rejected" and "2" in action["detail"]
    assert len(api.all_jobs()) == 2


# -- /chat over HTTP, with the real client against a fake endpoint ---------------------------------------
def chat_api(make_api, *script, **settings):
    server = FakeOpenAI(*script).__enter__()
    api = make_api(model=model_for(server, timeout_s=0.5), **settings)
    return api, server


@pytest.mark.parametrize("body, want", [
    (b"<html>502 Bad Gateway</html>", "could not be read (JSONDecodeError"),
    (json.dumps({"id": "x"}).encode(), "not a chat completion"),
    (('{"id":"x","object":"chat.completion","created":0,"model":"f","choices":[{"index":0,"message":'
      '{"role":"assistant","content":' + DEEP + '},"finish_reason":"stop"}]}').encode(), "RecursionError"),
    (json.dumps(completion(None) | {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": {"text": "an object"}}}]}).encode(), "content of type dict"),
], ids=["not-json", "no-choices", "deep", "content-object"])
def test_a_model_that_sends_what_cannot_be_read_is_a_502_listing_what_was_done(make_api, body, want):
    submit = completion(tool_calls=[("submit_job", SUBMIT)])
    api, server = chat_api(make_api, submit, body)
    try:
        response = api.http.post("/chat", json={"message": "1 GPU -- python ft.py"})
    finally:
        server.__exit__(None, None, None)
    assert response.status_code == 502, response.text
    data = response.json()
    assert want in data["detail"] and "Done before" not in data["detail"]
    assert "submit_job (job 1)" in data["detail"] and data["actions"][0]["verdict"] == "ok"
    assert data["stop"] == "model_error" and api.job(1)["status"] == "queued"
    (turn,) = api.http.get("/agent/turns", params={"session_id": data["session_id"]}).json()
    assert turn["stop"] == "model_error" and turn["actions"][0]["tool"] == "submit_job"


def test_arguments_as_an_object_and_content_as_parts_work_over_http(make_api):
    as_object = completion(tool_calls=[("submit_job", SUBMIT)])
    as_object["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = SUBMIT  # an object, not text
    parts = completion(None)
    parts["choices"][0]["message"]["content"] = [{"type": "text", "text": "Queued "}, {"type": "text", "text": "job 1."}]
    api, server = chat_api(make_api, as_object, parts)
    try:
        response = api.http.post("/chat", json={"message": "1 GPU -- python ft.py"})
    finally:
        server.__exit__(None, None, None)
    assert response.status_code == 200, response.text
    assert response.json()["reply"] == "Queued job 1." and api.job(1)["command"] == "python ft.py"


@pytest.mark.slow
def test_a_model_that_does_not_answer_in_time_is_a_504(make_api):
    api, server = chat_api(make_api, ("sleep", 2.0))
    try:
        response = api.http.post("/chat", json={"message": "1 GPU -- python ft.py"})
    finally:
        server.__exit__(None, None, None)
    assert response.status_code == 504, response.text
    assert "did not answer in time" in response.json()["detail"] and "No action was carried out" in response.json()["detail"]


def test_an_infinite_number_from_the_model_is_refused_and_the_answer_is_json(make_api):
    api = make_api(model=ScriptedModel(call("submit_job", raw=json.dumps(SUBMIT).replace('"est_duration_s": null',
                                                                                         '"est_duration_s": 1e309')),
                                       say("no")))
    response = api.http.post("/chat", json={"message": "1 GPU -- python ft.py"})
    assert response.status_code == 200, response.text
    action = response.json()["actions"][0]
    assert action["verdict"] == "rejected" and action["arguments"]["est_duration_s"] == "1e309"


@pytest.mark.parametrize("exc, status", [
    (sqlite3.OperationalError("database is locked"), 503),
    (ZeroDivisionError("a bug"), 500),
], ids=["storage", "bug"])
def test_a_tool_failure_is_ours_and_says_what_was_done(make_api, monkeypatch, exc, status):
    from tools.door import jobs

    model = ScriptedModel(calls(("submit_job", json.dumps(SUBMIT)), ("explain_job", '{"job_id": 1}')))
    api = make_api(model=model)
    monkeypatch.setattr(jobs, "explain_job", lambda ctx, args: (_ for _ in ()).throw(exc))
    agent = api.service.chat()
    tools = tuple(t if t.name != "explain_job" else type(t)(t.name, t.args, jobs.explain_job) for t in chat_tools())
    monkeypatch.setattr(type(api.service), "chat", lambda self: (setattr(agent, "tools", tools), agent)[1])
    response = api.http.post("/chat", json={"message": "1 GPU -- python ft.py, then explain it"})
    assert response.status_code == status, response.text
    assert "submit_job (job 1)" in response.json()["detail"]


# -- the agent's snapshot ----------------------------------------------------------------------------
def test_the_agent_s_snapshot_never_raises_for_a_job_s_values():
    import dataclasses

    c = busy_cluster(ScriptedModel(say("done")))
    c.submit(user="cy", gpus=4)
    snapshot = c.orch.snapshot()
    bad = {"est_duration_s": float("inf"), "time_limit_s": 1e309, "submit_time": float("nan"),
           "not_before": float("inf")}
    jobs = tuple(j.model_copy(update=bad) if j.status == JobStatus.QUEUED else j for j in snapshot.jobs)
    broken = dataclasses.replace(snapshot, jobs=jobs)
    text = compact_snapshot(broken, [j for j in jobs if j.status == JobStatus.QUEUED])
    data = json.loads(text.split("\n", 1)[1], parse_constant=lambda name: pytest.fail(f"{name} in the prompt"))
    assert [j["est_duration_s"] for j in data["queued_jobs"]] == [None, None]
    assert data["queued_jobs"][0]["waiting_s"] is None


def test_model_errors_keep_their_kind():
    assert issubclass(ModelTimeout, ModelError)


def test_a_hostile_model_gets_nothing_invalid_through_and_never_a_500_or_a_4xx(make_api):
    """The adversarial run of issue 17 in small: random hostile tool calls, then an answer or a failure."""
    import random

    from tools.models import JobSpec

    rng = random.Random(17)
    api = make_api(model=ScriptedModel(), chat_max_submissions=3)
    bo = api.service.orchestrator.submit(JobSpec(user="bo", command="python bo.py", gpu_count=1, priority=3))
    names = ["submit_job", "cancel_job", "set_priority", "get_job", "explain_job", "list_queue", "get_quotas",
             "propose_allocation", "reserve_gpus", "", "x" * 500]
    arguments = [
        json.dumps({"job_id": bo.id}), json.dumps({"job_id": bo.id, "priority": 10}), json.dumps(SUBMIT),
        json.dumps({**SUBMIT, "gpu_count": 99}), json.dumps({**SUBMIT, "gpu_count": 0}),
        json.dumps({**SUBMIT, "user": "bo"}), json.dumps({**SUBMIT, "array": "0-9999"}), '{"job_id": 1e309}',
        '{"job_id": 9223372036854775808}', '{"priority": true, "job_id": 1}', DEEP[:20_000] + DEEP[-20_000:], "null",
        "[]", '"text"', "{", json.dumps({"user": None}), json.dumps({**SUBMIT, "est_duration_s": -1}),
    ]
    endings = [say("done"), ModelError("HTTP 500"), ModelTimeout("late"), TypeError("bug in the adapter"),
               ModelReply(content=None)]
    statuses = set()
    for i in range(40):
        steps = [calls(*[(rng.choice(names), rng.choice(arguments)) for _ in range(rng.randint(1, 20))])
                 for _ in range(rng.randint(1, 3))]
        api.service.model.steps[:] = steps + [rng.choice(endings)]
        response = api.http.post("/chat", json={"message": f"request {i}"})
        assert response.status_code in (200, 502, 504), response.text
        statuses.add(response.status_code)
        body = response.json()
        assert body["session_id"] and isinstance(body["actions"], list)
    assert 200 in statuses and statuses <= {200, 502, 504}
    after = api.service.queue.get(bo.id)
    assert (after.status, after.priority) == (bo.status, bo.priority)  # bo's job: untouched
    mine = api.all_jobs()
    assert all(j["user"] != "bo" or j["id"] == bo.id for j in mine)
    assert all(1 <= j["gpu_count"] <= 4 for j in mine)
    assert len(mine) - 1 <= 3 * 40  # at most the cap per message
    assert len(api.http.get("/agent/turns", params={"kind": "chat", "limit": 500}).json()) == 40  # every one audited
