"""Run-time estimates from history: the predictor (quantile, fallbacks, time-limit cap), the history it
reads (keys, batches, bounds), the queue that records them, and replays that learn without peeking."""

import pytest

from evals.replay import Cluster, replay
from evals.trace import TraceJob
from policies.estimates import DEFAULT_PREDICTOR, Predictor, quantile
from tools.history import RunHistory, keys_of, task_key
from tools.models import Allocation, EstimateSource, Job, JobSpec, JobStatus
from tools.queue import JobQueue
from tools.store import MemoryStore

H, U, D = EstimateSource.HISTORY, EstimateSource.USER, EstimateSource.DEFAULT
ALLOC = Allocation(node="n", gpus=(0,))


def spec(user="ana", name="train", command="python train.py", gpus=1, **kw) -> JobSpec:
    return JobSpec(user=user, name=name, command=command, gpu_count=gpus, **kw)


def history_of(*runs, window=64, max_keys=20_000) -> RunHistory:
    """``runs``: (user, name, gpus, seconds), each on its own (no batch)."""
    history = RunHistory(window=window, max_keys=max_keys)
    for user, name, gpus, seconds in runs:
        history.record(user, name, "cmd", gpus, seconds)
    return history


# -- the predictor ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, q, want", [
    ((10.0,), 0.7, 10.0),
    ((10.0, 20.0, 30.0, 40.0, 50.0), 0.0, 10.0),
    ((10.0, 20.0, 30.0, 40.0, 50.0), 0.5, 30.0),
    ((10.0, 20.0, 30.0, 40.0, 50.0), 0.7, 38.0),  # rank 2.8: 30 + 0.8 * 10
    ((10.0, 20.0, 30.0, 40.0, 50.0), 1.0, 50.0),
    ((100.0, 200.0), 0.7, 170.0),
])
def test_quantile_interpolates_between_ranks(values, q, want):
    assert quantile(values, q) == pytest.approx(want)


# (what the history holds, the job asked about, the estimate wanted): the most specific key with at
# least three runs wins; an estimate is the 0.7 quantile of its runs.
THREE = (100.0, 200.0, 300.0)  # 0.7 quantile: 240
FALLBACKS = [
    pytest.param([("ana", "train", 1, t) for t in THREE] + [("ana", "other", 1, 9000.0)] * 3,
                 spec(), 240.0, id="same task, same GPUs"),
    pytest.param([("ana", "train", 4, t) for t in THREE] + [("ana", "other", 1, 9000.0)] * 3,
                 spec(), 240.0, id="same task, other GPU counts"),
    pytest.param([("ana", "train", 1, 5.0)] * 2 + [("ana", "train", 4, 7.0)] * 2 + [("ana", "other", 1, t) for t in THREE],
                 spec(), 7.0, id="two runs of the task per size, four in all: the task's"),
    pytest.param([("ana", "other", 1, t) for t in THREE] + [("bo", "x", 1, 9000.0)] * 3,
                 spec(), 240.0, id="the user's jobs of that size"),
    pytest.param([("ana", "other", 2, t) for t in THREE] + [("bo", "x", 1, 9000.0)] * 3,
                 spec(), 240.0, id="the user's jobs of any size"),
    pytest.param([("bo", "x", 1, t) for t in THREE] + [("cy", "y", 2, 9000.0)] * 3,
                 spec(), 240.0, id="the lab's jobs of that size"),
    pytest.param([("bo", "x", 2, t) for t in THREE],
                 spec(), 240.0, id="the lab's jobs"),
    pytest.param([("bo", "x", 2, 100.0), ("bo", "x", 2, 200.0)],
                 spec(), None, id="too few runs anywhere: the default"),
    pytest.param([], spec(), None, id="no history: the default"),
]


