"""A backfill plan worked out only when it is needed decides exactly as one made at once, and a job
refused around the plans because a smaller one was decides as one tried on the GPUs: the same starts,
the same reasons, the same planned starts, however many jobs started before or after the plan."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.ordering import get_policy
from policies.placement import Placer
from policies.rules import Rules
from tools.models import JobStatus

from tests.builders import job, node, snap

NODES = (node("n1", 4), node("n2", 4), node("n3", 8, drained=(7,)))
USERS = ("ann", "bob", "cy")
running_job = st.tuples(
    st.sampled_from([(name, n) for name, n in (("n1", 4), ("n2", 4), ("n3", 7))]),
    st.integers(1, 4),  # GPUs
    st.sampled_from((None, 600.0, 3600.0, 7200.0)),  # estimate
    st.floats(0.0, 9000.0),  # start: some have run past their estimate
)
waiting_job = st.tuples(
    st.sampled_from((1, 1, 2, 3, 4, 6, 8)),
    st.sampled_from((None, 300.0, 1800.0, 5400.0, 20_000.0)),
    st.sampled_from(USERS),
    st.integers(0, 5000),  # submit
)


def build(running, waiting, now):
    jobs, free = [], {name: list(range(n)) for name, n in (("n1", 4), ("n2", 4), ("n3", 7))}
    for i, ((name, _), gpus, est, start) in enumerate(running, start=100):
        taken, free[name] = free[name][:gpus], free[name][gpus:]
        if taken:
            jobs.append(job(i, gpus=len(taken), status=JobStatus.RUNNING, on=(name, tuple(taken)), est=est,
                            start=min(start, now), user=USERS[i % 3]))
    for i, (gpus, est, user, submit) in enumerate(waiting, start=1):
        jobs.append(job(i, gpus=gpus, est=est, user=user, submit=float(submit)))
    return jobs


def decide(policy, snapshot, *, defer: bool, monkeypatch, remember: bool = True):
    with monkeypatch.context() as m:
        if not defer:
            m.setattr(Placer, "_surely_fits_later", lambda self, job: False)
        if not remember:
            m.setattr(Placer, "_refused_behind", lambda self, before, count: False)
        d = get_policy(policy).decide(snapshot)
        return d.starts, dict(d.waiting.examined), dict(d.planned), d.preemptions


@settings(max_examples=120, deadline=None)
@given(st.lists(running_job, max_size=8), st.lists(waiting_job, min_size=1, max_size=12),
       st.sampled_from(("backfill", "multifactor", "fair_share")), st.sampled_from((1, 2)), st.booleans())
def test_a_deferred_plan_decides_as_one_made_at_once(running, waiting, policy, plans, multi_node):
    # With ``multi_node``, jobs of 8 GPUs take n1 and n2 whole (n3 has a drained GPU).
    with pytest.MonkeyPatch.context() as monkeypatch:
        s = snap(*build(running, waiting, 9000.0), nodes=NODES, now=9000.0, rules=Rules(backfill_plans=plans),
                 multi_node=multi_node)
        assert decide(policy, s, defer=True, monkeypatch=monkeypatch) == decide(
            policy, s, defer=False, monkeypatch=monkeypatch, remember=False)


def test_a_plan_no_later_job_needs_is_made_only_when_its_start_is_read(monkeypatch):
    made = []
    timeline = Placer._settle

    def settle(self):
        made.append(self._unmade is not None)
        timeline(self)

    monkeypatch.setattr(Placer, "_settle", settle)
    # n1 is full; the 4-GPU job must wait, and nothing else could start.
    s = snap(job(9, gpus=4, status=JobStatus.RUNNING, on=("n1", (0, 1, 2, 3)), est=3600.0, start=0.0),
             job(1, gpus=4, est=600.0), job(2, gpus=2, est=60.0, submit=1.0), nodes=(node("n1", 4),), now=100.0)
    d = get_policy("backfill").decide(s)
    assert not any(made) and not d.starts
    assert "first in line, GPUs are held back for it" in d.waiting[1].message
    assert d.planned == {1: 3600.0} and any(made)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.sampled_from((600.0, 3600.0, 7200.0)), st.sampled_from((1800.0, 9000.0)),
       st.lists(waiting_job, min_size=2, max_size=16), st.sampled_from(("backfill", "multifactor", "fair_share")),
       st.sampled_from((1, 2)))
def test_jobs_kept_out_by_the_plans_are_refused_alike(busy, n1_est, n2_est, waiting, policy, plans):
    # n2 is full, n1 has 4 - busy GPUs free; a 4-GPU job first in line is planned on n1 (closing its
    # free GPUs) and, with two plans, the next 4-GPU job on n2: later jobs run into one plan or both.
    jobs = [job(100, gpus=busy, status=JobStatus.RUNNING, on=("n1", tuple(range(busy))), est=n1_est, start=0.0),
            job(101, gpus=4, status=JobStatus.RUNNING, on=("n2", (0, 1, 2, 3)), est=n2_est, start=0.0),
            job(1, gpus=4, est=3600.0, user="ann")]
    jobs += [job(i, gpus=min(gpus, 4), est=est, user=user, submit=float(submit))
             for i, (gpus, est, user, submit) in enumerate(waiting, start=2)]
    s = snap(*jobs, nodes=(node("n1", 4), node("n2", 4)), now=100.0, rules=Rules(backfill_plans=plans))
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert decide(policy, s, defer=True, monkeypatch=monkeypatch) == decide(
            policy, s, defer=False, monkeypatch=monkeypatch, remember=False)
