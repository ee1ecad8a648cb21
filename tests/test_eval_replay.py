"""Replays through the real orchestrator: a small trace worked out by hand, bounds on a real slice, the CLI."""

import json
from pathlib import Path

import pytest

from evals.cli import main
from evals.metrics import lower_bounds, summarize
from evals.replay import Cluster, replay
from evals.trace import estimates, load_trace, write_trace

PHILLY = Path(__file__).resolve().parents[2] / "shared" / "traces" / "philly_pollux.csv"

# One node of 4 GPUs. A fills it until t=10; then B, C, D (3, 2 and 1 GPUs) compete.
#   fcfs:     B starts at 10; C does not fit and holds D up behind it until B ends at 18.
#   priority: (all priority 5, so submission order) B at 10, C does not fit, D passes it at 10.
#   sjf:      shortest first at 10: D, C, then B does not fit; B starts when C ends at 13.
HAND = [
    # job_id, user, submit, duration, gpus
    ("A", "ana", 0, 10, 4),
    ("B", "ana", 1, 8, 3),
    ("C", "bo", 2, 3, 2),
    ("D", "bo", 3, 2, 1),
]
WANT_RUNS = {  # (start, end) of A, B, C, D
    "fcfs": [(0, 10), (10, 18), (18, 21), (18, 20)],
    "priority": [(0, 10), (10, 18), (18, 21), (10, 12)],
    "sjf": [(0, 10), (13, 21), (10, 13), (10, 12)],
}
WANT_METRICS = {
    # waits fcfs (0, 9, 16, 15), priority (0, 9, 16, 7), sjf (0, 12, 8, 7); percentiles interpolate
    # between ranks. Bounded slowdowns (tau 10): fcfs 1, 1.7, 1.9, 1.7; priority 1, 1.7, 1.9, 1;
    # sjf 1, 2, 1.1, 1. Jain is over the mean slowdown of ana (A, B) and bo (C, D).
    "fcfs": dict(wait_mean_s=10, wait_p50_s=12, wait_p95_s=15.85, wait_p99_s=15.97, wait_max_s=16,
                 jct_mean_s=15.75, jct_p50_s=17, jct_p95_s=18.7, jct_p99_s=18.94, makespan_s=21,
                 bounded_slowdown_mean=1.575, jain_fairness=3.15**2 / (2 * (1.35**2 + 1.8**2))),
    "priority": dict(wait_mean_s=8, wait_p50_s=8, wait_p95_s=14.95, wait_p99_s=15.79, wait_max_s=16,
                     jct_mean_s=13.75, jct_p50_s=13.5, jct_p95_s=18.7, jct_p99_s=18.94, makespan_s=21,
                     bounded_slowdown_mean=1.4, jain_fairness=2.8**2 / (2 * (1.35**2 + 1.45**2))),
    "sjf": dict(wait_mean_s=6.75, wait_p50_s=7.5, wait_p95_s=11.4, wait_p99_s=11.88, wait_max_s=12,
                jct_mean_s=12.5, jct_p50_s=10.5, jct_p95_s=18.65, jct_p99_s=19.73, makespan_s=21,
                bounded_slowdown_mean=1.275, jain_fairness=2.55**2 / (2 * (1.5**2 + 1.05**2))),
}


def write_csv(path: Path, rows) -> Path:
    write_trace(path, ({"job_id": j, "user": u, "submit_time_s": s, "duration_s": d, "num_gpus": g,
                        "status": "", "vc": "v"} for j, u, s, d, g in rows))
    return path


@pytest.fixture
def hand_trace(tmp_path) -> Path:
    return write_csv(tmp_path / "hand.csv", HAND)


@pytest.mark.parametrize("policy", sorted(WANT_METRICS))
def test_hand_computed_trace(hand_trace, policy):
    jobs = load_trace(hand_trace)
    r = replay(jobs, policy=policy, cluster=Cluster(1, 4), estimates=estimates(jobs, "oracle"))
    assert [(f.start, f.end) for f in r.finished] == WANT_RUNS[policy]
    got = summarize(r.finished, capacity=4)
    assert got["jobs"] == 4
    assert got["utilization"] == pytest.approx(72 / (4 * 21))
    assert {k: got[k] for k in WANT_METRICS[policy]} == pytest.approx(WANT_METRICS[policy])


def test_the_cost_series_shows_which_passes_asked_the_policy(hand_trace):
    jobs = load_trace(hand_trace)
    r = replay(jobs, policy="fcfs", cluster=Cluster(1, 4), estimates=estimates(jobs, "oracle"))
    assert list(r.timeline["time"]) == [0, 1, 2, 3, 10, 18, 20, 21]
    assert list(r.costs["queued"]) == [1, 1, 2, 3, 3, 2, 0, 0]  # the waiting jobs each pass's policy saw
    # The last two passes end D and C with nothing waiting: the policy is not asked, and costs nothing.
    assert [d > 0 for d in r.costs["decide_s"]] == [True] * 6 + [False] * 2


