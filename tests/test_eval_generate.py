"""The synthetic lab workload: reproducible, and shaped as documented."""

from collections import Counter

import pytest

from evals.generate import DAY_S, LabModel, generate, rate_profile, write
from evals.trace import load_trace

MONTH = LabModel(days=28)  # enough jobs for the shares to settle


@pytest.fixture(scope="module")
def rows():
    return generate(MONTH, seed=5)


def test_same_seed_same_trace():
    assert generate(LabModel(), seed=1) == generate(LabModel(), seed=1)
    assert generate(LabModel(), seed=1) != generate(LabModel(), seed=2)


@pytest.mark.parametrize("seed", range(5))
def test_every_seed_offers_the_asked_load(seed):
    model = LabModel(load=0.9)
    rows = generate(model, seed=seed)
    assert sum(r.num_gpus * r.duration_s for r in rows) / model.capacity_gpu_seconds == pytest.approx(0.9, abs=0.01)


def test_the_documented_size_mix(rows):
    counts = Counter(r.num_gpus for r in rows)
    for gpus, share in MONTH.sizes:
        assert counts[gpus] / len(rows) == pytest.approx(share, abs=0.04)


def test_daytime_peaks_and_quiet_weekends(rows):
    day = sum(1 for r in rows if (r.submit_time_s // 86_400) % 7 < 5 and 10 <= (r.submit_time_s // 3600) % 24 < 18)
    night = sum(1 for r in rows if (r.submit_time_s // 86_400) % 7 < 5 and (r.submit_time_s // 3600) % 24 < 6)
    weekend = sum(1 for r in rows if (r.submit_time_s // 86_400) % 7 >= 5)
    assert day / 8 > 8 * night / 6  # per hour, working hours are busier than nights by far
    assert weekend / 2 < 0.5 * (len(rows) - weekend) / 5  # per day
    assert rate_profile(11 * 3600) > rate_profile(3 * 3600) and rate_profile(5 * DAY_S + 11 * 3600) < 1


def test_a_few_heavy_users(rows):
    per_user = Counter(r.user for r in rows).most_common()
    assert len(per_user) == 15
    assert sum(n for _, n in per_user[:3]) / len(rows) > 0.45


def test_heavy_tailed_durations_and_offered_load(rows):
    durations = sorted(r.duration_s for r in rows)
    median, p99 = durations[len(durations) // 2], durations[int(0.99 * len(durations))]
    assert p99 > 20 * median
    assert MONTH.min_duration_s <= durations[0] and durations[-1] <= MONTH.max_duration_s
    load = sum(r.num_gpus * r.duration_s for r in rows) / MONTH.capacity_gpu_seconds
    assert load == pytest.approx(MONTH.load, abs=0.01)


def test_written_trace_loads_in_the_common_schema(tmp_path):
    rows = generate(LabModel(days=1), seed=0)
    write(tmp_path / "lab.csv", rows)
    jobs = load_trace(tmp_path / "lab.csv")
    assert len(jobs) == len(rows) and {j.tenant for j in jobs} <= {f"user{i:02d}" for i in range(1, 16)}
    assert jobs[0].submit_s == 0  # rebased to the first submission
