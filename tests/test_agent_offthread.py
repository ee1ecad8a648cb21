"""The scheduling agent off the scheduling thread: a pass waits for the model at most ``wait_s``, the
fallback goes on, late proposals are validated again when they arrive, and a breaker stops calling a
failing model for a growing backoff."""

import threading
import time

import pytest

from agent.llm import ModelError
from agent.scheduler import AgentPolicy, Breaker
from policies.snapshot import Decisions
from tools.models import JobStatus

from tests.cores import busy_cluster
from tests.scripted_model import ScriptedModel, propose_call, say


class Held:
    """A model that answers only when released (or never): a hung endpoint."""

    name = "held"

    def __init__(self, *replies):
        self.replies = list(replies)
        self.release = threading.Event()
        self.calls = 0

    def complete(self, messages, tools, timeout_s):
        self.calls += 1
        self.release.wait(30)
        return self.replies.pop(0) if self.replies else say("done")


class Idle:
    """A fallback that starts nothing, so that a late proposal can still hold."""

    name = "idle"

    def order(self, snapshot):
        return list(snapshot.queued)

    def decide(self, snapshot):
        return Decisions(starts=(), waiting={})


def agent_on(c, model, *, wait_s, fallback=None, breaker=None):
    policy = c.orch.policy
    c.orch.policy = AgentPolicy(model, fallback=fallback or policy.fallback, clock=c.clock, audit=c.audit,
                                bounds=policy.bounds, wait_s=wait_s, breaker=breaker)
    return c.orch.policy


def events(c, kind):
    return [e.message for e in c.store.events() if e.kind == kind]


def finish(policy):
    """Wait for the consultation under way to end (the model was released)."""
    current = policy._current
    assert current is not None and current.done.wait(10)


def test_a_hung_model_does_not_hold_up_the_pass():
    model = Held()
    c = busy_cluster(ScriptedModel())
    agent = agent_on(c, model, wait_s=0.05)
    t = time.monotonic()
    report = c.orch.tick()
    assert time.monotonic() - t < 1.0
    assert report.started == (2,) and model.calls == 1
    (note,) = events(c, "fallback")
    assert "the model has not answered yet" in note and "priority started job(s) 2" in note
    assert agent.status().consulting_for_s is not None
    # While it thinks, every pass goes on without waiting for it, and asks nothing more.
    c.submit(user="cy", gpus=1)
    t = time.monotonic()
    assert len(c.orch.tick().started) == 1
    assert time.monotonic() - t < 0.5 and model.calls == 1
    model.release.set()
    finish(agent)


def test_late_proposals_are_validated_again_and_applied_only_if_still_valid():
    # Still valid: nothing took the GPUs meanwhile.
    model = Held(propose_call(2, "b", 0, 1), say("done"))
    c = busy_cluster(ScriptedModel())
    agent = agent_on(c, model, wait_s=0.01, fallback=Idle())
    assert c.orch.tick().started == ()
    model.release.set()
    finish(agent)
    assert c.orch.tick().started == (2,)
    assert (c.job(2).allocation.node, c.job(2).allocation.gpus) == ("b", (0, 1))
    assert agent.status().proposals_applied == 1

    # Stale: the fallback started the job on other GPUs before the answer came.
    model = Held(propose_call(3, "b", 2), say("done"))
    c = busy_cluster(ScriptedModel())
    c.submit(user="cy", gpus=1)
    agent = agent_on(c, model, wait_s=0.01)
    assert set(c.orch.tick().started) == {2, 3}
    model.release.set()
    finish(agent)
    report = c.orch.tick()
    assert report.started == () and report.rejected == ()
    assert agent.status().proposals_stale == 1
    assert any("late proposal(s) no longer held" in m for m in events(c, "agent"))
    assert c.job(3).allocation.gpus != (2,) or c.job(3).allocation.node != "b"


def test_a_model_that_answers_within_the_wait_is_merged_in_the_same_pass():
    model = ScriptedModel(propose_call(2, "b", 0, 1), say("done"))
    c = busy_cluster(ScriptedModel())
    agent_on(c, model, wait_s=5.0)
    assert c.orch.tick().started == (2,)
    assert c.job(2).allocation.node == "b" and events(c, "fallback") == []