def test_multi_node_job_waits_for_whole_nodes(tmp_path):
    # Two nodes of 2 GPUs. Y holds one GPU of n0 until t=3, so X (4 GPUs) waits for both nodes whole.
    trace = write_csv(tmp_path / "wide.csv", [("Y", "", 0, 3, 1), ("X", "", 1, 5, 4), ("Z", "", 2, 1, 1)])
    r = replay(load_trace(trace), policy="fcfs", cluster=Cluster(2, 2))
    assert [(f.start, f.end) for f in r.finished] == [(0, 3), (3, 8), (8, 9)]
    r = replay(load_trace(trace), policy="priority", cluster=Cluster(2, 2))
    assert [(f.start, f.end) for f in r.finished] == [(0, 3), (3, 8), (2, 3)]  # Z fills in


def test_a_job_larger_than_the_cluster_is_left_out(tmp_path):
    trace = write_csv(tmp_path / "big.csv", [("big", "", 0, 5, 16), ("ok", "", 1, 5, 1)])
    r = replay(load_trace(trace), policy="sjf", cluster=Cluster(1, 8))
    assert [j.job_id for j in r.skipped] == ["big"] and len(r.finished) == 1


@pytest.mark.skipif(not PHILLY.exists(), reason="needs shared/traces")
@pytest.mark.parametrize("policy", ["priority", "fcfs", "sjf", "fair_share"])
def test_no_policy_beats_the_lower_bounds_on_a_real_slice(policy):
    jobs = load_trace(PHILLY, vc="2869ce")  # 422 jobs of 1 to 32 GPUs, more work than 32 GPUs can do
    cluster = Cluster(4, 8)
    r = replay(jobs, policy=policy, cluster=cluster, estimates=estimates(jobs, "noisy", seed=1))
    kept = [j for j in jobs if j.gpus <= cluster.gpus]
    assert len(r.finished) == len(kept) == 422
    assert r.rejected == 0  # the policy never proposed what the validator refuses
    m = summarize(r.finished, cluster.gpus)
    b = lower_bounds([(j.submit_s, j.duration_s, j.gpus) for j in kept], cluster.gpus)
    tol = 1e-6
    assert m["jct_mean_s"] >= b.jct_mean_lb_s - tol
    assert m["wait_mean_s"] >= b.wait_mean_lb_s - tol
    assert m["makespan_s"] >= b.makespan_lb_s - tol
    assert m["utilization"] <= b.utilization_ub + tol
    assert m["wait_mean_s"] > 0  # jobs did wait: the bounds are tested, not trivially met


@pytest.mark.slow
def test_cli_replay_writes_the_documented_json_and_plots(hand_trace, tmp_path, capsys):
    out, plots = tmp_path / "r.json", tmp_path / "plots"
    code = main(["replay", "--trace", str(hand_trace), "--nodes", "1", "--gpus-per-node", "4",
                 "--policies", "fcfs,sjf", "--estimate", "oracle", "--json", str(out), "--plots", str(plots),
                 "--quiet"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["trace"] == str(hand_trace)
    assert doc["cluster"] == {"nodes": 1, "gpus_per_node": 4}
    assert set(doc["bounds"]) == {"jct_mean_lb_s", "wait_mean_lb_s", "makespan_lb_s", "utilization_ub"}
    assert list(doc["policies"]) == ["fcfs", "sjf"]
    keys = {"jobs", "wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_p99_s", "wait_max_s", "jct_mean_s",
            "jct_p50_s", "jct_p95_s", "jct_p99_s", "makespan_s", "utilization", "bounded_slowdown_mean",
            "jain_fairness", "replay_seconds"}
    assert keys <= set(doc["policies"]["sjf"])
    assert doc["policies"]["sjf"]["jct_mean_s"] == pytest.approx(12.5)
    assert sorted(p.name for p in plots.iterdir()) == ["jct_cdf.png", "timeline.png"]
    table = capsys.readouterr().out
    assert "bound" in table and "fcfs" in table


def test_cli_replay_with_history_estimates_reports_their_accuracy(hand_trace, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["replay", "--trace", str(hand_trace), "--nodes", "1", "--gpus-per-node", "4",
                 "--policies", "sjf", "--estimate", "history", "--json", str(out), "--quiet"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["options"]["estimate"] == "history"
    # A ends at 10, after B, C and D were queued (1-3 s): nothing to learn from yet, so each has none.
    assert doc["policies"]["sjf"]["estimates"] == {"default": {"jobs": 4}}
    printed = capsys.readouterr().out
    assert "estimates history" in printed and "ran longer" in printed


def test_cli_refuses_an_unknown_policy(hand_trace, capsys):
    with pytest.raises(SystemExit):
        main(["replay", "--trace", str(hand_trace), "--policies", "lottery"])
    assert "unknown policy lottery" in capsys.readouterr().err