@pytest.mark.parametrize("runs, job, want", FALLBACKS)
def test_the_most_specific_key_with_enough_runs_decides(runs, job, want):
    estimate = DEFAULT_PREDICTOR(job, history_of(*runs))
    assert estimate.seconds == (pytest.approx(want) if want is not None else None)
    assert estimate.source == (H if want is not None else D)


@pytest.mark.parametrize("limit, want", [(None, 240.0), (1000.0, 240.0), (150.0, 150.0), (0.5, 1.0)])
def test_never_longer_than_the_time_limit_nor_under_a_second(limit, want):
    history = history_of(*[("ana", "train", 1, t) for t in THREE])
    assert DEFAULT_PREDICTOR(spec(time_limit_s=limit), history).seconds == pytest.approx(want)


def test_the_quantile_and_the_samples_needed_are_the_predictors():
    history = history_of(*[("ana", "train", 1, t) for t in (100.0, 200.0, 300.0, 400.0, 500.0)])
    assert Predictor(quantile=0.5)(spec(), history).seconds == 300.0
    assert Predictor(quantile=0.9)(spec(), history).seconds == pytest.approx(460.0)
    assert Predictor(min_samples=6)(spec(), history).seconds is None
    with pytest.raises(ValueError):
        Predictor(quantile=1.5)


def test_a_batch_with_one_finished_job_beats_every_other_key():
    history = history_of(*[("ana", "train", 1, 50.0)] * 10)
    batch = history.batch_for("ana", "sweep", "cmd", 1, now=0.0)
    assert DEFAULT_PREDICTOR(spec(name="sweep"), history, batch).seconds == 50.0  # nothing of it finished yet
    history.join(1, batch)
    history.record("ana", "sweep", "cmd", 1, 5000.0, batch)
    assert DEFAULT_PREDICTOR(spec(name="sweep"), history, batch).seconds == 5000.0


# -- the history -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b, same", [
    (("exp3", "x"), ("exp4", "y"), True),  # numbers in a name are blurred
    ((None, "python train.py --lr 3e-4"), (None, "python train.py  --lr 1e-3"), True),  # and in a command
    ((None, "python train.py"), (None, "python eval.py"), False),
    (("exp", "python a.py"), ("exp", "python b.py"), True),  # the name wins over the command
    (("", "python a.py"), (None, "python a.py"), True),  # an empty name is no name
])
def test_what_makes_a_task(a, b, same):
    assert (task_key(*a) == task_key(*b)) == same


def test_keys_go_from_the_task_to_the_lab():
    task = task_key("exp1", "x")
    assert keys_of("ana", "exp1", "x", 2) == (("task", "ana", task, 2), ("task", "ana", task), ("user", "ana", 2),
                                               ("user", "ana"), ("lab", 2), ("lab",))


def test_each_key_keeps_its_last_runs_and_the_keys_are_bounded():
    history = history_of(*[("ana", "a", 1, float(t)) for t in range(10)], window=4)
    assert history.runs(("task", "ana", "a", 1)) == (6.0, 7.0, 8.0, 9.0)
    assert history.runs(("user", "zed")) == ()
    bounded = history_of(*[(f"u{i}", "a", 1, 1.0) for i in range(50)], max_keys=10)
    assert len(bounded) == 10
    assert bounded.runs(("lab",)) and bounded.runs(("user", "u49")) and not bounded.runs(("user", "u0"))


def test_a_batch_adds_its_1st_2nd_4th_8th_runs_to_the_general_keys():
    history = RunHistory()
    batch = history.batch_for("ana", "sweep", "cmd", 1, now=0.0)
    for job_id in range(1, 11):
        history.join(job_id, batch)
    milestones = [history.record("ana", "sweep", "cmd", 1, float(n), batch) for n in range(1, 11)]
    assert milestones == [True, True, False, True, False, False, False, True, False, False]
    assert history.runs(batch.key) == tuple(float(n) for n in range(1, 11))
    assert history.runs(("user", "ana")) == (1.0, 2.0, 4.0, 8.0)


