"""A synthetic trace of a research lab's GPU jobs, like the seed's team, in the schema of the real traces.

The model (every number is a field of ``LabModel``):
- Arrivals: a Poisson process whose rate follows the working week (``HOURLY`` x ``WEEKDAY``): quiet
  at night, rising from 8:00, peaking 10:00-18:00 with a dip at lunch, tailing off in the evening;
  weekends at 30% of a weekday. t = 0 is midnight on a Monday.
- Users: Zipf-like activity, share of jobs proportional to 1 / rank^1.1, so a few heavy users submit
  most of the work (with 15 users the top three submit about 59% of the jobs).
- Sizes: 1, 2, 4 or 8 GPUs with probability 0.55, 0.20, 0.15, 0.10, independent of duration (sizes
  above a node's GPUs are cut to a node).
- Durations: heavy-tailed, a mixture of two log-normals: half are short runs (debugging, evaluation;
  median 10 min, sigma 1.0), half training runs (median 2 h, sigma 1.2), clipped to [1 min, 3 days].
- Scale: the GPU-time offered is ``load`` (default 0.8) of the cluster's capacity over the trace:
  more than the cluster in working hours, less at night. One long 8-GPU job can be a fifth of a
  week's capacity, so rather than trust the expected rate, jobs are drawn at twice it and then kept,
  in random order, while they fit under the target (a uniform thinning keeps the daily shape).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from evals.trace import write_trace

DEFAULT_LOAD = 0.8
DAY_S = 86_400.0
# Relative arrival rate in each hour of a weekday, from midnight.
HOURLY = (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.6, 1.0, 1.4, 1.4,
          1.4, 1.1, 1.4, 1.4, 1.4, 1.4, 1.0, 0.7, 0.5, 0.4, 0.3, 0.2)
WEEKDAY = (1.0, 1.0, 1.0, 1.0, 1.0, 0.3, 0.3)  # Monday first


@dataclass(frozen=True)
class DurationKind:
    name: str
    share: float
    median_s: float
    sigma: float

    @property
    def mean_s(self) -> float:
        """Mean of the log-normal before clipping."""
        return self.median_s * math.exp(self.sigma**2 / 2)


@dataclass(frozen=True)
class LabModel:
    users: int = 15
    nodes: int = 2
    gpus_per_node: int = 8
    days: float = 7.0
    load: float = DEFAULT_LOAD
    zipf: float = 1.1
    sizes: tuple[tuple[int, float], ...] = ((1, 0.55), (2, 0.20), (4, 0.15), (8, 0.10))
    kinds: tuple[DurationKind, ...] = (
        DurationKind("short", 0.5, 600.0, 1.0),
        DurationKind("training", 0.5, 7_200.0, 1.2),
    )
    min_duration_s: float = 60.0
    max_duration_s: float = 3 * DAY_S

    @property
    def capacity_gpu_seconds(self) -> float:
        return self.nodes * self.gpus_per_node * self.days * DAY_S

    def size_of(self, gpus: int) -> int:
        return min(gpus, self.gpus_per_node)

    def mean_work(self) -> float:
        """Expected GPU-seconds of one job (clipping ignored: it changes little)."""
        mean_gpus = sum(self.size_of(g) * p for g, p in self.sizes)
        mean_s = sum(k.share * k.mean_s for k in self.kinds)
        return mean_gpus * mean_s

    def user_weights(self) -> list[float]:
        return [1.0 / (rank + 1) ** self.zipf for rank in range(self.users)]


@dataclass(frozen=True, slots=True)
class Row:
    job_id: str
    user: str
    submit_time_s: int
    duration_s: int
    num_gpus: int

    def as_csv(self) -> dict[str, object]:
        return {"job_id": self.job_id, "user": self.user, "submit_time_s": self.submit_time_s,
                "duration_s": self.duration_s, "num_gpus": self.num_gpus, "status": "", "vc": "lab"}


def rate_profile(t: float) -> float:
    """The relative arrival rate at ``t`` seconds after Monday midnight."""
    return HOURLY[int(t // 3600) % 24] * WEEKDAY[int(t // DAY_S) % 7]


def _profile_integral(horizon: float) -> float:
    """Integral of ``rate_profile`` over [0, horizon], hour by hour."""
    total, t = 0.0, 0.0
    while t < horizon:
        step = min(3600.0 - t % 3600, horizon - t)
        total += rate_profile(t) * step
        t += step
    return total


def generate(model: LabModel, *, seed: int = 0) -> list[Row]:
    """The jobs of ``model``, in submission order; the same seed gives the same trace."""
    rng = random.Random(seed)
    horizon = model.days * DAY_S
    target = model.load * model.capacity_gpu_seconds
    base = 2 * target / model.mean_work() / _profile_integral(horizon)  # jobs per second at profile 1.0
    peak = max(HOURLY) * max(WEEKDAY)
    users = [f"user{u + 1:02d}" for u in range(model.users)]
    weights = model.user_weights()
    sizes, size_p = zip(*model.sizes)
    kinds = model.kinds
    drawn: list[tuple[int, str, int, int]] = []  # (submit, user, duration, gpus)
    t = 0.0
    while True:
        t += rng.expovariate(base * peak)  # thinning: candidates at the peak rate, kept in proportion
        if t >= horizon:
            break
        if rng.random() * peak >= rate_profile(t):
            continue
        kind = rng.choices(kinds, weights=[k.share for k in kinds])[0]
        duration = rng.lognormvariate(math.log(kind.median_s), kind.sigma)
        duration = min(max(duration, model.min_duration_s), model.max_duration_s)
        drawn.append((int(t), rng.choices(users, weights=weights)[0], int(round(duration)),
                      model.size_of(rng.choices(sizes, weights=size_p)[0])))
    kept, work = [], 0.0
    for k in rng.sample(range(len(drawn)), len(drawn)):
        job_work = drawn[k][2] * drawn[k][3]
        if work + job_work <= target:
            kept.append(k)
            work += job_work
    rows = []
    for k in sorted(kept):
        submit, user, duration, gpus = drawn[k]
        rows.append(Row(f"lab-{len(rows) + 1:05d}", user, submit, duration, gpus))
    return rows


def write(path: Path | str, rows: Sequence[Row]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_trace(path, (r.as_csv() for r in rows))
