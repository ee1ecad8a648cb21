"""The real ``openai`` client against a fake OpenAI-compatible server on loopback."""

import pytest

from agent.llm import ModelError, ModelSettings, OpenAIModel
from agent.loop import Bounds
from tools.models import JobStatus
from tools.clock import RealClock

from tests.fake_openai import FakeOpenAI, completion
from tests.cores import SimCluster, busy_cluster


def model_for(server, timeout_s=5.0):
    return OpenAIModel(ModelSettings(model="fake-model", base_url=server.base_url, api_key="k", timeout_s=timeout_s))


def test_chat_through_real_http_submits_a_job():
    submit = {"name": "ft", "command": "python ft.py", "gpu_count": 2, "priority": None, "est_duration_s": 3600,
              "time_limit_s": None, "cwd": None, "env": None, "max_retries": None}
    with FakeOpenAI(completion(tool_calls=[("submit_job", submit)]), completion("Queued job 1.")) as server:
        c = SimCluster()
        reply = c.chat(model_for(server)).ask("2 GPUs for an hour -- python ft.py", user="ana")
    assert reply.reply == "Queued job 1."
    job = c.job(1)
    assert (job.user, job.gpu_count, job.est_duration_s, job.status) == ("ana", 2, 3600.0, JobStatus.QUEUED)
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "fake-model"
    assert [t["function"]["name"] for t in first["body"]["tools"]][:3] == ["get_cluster_state", "list_queue", "get_job"]
    # The tool result went back to the model in the second request.
    assert server.requests[1]["body"]["messages"][-1]["role"] == "tool"
    assert c.audit.entries()[0].prompt_tokens == 100


@pytest.mark.slow
@pytest.mark.parametrize("script, want", [
    ((500,), "HTTP 500"),
    ((("sleep", 2.0),), "did not answer"),
], ids=["http-500", "timeout"])
def test_endpoint_failures_are_model_errors_and_scheduling_falls_back(script, want):
    with FakeOpenAI(*script) as server:
        model = model_for(server, timeout_s=0.5)
        with pytest.raises(ModelError, match=want):
            model.complete([{"role": "user", "content": "hi"}], [], timeout_s=0.5)
    with FakeOpenAI(*script) as server:
        c = busy_cluster(model_for(server, timeout_s=0.5))
        c.orch.policy.clock = RealClock()
        c.orch.policy.bounds = Bounds(budget_s=5)
        assert c.orch.tick().started == (2,)
        assert "agent stopped (model_error" in c.fallback_events()[0]


def test_an_unreachable_endpoint_is_a_model_error():
    with FakeOpenAI() as server:
        url = server.base_url
    model = OpenAIModel(ModelSettings(model="m", base_url=url, timeout_s=1.0))
    with pytest.raises(ModelError):
        model.complete([{"role": "user", "content": "hi"}], [], timeout_s=1.0)