def test_jobs_queued_close_together_form_a_batch():
    history = RunHistory(batch_gap_s=60.0)
    first = history.batch_for("ana", "sweep1", "cmd", 1, now=0.0)
    assert history.batch_for("ana", "sweep2", "cmd", 1, now=50.0) is first  # same task, 50 s later
    assert history.batch_for("ana", "sweep3", "cmd", 1, now=100.0) is first  # 50 s after the last one
    assert history.batch_for("ana", "sweep", "cmd", 2, now=100.0) is not first  # other GPU count
    assert history.batch_for("bo", "sweep", "cmd", 1, now=100.0) is not first  # other user
    assert history.batch_for("ana", "sweep4", "cmd", 1, now=200.0) is not first  # 100 s after the last one


def test_a_job_leaves_its_batch_when_it_ends():
    history = RunHistory()
    batch = history.batch_for("ana", "a", "cmd", 1, now=0.0)
    history.join(7, batch)
    assert history.batch_of(7) is batch and list(batch.members) == [7]
    history.leave(7)
    assert history.batch_of(7) is None and not batch.members


# -- the queue records them ------------------------------------------------------------------------------


def complete(queue: JobQueue, job: Job, start: float, end: float) -> Job:
    job = queue.transition(job, JobStatus.SCHEDULED, now=start, allocation=ALLOC)
    job = queue.transition(job, JobStatus.RUNNING, now=start)
    return queue.finish(job, 0, now=end)


def make_queue(predictor=DEFAULT_PREDICTOR) -> JobQueue:
    return JobQueue(MemoryStore(), max_queued=100, estimator=predictor)


def test_a_job_records_where_its_estimate_came_from():
    queue = make_queue()
    assert queue.submit(spec(), now=0.0).est_source == D  # nothing known yet
    given = queue.submit(spec(est_duration_s=42.0), now=0.0)
    assert (given.est_duration_s, given.est_source) == (42.0, U)
    for i, run in enumerate(THREE):
        job = queue.submit(spec(name=f"t{i}", command=f"c{i}", user=f"u{i}"), now=1000.0 * i)
        complete(queue, job, 1000.0 * i, 1000.0 * i + run)
    guessed = queue.submit(spec(user="new"), now=5000.0)
    assert (guessed.est_duration_s, guessed.est_source) == (pytest.approx(240.0), H)  # the lab's runs
    assert queue.get(guessed.id).est_source == H


def test_without_a_predictor_a_job_keeps_no_estimate():
    queue = make_queue(predictor=None)
    done = queue.submit(spec(), now=0.0)
    complete(queue, done, 0.0, 10.0)
    job = queue.submit(spec(), now=100.0)
    assert (job.est_duration_s, job.est_source) == (None, D)
    assert len(queue.history.runs(("lab",))) == 1  # the history is kept all the same


def test_only_runs_that_ended_by_themselves_are_learnt():
    queue = make_queue()
    job = complete(queue, queue.submit(spec(), now=0.0), 0.0, 10.0)
    assert job.status == JobStatus.COMPLETED and queue.history.runs(("lab",)) == (10.0,)
    failed = queue.submit(spec(max_retries=0), now=100.0)
    failed = queue.transition(failed, JobStatus.SCHEDULED, now=100.0, allocation=ALLOC)
    failed = queue.transition(failed, JobStatus.RUNNING, now=100.0)
    assert queue.finish(failed, 1, now=105.0).status == JobStatus.FAILED
    assert queue.history.runs(("lab",)) == (10.0,)


