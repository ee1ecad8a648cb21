"""Job arrays (``"array": "0-109%8"``): one submission, stored in one transaction, whose tasks are jobs of
their own; the ``%N`` limit as an admission rule (placer and validator); how arrays count against the
queue's limits; cancelling an array, one task, or many jobs at once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from policies.snapshot import Proposal
from policies.validator import Violation, validate
from tests.builders import spec
from tests.cores import make_core
from tools.models import JobRequest, parse_array
from tools.store import MemoryStore, QueueFull, SqliteStore


# -- the array's text --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, indices, limit", [
    ("0-109%8", tuple(range(110)), 8), ("0-3", (0, 1, 2, 3), None), ("7", (7,), None),
    ("1,3,5-7", (1, 3, 5, 6, 7), None), ("0-15:4", (0, 4, 8, 12), None), ("3,1,1-2%1", (1, 2, 3), 1),
])
def test_arrays_are_read_as_slurm_writes_them(text, indices, limit):
    assert parse_array(text) == (indices, limit)


@pytest.mark.parametrize("text, message", [
    ("a-b", "'a-b' is not a range of task indices"), ("5-1", "'5-1' is an empty range"),
    ("0-1000", "an array has at most 1000 tasks"), ("0-3%0", "%0 is not a limit of tasks at once"),
    ("0-999999999", "'0-999999999' is not a range of task indices"), ("1,,2", "'' is not a range"),
    ("0-3%x", "%x is not a limit"),
])
def test_a_bad_array_is_refused_in_words(text, message):
    with pytest.raises(ValidationError, match=message):
        JobRequest(command="true", gpu_count=1, array=text)


# -- submission: one transaction, tasks that are jobs -------------------------------------------------
def test_an_array_is_one_submission_of_jobs_with_consecutive_ids(api):
    api.submit_ok(command="true")  # job 1
    answer = api.submit(command="python sweep.py", array="0-9%2", run_id="sweep")
    assert answer.status_code == 201
    assert answer.json() == {"job_id": 2, "status": "queued", "position": 2, "not_before": None, "array_id": 2,
                             "tasks": 10}
    tasks = api.http.get("/jobs", params={"array": 2}).json()["jobs"][::-1]
    assert [(t["id"], t["array_id"], t["array_index"], t["array_size"], t["array_limit"]) for t in tasks] == [
        (2 + i, 2, i, 10, 2) for i in range(10)]
    assert {t["name"] for t in tasks} == {"sweep"}
    events = api.http.get("/jobs/2/events").json()
    assert events[0]["message"].startswith("alice submitted array 2 of 10 tasks (jobs 2-11, 0-9%2) sweep")


def test_an_array_counts_once_against_the_queue_but_each_task_against_its_user(make_api, tmp_path):
    api = make_api(max_queue_size=2, max_queued_per_user=12)
    api.submit_ok(array="0-9")  # 10 tasks, one submission
    api.submit_ok()  # the second submission
    full = api.submit(user="bob")
    assert full.status_code == 429 and full.json()["detail"].startswith("the queue is full (2 jobs waiting)")

    api = make_api(max_queue_size=100, max_queued_per_user=12, workdir=tmp_path / "second")
    api.submit_ok(array="0-9")
    too_many = api.submit(array="0-2")
    assert too_many.status_code == 429
    assert too_many.json()["detail"] == ("user alice has 10 jobs waiting (each task of an array counted) and may have "
                                         "12; this submission adds 3; try again when some have started")
    assert api.submit(array="0-12", user="bob").json()["detail"] == (
        "an array of 13 tasks is more than one user may have waiting (12 jobs, each task counted); submit a smaller "
        "array")
    assert len(api.all_jobs()) == 10  # a refused array left nothing behind
    api.submit_ok(user="bob", array="0-11")  # another user's share is their own


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_the_store_adds_an_array_whole_or_not_at_all(store, tmp_path):
    s = MemoryStore() if store == "memory" else SqliteStore(tmp_path / "herd.db")
    from tests.builders import job as make_job
    tasks = [make_job(0, user="ana").model_copy(update={"array_index": i, "array_size": 3}) for i in range(3)]
    added = s.add_jobs(tasks, max_queued=5, max_queued_per_user=4)
    assert [(j.id, j.array_id, j.array_index) for j in added] == [(1, 1, 0), (2, 1, 1), (3, 1, 2)]
    with pytest.raises(QueueFull):
        s.add_jobs(tasks[:2], max_queued=5, max_queued_per_user=4)
    assert s.count_by_status()[added[0].status] == 3  # nothing of the refused array was written
    if store == "sqlite":  # the counts are rebuilt from the database on opening it again
        s.close()
        s = SqliteStore(tmp_path / "herd.db")
        with pytest.raises(QueueFull, match="user ana has 3 jobs waiting"):
            s.add_jobs(tasks[:2], max_queued=5, max_queued_per_user=4)
        assert s.add_jobs(tasks[:1], max_queued=2, max_queued_per_user=4)[0].id == 4  # the array counts once
        with pytest.raises(QueueFull, match="the queue is full"):
            s.add_jobs(tasks[:1], max_queued=2, max_queued_per_user=None)


def test_a_retried_array_submission_makes_no_second_array(api):
    first = api.http.post("/queue/submit", json={"user": "alice", "command": "true", "gpu_count": 1, "array": "0-4"},
                          headers={"Idempotency-Key": "k1"})
    again = api.http.post("/queue/submit", json={"user": "alice", "command": "true", "gpu_count": 1, "array": "0-4"},
                          headers={"Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and first.json()["tasks"] == 5
    assert len(api.all_jobs()) == 5


# -- the %N limit: an admission rule -----------------------------------------------------------------
def test_an_array_runs_at_most_its_limit_of_tasks_at_once(make_api):
    api = make_api(durations={i: 60 for i in range(1, 20)})
    api.submit_ok(array="0-5%2", command="python sweep.py")
    other = api.submit_ok()
    assert api.tick().started == (1, 2, other)  # 4 GPUs, but the array takes 2 of them
    waiting = api.job(3)
    assert (waiting["pending_reason"], waiting["pending_message"]) == (
        "JobArrayTaskLimit", "array 1 already runs 2 task(s) at once, the most its %2 allows")
    api.clock.advance(61)
    api.tick()
    api.tick()
    running = [j["id"] for j in api.all_jobs() if j["status"] == "running"]
    assert running == [3, 4]


def test_the_validator_refuses_a_task_over_its_arrays_limit():
    core = make_core(nodes={"n1": 4})
    first = core.orchestrator.submit(spec(array="0-3%1"))
    snapshot = core.orchestrator.snapshot()
    verdict = validate(snapshot, [Proposal(first.id, (("n1", 0),)), Proposal(first.id + 1, (("n1", 1),))])
    assert len(verdict.accepted) == 1
    (rejected,) = verdict.rejected
    assert rejected.codes == (Violation.ARRAY_TASK_LIMIT,)
    assert "array 1 already runs 1 task(s) at once" in rejected.explain()


def test_an_array_task_is_a_job_of_its_own_for_retries(make_api):
    api = make_api(durations={i: 5 for i in range(1, 10)}, codes={2: 1})
    api.submit_ok(array="0-2", max_retries=1)
    api.tick()
    api.clock.advance(6)
    api.tick()
    statuses = {j["id"]: (j["status"], j["attempts"]) for j in api.all_jobs()}
    assert statuses == {1: ("completed", 1), 2: ("queued", 1), 3: ("completed", 1)}


# -- cancelling many ---------------------------------------------------------------------------------
def test_cancel_a_whole_array_one_task_or_by_filters(make_api):
    api = make_api(durations={})
    api.submit_ok(array="0-4%1", run_id="sweep")  # jobs 1-5
    single = api.submit_ok(run_id="eval")  # job 6
    bobs = api.submit_ok(user="bob", run_id="sweep")  # job 7
    api.tick()  # task 0 and the others run
    one = api.http.post("/queue/cancel", json={"jobs": ["1_3"]}).json()
    assert one == {"cancelled": [4], "stopping": [], "refused": []}
    whole = api.http.post("/queue/cancel", json={"jobs": ["1", "99", "1_9", "6_1"]}).json()
    assert whole["cancelled"] == [2, 3, 5] and whole["stopping"] == [1]
    assert whole["refused"] == ["no job 99", "array 1 has no task 9", "job 6 is not an array"]
    by_name = api.http.post("/queue/cancel", json={"name": "sweep", "user": "bob"}).json()
    assert by_name["stopping"] == [bobs]
    assert api.http.post("/queue/cancel", json={"states": ["running"], "name": "eval"}).json()["stopping"] == [single]
    assert api.http.post("/queue/cancel", json={}).json()["detail"] == (
        "say which jobs to cancel: their ids, or a user, a name or states to match")
    assert api.http.post("/queue/cancel", json={"states": ["completed"]}).json()["detail"] == (
        "states: only active jobs can be cancelled, not completed ones")


def test_only_owners_cancel_and_filters_reach_only_their_own_jobs(make_api):
    from tools.door.context import Actor, ToolContext
    from tools.door.jobs import CancelJobs, cancel_jobs
    api = make_api()
    ana, bob = api.submit_ok(user="ana"), api.submit_ok(user="bob")
    ctx = ToolContext(api.service.core, Actor(user="ana"))
    done = cancel_jobs(ctx, CancelJobs(jobs=[str(ana), str(bob)]))
    assert done.cancelled == [ana] and done.refused == [f"job {bob} belongs to bob; ana may act only on their own jobs"]
    bob2 = api.submit_ok(user="bob")
    assert cancel_jobs(ctx, CancelJobs(states=["queued"])).cancelled == []  # filters: only ana's jobs
    with pytest.raises(PermissionError, match="ana may cancel only their own jobs, not bob's"):
        cancel_jobs(ctx, CancelJobs(user="bob"))
    assert api.job(bob2)["status"] == "queued"