def test_the_breaker_opens_backs_off_and_closes_on_a_successful_probe():
    model = ScriptedModel(ModelError("HTTP 500"), ModelError("HTTP 500"), say("done"))
    c = busy_cluster(ScriptedModel())
    agent = agent_on(c, model, wait_s=None, breaker=Breaker(base_s=5, max_s=60))
    assert c.orch.tick().started == (2,)
    assert "agent stopped (model_error: HTTP 500)" in events(c, "fallback")[0]
    (opened,) = events(c, "agent_breaker")
    assert "open for 5 s after 1 failure(s)" in opened
    view = agent.status().breaker
    assert (view.state, view.failures, view.backoff_s, view.retry_in_s) == ("open", 1, 5, 5)

    # Open: a new job is scheduled by the fallback alone, and the model is not called.
    c.submit(user="cy", gpus=1)
    assert len(c.orch.tick().started) == 1 and len(model.sent) == 1
    assert "breaker is open (for 5 s more" in events(c, "fallback")[-1]

    # After the backoff, the first pass with something to ask is the probe; it fails: twice as long.
    c.clock.advance(5)
    c.submit(user="dee", gpus=1)
    c.orch.tick()
    assert len(model.sent) == 2
    assert agent.status().breaker.backoff_s == 10 and agent.status().breaker.state == "open"

    c.clock.advance(10)
    c.submit(user="eve", gpus=1)
    c.orch.tick()
    assert len(model.sent) == 3
    status = agent.status()
    assert (status.breaker.state, status.breaker.failures, status.consultations, status.answered, status.failed) == (
        "closed", 0, 3, 1, 2)
    assert "the breaker is closed" in events(c, "agent_breaker")[-1]
    assert status.fallbacks == len(events(c, "fallback")) and status.last_fallback.reason == events(c, "fallback")[-1]
    model.assert_done()


def test_the_backoff_stops_growing_at_its_maximum():
    breaker = Breaker(base_s=5, max_s=30)
    for _ in range(6):
        breaker.ended(False, 0.0, "boom")
    assert breaker.backoff_s == 30 and not breaker.allows(29.0) and breaker.allows(30.0)


def test_breaker_and_fallbacks_in_the_status_route(make_api):
    api = make_api(model=ScriptedModel(ModelError("the model endpoint answered HTTP 503: down")), agent_wait_s=5.0)
    assert api.http.put("/orchestrator/policy", json={"policy": "agent"}).status_code == 200
    job_id = api.submit_ok(gpu_count=2)
    assert api.tick().started == (job_id,)
    agent = api.http.get("/orchestrator/status").json()["agent"]
    assert agent["breaker"]["state"] == "open" and "HTTP 503" in agent["breaker"]["last_error"]
    assert agent["fallbacks"] == 1 and "agent stopped (model_error" in agent["last_fallback"]["reason"]
    assert api.http.put("/orchestrator/policy", json={"policy": "priority"}).status_code == 200
    assert api.http.get("/orchestrator/status").json()["agent"] is None


@pytest.mark.slow
def test_with_a_hung_model_jobs_start_at_once_pass_after_pass():
    """Ten passes, each with a new job, while the model hangs: none waits for it more than once."""
    model = Held()
    c = busy_cluster(ScriptedModel())
    agent_on(c, model, wait_s=0.2)
    waits = []
    for user in ["u%d" % i for i in range(3)]:
        c.submit(user=user, gpus=1)
        t = time.monotonic()
        c.orch.tick()
        waits.append(time.monotonic() - t)
    assert max(waits) < 0.5 and sorted(waits)[1] < 0.2  # only the pass that asked waited (0.2 s)
    assert all(j.status != JobStatus.QUEUED for j in c.store.list_jobs())
    model.release.set()


def test_random_hostile_proposals_never_double_book_a_gpu():
    import json
    import random

    from tests.scripted_model import calls

    rng = random.Random(17)

    def hostile(messages):
        proposals = [("propose_allocation", json.dumps({
            "job_id": rng.randint(-1, 12), "node": rng.choice(["a", "b", "c", ""]),
            "gpu_indices": [rng.randint(-1, 4) for _ in range(rng.randint(0, 5))], "reason": "x"}))
            for _ in range(rng.randint(1, 20))]
        return calls(*proposals)

    model = ScriptedModel(*([hostile] * 200))
    c = busy_cluster(ScriptedModel())
    agent = agent_on(c, model, wait_s=None, breaker=Breaker(base_s=1, max_s=1))
    for i in range(30):
        c.submit(user=f"u{i % 4}", gpus=rng.randint(1, 4))
        c.orch.tick()
        c.clock.advance(rng.choice([0, 60, 600]))
        held = {}
        for job in c.store.list_jobs():
            if job.allocation is not None and job.status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
                assert len(job.allocation.gpus) == job.gpu_count
                for gpu in job.allocation.gpus:
                    assert (job.allocation.node, gpu) not in held, f"GPU {job.allocation.node}:{gpu} held twice"
                    assert not (job.allocation.node == "b" and gpu == 3), "a drained GPU was given out"
                    held[(job.allocation.node, gpu)] = job.id
        for job in c.store.list_jobs():  # make room: the running jobs end
            if job.status == JobStatus.RUNNING and rng.random() < 0.5:
                c.orch.complete(job.id, 0)
    status = agent.status()
    assert status.consultations >= 10 and status.proposals_refused >= 50, status
