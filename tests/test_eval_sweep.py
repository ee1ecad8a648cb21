"""herd eval sweep: many synthetic lab weeks under every policy, and what multifactor misses."""

import json

import pytest

from evals import generate as gen
from evals.cli import main
from evals.metrics import Finished
from evals.sweep import Shortfall, Week, lab_trace, markdown, misses, shortfalls, sweep, when


def test_a_sweep_week_is_the_trace_generate_writes(tmp_path):
    from evals.trace import load_trace

    model = gen.LabModel(users=4, days=1)
    gen.write(tmp_path / "w.csv", gen.generate(model, seed=3))
    assert lab_trace(model, 3) == load_trace(tmp_path / "w.csv")


def week(policy, share=0.95, util=0.8, jct=3600.0, seed=0):
    return Week(15, seed, policy, 10, share, util, jct, 0.0, 0.9, 100.0)


@pytest.mark.parametrize("target, want", [
    (week("multifactor"), []),
    (week("multifactor", share=0.89), ["share"]),
    (week("multifactor", util=0.78), ["util"]),  # two points under the best
    (week("multifactor", util=0.795), []),  # within one point
    (week("multifactor", jct=1.2 * 3600), ["jct"]),  # 20 % above sjf's
    (week("multifactor", share=0.5, util=0.5, jct=9e9), ["share", "util", "jct"]),
])
def test_misses_check_each_part_of_the_target(target, want):
    assert misses([week("sjf"), week("priority", util=0.8), target]) == {(15, 0): want}


def test_a_small_sweep_runs_every_policy_on_every_week():
    weeks = sweep([0, 1], [3], ["sjf", "multifactor"], days=1.0)
    assert [(w.seed, w.policy) for w in weeks] == [(0, "sjf"), (0, "multifactor"), (1, "sjf"), (1, "multifactor")]
    assert all(0 < w.utilization <= w.utilization_ub + 1e-9 and w.jct_mean_s >= w.jct_mean_lb_s - 1e-6 for w in weeks)
    table = markdown(weeks)
    rows, summary, *short = table.split("\n\n")
    assert rows.count("\n") == 5 and "met on" in summary  # header, rule, 2 weeks, mean, worst; the summary


def test_cli_sweep(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["sweep", "--seeds", "0-1", "--users", "3", "--days", "1", "--policies", "sjf,multifactor",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["weeks"]) == 4 and {m["seed"] for m in doc["misses"]} == {0, 1}
    assert "multifactor misses" in capsys.readouterr().out


def test_cli_sweep_refuses_bad_seeds(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--seeds", "a-b"])
    assert "give numbers and ranges" in capsys.readouterr().err


def test_the_summary_counts_held_out_weeks_apart_and_compares_fair_share():
    weeks = [week("sjf", seed=s) for s in (0, 1, 5)] + [
        week("multifactor", share=0.95, seed=0), week("multifactor", share=0.85, seed=1),
        week("multifactor", share=0.92, seed=5),
        week("fair_share", share=0.96, seed=0), week("fair_share", share=0.80, seed=1), week("fair_share", share=0.92, seed=5),
    ]
    chosen, held = markdown(weeks, held_out=[5]).splitlines()[-2:]
    assert chosen == ("multifactor, weeks of seeds 0,1 (chosen on): target met on 1 of 2 (share 1, util 2, jct 2); "
                      "fair_share at least as fair on 1 of 2")
    assert held == ("multifactor, weeks of seeds 5 (held out): target met on 1 of 1 (share 1, util 1, jct 1); "
                    "fair_share at least as fair on 1 of 1")


def test_cli_sweep_takes_the_backfill_plan_settings(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["sweep", "--seeds", "0", "--users", "3", "--days", "1", "--policies", "sjf,multifactor",
                 "--backfill-plans", "4", "--starve-after", "1d", "--json", str(out)]) == 0
    assert "weeks of seeds 0 (chosen on)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sweep", "--seeds", "0", "--starve-after", "soon"])
    assert "--starve-after" in capsys.readouterr().err


def test_shortfalls_name_the_users_furthest_below_their_share_and_their_longest_wait():
    # 2 GPUs. b's 2-GPU job (queued at t=0) waits 10 s while a holds both GPUs; a gets more than its share.
    jobs = [Finished("a", 2, 0, 0, 10), Finished("b", 1, 0, 0, 5), Finished("b", 2, 0, 10, 20)]
    worst, *rest = shortfalls(jobs, capacity=2, keep=1) + shortfalls(jobs, capacity=2)
    assert worst == Shortfall("b", pytest.approx(5 / 10), pytest.approx(10 / 3600), 2, 10.0, 2, 0.0)
    assert [s.tenant for s in rest] == ["b"]  # a got more than its share


def test_the_table_says_who_lost_the_share_on_weeks_that_missed_it():
    short = (Shortfall("user14", 0.18, 49.0, 5, 15 * 3600, 8, 86_400 + 14 * 3600),)
    weeks = [week("sjf"), Week(15, 0, "multifactor", 10, 0.85, 0.8, 3600.0, 0.0, 0.9, 100.0, short)]
    assert markdown(weeks).splitlines()[-1] == (
        "15 users, seed 0, multifactor share 0.850: user14 0.18 of 49 GPU-h (5 jobs; a 8-GPU job queued Tue 14:00 "
        "waited 15 h)")
    assert "Furthest below" not in markdown([week("sjf"), week("multifactor")])  # every week at 0.9 or more
    assert when(6 * 86_400 + 23.5 * 3600) == "Sun 23:30" and when(7 * 86_400) == "Mon 00:00"


def test_cli_sweep_takes_multifactor_weights(tmp_path, capsys):
    args = ["sweep", "--seeds", "0", "--users", "3", "--days", "1", "--policies", "multifactor"]
    assert main(args + ["--weights", "size=0, age=0"]) == 0
    assert "multifactor weights Weights(priority=1000.0, age=0.0, fair_share=2000.0, size=0.0" in capsys.readouterr().out
    for bad in ("size", "sizes=1", "size=-1", "size=x"):
        with pytest.raises(SystemExit):
            main(args + ["--weights", bad])
        assert "give name=number" in capsys.readouterr().err


def test_a_sweep_with_other_weights_replays_multifactor_with_them():
    from policies.rules import Weights

    same = sweep([0], [3], ["multifactor"], days=1.0, weights=Weights())
    assert same == sweep([0], [3], ["multifactor"], days=1.0)
    # Ordered by age alone, multifactor is fcfs with backfill: the same week as the backfill policy.
    by_age = sweep([0], [3], ["multifactor"], days=1.0, weights=Weights(priority=0, fair_share=0, size=0))
    backfill = sweep([0], [3], ["backfill"], days=1.0)
    assert (by_age[0].share, by_age[0].jct_mean_s) == (backfill[0].share, backfill[0].jct_mean_s)
