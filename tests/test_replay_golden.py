"""A replay's outcome does not move when the harness or the core gets faster.

``tests/golden/replay-philly-2000.json`` holds, per policy and estimate mode, what a replay of the
first 2,000 Philly jobs on 8 × 8 GPUs produced: the report's metrics, the tick count, the validator's
refusals, a digest of every job's (start, end) and one of
every estimate the core gave. Re-record it (``python -m tests.test_replay_golden``)
only for a change meant to alter schedules, and say why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from evals.metrics import summarize
from evals.replay import Cluster, Replay, replay
from evals.trace import estimates, load_trace, predicts
from policies.estimates import DEFAULT_PREDICTOR
from policies.ordering import POLICIES

PHILLY = Path(__file__).resolve().parents[2] / "shared" / "traces" / "philly_pollux.csv"
GOLDEN = Path(__file__).resolve().parent / "golden" / "replay-philly-2000.json"
JOBS = 2000
CLUSTER = Cluster(8, 8)
MODES = ("history", "noisy")


def outcome(run: Replay) -> dict[str, object]:
    """What a replay decided, exactly: floats survive JSON unchanged (repr round-trips)."""
    runs = hashlib.sha256(repr([(j.tenant, j.gpus, j.submit, j.start, j.end) for j in run.finished]).encode())
    guesses = hashlib.sha256(repr([(e.source, e.estimate, e.run) for e in run.estimated]).encode())
    return {
        "estimates_sha256": guesses.hexdigest(),
        "metrics": summarize(run.finished, CLUSTER.gpus),
        "ticks": run.ticks,
        "rejected": run.rejected,
        "skipped": len(run.skipped),
        "runs_sha256": runs.hexdigest(),
    }


def run_case(policy: str, mode: str) -> dict[str, object]:
    jobs = load_trace(PHILLY, max_jobs=JOBS)
    predictor = DEFAULT_PREDICTOR if predicts(mode) else None
    return outcome(replay(jobs, policy=policy, cluster=CLUSTER, estimates=estimates(jobs, mode, seed=0),
                          predictor=predictor))


def key(policy: str, mode: str) -> str:
    return f"{policy}/{mode}"


@pytest.mark.skipif(not PHILLY.exists(), reason="the Philly trace is in ../shared/traces")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_replay_outcome_matches_the_recorded_one(policy, mode):
    want = json.loads(GOLDEN.read_text())[key(policy, mode)]
    assert run_case(policy, mode) == want


def record() -> None:
    golden = {key(p, m): run_case(p, m) for p in POLICIES for m in MODES}
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(golden)} cases)", file=sys.stderr)


if __name__ == "__main__":
    record()
