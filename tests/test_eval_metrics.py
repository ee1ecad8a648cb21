"""Metric helpers and lower bounds, against numbers worked out by hand."""

import pytest

from evals.metrics import (
    Estimated, Finished, bounded_slowdown, estimate_accuracy, jain, lower_bounds, max_min_shares, percentile,
    relative_error, share_by_tenant, share_fairness, srpt_completions, summarize,
)


@pytest.mark.parametrize(
    "values, q, want",
    [
        pytest.param([1, 2, 3, 4], 50, 2.5, id="median-between-ranks"),
        pytest.param([4, 1, 3, 2], 0, 1, id="p0-is-min"),
        pytest.param([4, 1, 3, 2], 100, 4, id="p100-is-max"),
        pytest.param([0, 9, 15, 16], 95, 15.85, id="p95-interpolates"),
        pytest.param([7], 99, 7, id="one-value"),
        pytest.param([], 50, 0, id="empty"),
    ],
)
def test_percentile(values, q, want):
    assert percentile(values, q) == pytest.approx(want)


@pytest.mark.parametrize(
    "wait, run, want",
    [
        pytest.param(0, 5, 1.0, id="short-job-no-wait-is-1"),
        pytest.param(90, 10, 10.0, id="waited-nine-runs"),
        pytest.param(10, 100, 1.1, id="long-job"),
        pytest.param(5, 2, 1.0, id="tiny-job-bounded-by-tau"),
        pytest.param(20, 2, 2.2, id="tiny-job-that-waited"),
    ],
)
def test_bounded_slowdown(wait, run, want):
    assert bounded_slowdown(wait, run) == pytest.approx(want)


@pytest.mark.parametrize(
    "xs, want",
    [
        pytest.param([2, 2, 2], 1.0, id="equal"),
        pytest.param([1, 0, 0, 0], 0.25, id="one-has-all"),
        pytest.param([1, 2, 3], 36 / 42, id="mixed"),
        pytest.param([], 1.0, id="nobody"),
    ],
)
def test_jain(xs, want):
    assert jain(xs) == pytest.approx(want)


def test_srpt_runs_the_shortest_remaining_job():
    assert srpt_completions([(0, 10), (0, 2)], 1.0) == [2, 12]
    assert srpt_completions([(0, 10), (1, 2)], 1.0) == [3, 12]  # preempts the long job at t=1
    assert srpt_completions([(0, 8), (100, 4)], 2.0) == [4, 102]  # idle in between


def test_lower_bounds_of_a_small_trace():
    # (submit, duration, gpus) on 4 GPUs; see tests/test_eval_replay.py for the same trace replayed.
    # SRPT of the work (40, 24, 6, 2) at speed 4 completes at 3.5, 4, 9, 18; submit + duration gives
    # 5, 5, 9, 10; so completions sum to at least 5 + 5 + 9 + 18 = 37 and JCT to 37 - 6 = 31.
    b = lower_bounds([(0, 10, 4), (1, 8, 3), (2, 3, 2), (3, 2, 1)], 4)
    assert b.jct_mean_lb_s == pytest.approx(31 / 4)
    assert b.wait_mean_lb_s == pytest.approx(31 / 4 - 23 / 4)
    assert b.makespan_lb_s == pytest.approx(18)  # all 72 GPU-seconds from t=0 on 4 GPUs
    assert b.utilization_ub == pytest.approx(1.0)


def test_makespan_bound_from_a_late_burst():
    # Work submitted at t=100 alone needs 100 + 800 / 4 = 300 s.
    b = lower_bounds([(0, 10, 1), (100, 100, 4), (100, 100, 4)], 4)
    assert b.makespan_lb_s == pytest.approx(300)
    assert b.utilization_ub == pytest.approx(810 / (4 * 300))