def test_a_batch_s_waiting_jobs_are_re_estimated_as_it_finishes():
    queue = make_queue()
    for i in range(3):  # ana's history: short runs
        job = queue.submit(spec(name="quick"), now=10_000.0 * i)
        complete(queue, job, 10_000.0 * i, 10_000.0 * i + 60.0)
    sweep = [queue.submit(spec(name=f"sweep-{k}"), now=100_000.0 + k) for k in range(6)]
    own = queue.submit(spec(name="sweep-9", est_duration_s=5.0), now=100_006.0)
    assert all(j.est_duration_s == pytest.approx(60.0) and j.est_source == H for j in sweep)  # like ana's others
    complete(queue, sweep[0], 100_010.0, 100_010.0 + 7200.0)  # the sweep's first job runs 2 h
    after = [queue.get(j.id) for j in sweep[1:]]
    assert all(j.est_duration_s == pytest.approx(7200.0) and j.est_source == H for j in after)
    assert queue.get(own.id).est_duration_s == 5.0  # a user's own estimate is never replaced
    # The 3rd finished job is no milestone (1, 2, 4, 8, ...): the waiting ones keep the estimate of the 2nd.
    complete(queue, after[0], 110_000.0, 110_000.0 + 3600.0)  # 2nd: 2 h and 1 h
    second = queue.get(after[1].id).est_duration_s
    assert second == pytest.approx(quantile((3600.0, 7200.0), 0.7))
    complete(queue, queue.get(after[1].id), 120_000.0, 120_000.0 + 100.0)  # 3rd
    assert queue.get(after[2].id).est_duration_s == pytest.approx(second)
    cancelled = queue.transition(queue.get(after[2].id), JobStatus.CANCELLED, now=130_000.0)
    assert queue.history.batch_of(cancelled.id) is None


def test_the_history_survives_a_restart():
    store = MemoryStore()
    queue = JobQueue(store, max_queued=100, estimator=DEFAULT_PREDICTOR)
    for i, run in enumerate(THREE):
        complete(queue, queue.submit(spec(), now=1000.0 * i), 1000.0 * i, 1000.0 * i + run)
    again = JobQueue(store, max_queued=100, estimator=DEFAULT_PREDICTOR)
    assert again.history.runs(("task", "ana", task_key("train", ""), 1)) == THREE
    assert again.submit(spec(), now=10_000.0).est_duration_s == pytest.approx(240.0)


# -- replays learn online ---------------------------------------------------------------------------------


def test_a_replay_estimates_from_jobs_that_finished_before_no_peeking():
    # ana's jobs two minutes apart (each a batch of its own), and two more of other tasks. Each job's
    # estimate may only use runs that had ended when it was queued.
    jobs = [TraceJob(f"j{i}", "ana", 120.0 * i, 30.0 * (i + 1), 1) for i in range(4)]  # end 30, 180, 330, 480
    jobs.append(TraceJob("late", "ana", 200.0, 10_000.0, 1))  # queued when j0 and j1 had ended
    jobs.append(TraceJob("last", "ana", 20_000.0, 5.0, 1))
    jobs.sort(key=lambda j: j.submit_s)  # a trace is in submission order, and so are the store's ids
    r = replay(jobs, policy="fcfs", cluster=Cluster(1, 8), predictor=Predictor(min_samples=2))
    got = {job_id: (e.source, e.estimate) for job_id, e in zip([j.job_id for j in jobs], r.estimated)}
    assert got["j0"] == ("default", None)  # nothing had finished
    assert got["j1"] == ("default", None)  # j0 ends at 30, j1 was queued at 120: one run, two needed
    assert got["j2"][0] == "history" and got["j2"][1] == pytest.approx(quantile((30.0, 60.0), 0.7))
    assert got["late"][1] == pytest.approx(quantile((30.0, 60.0), 0.7))  # not its own 10,000 s nor later runs
    assert got["last"] == ("history", pytest.approx(quantile((30.0, 60.0, 90.0, 120.0, 10_000.0), 0.7)))  # all ended


def test_a_replay_without_a_predictor_gives_no_estimates():
    jobs = [TraceJob(f"j{i}", "ana", 600.0 * i, 10.0, 1) for i in range(5)]
    r = replay(jobs, policy="sjf", cluster=Cluster(1, 8), predictor=None)
    assert {(e.source, e.estimate) for e in r.estimated} == {("default", None)}
