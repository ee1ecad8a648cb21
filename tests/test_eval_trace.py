"""Loading traces and estimating durations."""

import random

import pytest

from evals.trace import (
    NOISE_BANDS, TraceJob, estimates, load_trace, noise_factor, parse_rows, predicts, rebase, tenant_name,
)


def row(job_id, submit, duration=10, gpus=1, user="", vc="v1"):
    return {"job_id": job_id, "user": user, "submit_time_s": str(submit), "duration_s": str(duration),
            "num_gpus": str(gpus), "status": "", "vc": vc}


def test_rows_are_filtered_sorted_and_typed():
    rows = [row("b", 20), row("a", 20), row("cpu", 5, gpus=0), row("other", 1, vc="v2"), row("first", 10, user="ana")]
    jobs = parse_rows(rows, vc="v1")
    assert [j.job_id for j in jobs] == ["first", "a", "b"]
    assert jobs[0] == TraceJob("first", "ana", 10.0, 10.0, 1)
    assert jobs[1].tenant == "v1"  # no user: the vc is the tenant


def test_rebase_scales_gaps_from_the_first_job():
    jobs = parse_rows([row("a", 100), row("b", 110), row("c", 140)])
    assert [j.submit_s for j in rebase(jobs, time_scale=0.5)] == [0, 5, 20]
    assert [j.job_id for j in rebase(jobs, max_jobs=2)] == ["a", "b"]
    with pytest.raises(ValueError):
        rebase(jobs, time_scale=0)


def test_tenant_names_are_valid_user_names():
    assert tenant_name("", "11cb48") == "11cb48"
    assert tenant_name("ana maria/x", "") == "ana_maria_x"
    assert tenant_name("", "") == "unknown"


def test_load_trace_reads_the_schema(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("job_id,user,submit_time_s,duration_s,num_gpus,status,vc,gpu_milli\n"
                    "x,,7,30,2,Pass,v,1000\ny,,9,5,0,Running,v,500\n")
    assert load_trace(path) == [TraceJob("x", "v", 0.0, 30.0, 2)]


def test_oracle_and_none():
    jobs = [TraceJob("a", "t", 0, 30, 1), TraceJob("b", "t", 0, 5, 1)]
    assert estimates(jobs, "oracle") == [30, 5]
    assert estimates(jobs, "none") == [None, None]


def test_history_gives_none_and_the_core_predicts():
    jobs = [TraceJob("a", "t", 0, 30, 1)]
    assert estimates(jobs, "history") == [None]
    assert predicts("history") and predicts("noisy") and predicts("oracle") and not predicts("none")


def test_noisy_estimates_are_seeded():
    jobs = [TraceJob(str(i), "t", 0, 100 + i, 1) for i in range(50)]
    assert estimates(jobs, "noisy", seed=3) == estimates(jobs, "noisy", seed=3)
    assert estimates(jobs, "noisy", seed=3) != estimates(jobs, "noisy", seed=4)


def test_noise_follows_the_helios_bands():
    rng = random.Random(7)
    errors = [max(f, 1 / f) - 1 for f in (noise_factor(rng) for _ in range(20_000))]
    assert max(errors) <= 100.0  # nobody is off by more than 10000%
    for share, limit in NOISE_BANDS:
        within = sum(e <= limit for e in errors) / len(errors)
        assert within == pytest.approx(share, abs=0.015), (share, limit)
    over = sum(f > 1 for f in (noise_factor(rng) for _ in range(20_000))) / 20_000
    assert over == pytest.approx(0.5, abs=0.02)  # as many too long as too short