def test_summarize():
    jobs = [Finished("a", 2, 0, 0, 10), Finished("a", 1, 0, 10, 15), Finished("b", 1, 5, 5, 105)]
    m = summarize(jobs, capacity=2)
    assert m["jobs"] == 3
    assert (m["wait_mean_s"], m["wait_max_s"], m["jct_mean_s"]) == pytest.approx((10 / 3, 10, 125 / 3))
    assert m["makespan_s"] == 105
    assert m["utilization"] == pytest.approx((20 + 5 + 100) / (2 * 105))
    # slowdowns: a 1 and 1.5 (mean 1.25); b 1 -> Jain of (1.25, 1)
    assert m["bounded_slowdown_mean"] == pytest.approx(3.5 / 3)
    assert m["jain_fairness"] == pytest.approx(2.25**2 / (2 * (1.25**2 + 1)))


def test_time_average_of_a_step_function():
    from evals.report import time_average

    # 2 from t=0 to 3, then 6 until the end at 4: bins of 2 s average 2 and (2 + 6) / 2.
    assert time_average([0, 3], [2, 6], end=4, bins=2) == pytest.approx([2, 4])
    assert time_average([1], [5], end=2, bins=1) == pytest.approx([2.5])  # nothing before t=1


@pytest.mark.parametrize(
    "demands, capacity, want",
    [
        ({"a": 8, "b": 8}, 8, {"a": 4, "b": 4}),
        ({"a": 1, "b": 8}, 8, {"a": 1, "b": 7}),  # what a does not need goes to b
        ({"a": 2, "b": 2, "c": 8}, 6, {"a": 2, "b": 2, "c": 2}),
        ({"a": 3, "b": 3}, 8, {"a": 3, "b": 3}),
    ],
)
def test_max_min_shares(demands, capacity, want):
    assert max_min_shares(demands, capacity) == pytest.approx(want)


def test_share_fairness_compares_gpu_time_received_with_the_fair_share():
    # 2 GPUs. From t=0 to 10 both users wait with 2-GPU demands while a holds both GPUs: a is entitled
    # to 1 GPU x 10 s and got 20 GPU-s, b was entitled to 10 and got 0.
    unfair = [Finished("a", 2, 0, 0, 10), Finished("b", 2, 0, 10, 20)]
    assert share_fairness(unfair, capacity=2) == pytest.approx(jain([2.0, 0.0]))  # 0.5
    # Each holds one GPU throughout: exactly the fair share.
    fair = [Finished("a", 1, 0, 0, 10), Finished("a", 1, 0, 10, 20), Finished("b", 1, 0, 0, 10),
            Finished("b", 1, 0, 10, 20)]
    assert share_fairness(fair, capacity=2) == pytest.approx(1.0)
    assert share_fairness([Finished("a", 1, 0, 0, 10)], capacity=2) == 1.0  # nobody competed


def test_share_by_tenant_says_what_each_user_received_and_was_entitled_to():
    unfair = [Finished("a", 2, 0, 0, 10), Finished("b", 2, 0, 10, 20)]  # from t=10 only b is left: no competition
    assert share_by_tenant(unfair, capacity=2) == {"a": pytest.approx((20.0, 10.0)), "b": pytest.approx((0.0, 10.0))}
    assert share_by_tenant([Finished("a", 1, 0, 0, 10)], capacity=2) == {}


@pytest.mark.parametrize("estimate, run, want", [(100, 100, 0.0), (150, 100, 0.5), (100, 150, 0.5), (1100, 100, 10.0),
                                                 (0.2, 0.5, 0.0)])  # under a second counts as a second
def test_relative_error_is_symmetric(estimate, run, want):
    assert relative_error(estimate, run) == pytest.approx(want)


def test_estimate_accuracy_per_source():
    rows = [Estimated("history", 100, 100), Estimated("history", 100, 300), Estimated("history", 100, 50),
            Estimated("history", 100, 2000), Estimated("default", None, 70), Estimated("user", 10, 10)]
    got = estimate_accuracy(rows)
    assert list(got) == ["default", "history", "user"]
    assert got["default"] == {"jobs": 1}
    h = got["history"]  # errors 0, 2, 1, 19
    assert h["jobs"] == 4
    assert (h["within_10pct"], h["within_50pct"], h["within_100pct"], h["within_1000pct"]) == (0.25, 0.25, 0.5, 0.75)
    assert h["under"] == 0.5  # 300 and 2000 ran longer than 100
    assert h["error_p50"] == pytest.approx(1.5) and h["error_mean"] == pytest.approx(5.5)
