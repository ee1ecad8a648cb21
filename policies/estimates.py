"""Run-time estimates learned from history, for jobs queued without one.

Most people never give an estimate, yet the backfill plan, sjf, the multifactor size factor and every
estimated start lean on one. Like Helios (Hu et al., SC'21), gpuherd predicts a job's run time from
the same user's finished jobs (``tools.history``): the runs of its own batch if any of them finished
(jobs of one task queued together: a sweep), else those under the most specific key that holds at
least ``min_samples`` runs (the same task on as many GPUs, the same task, the user's jobs of that
size, all the user's jobs, then the lab's of that size and the lab's). It takes their
``quantile``-th quantile rather than their mean, and never goes past the job's time limit.

When: a job is estimated as it is queued, and the estimate is recorded on it with its source
(``EstimateSource``): the policies' orders are kept sorted by keys read off the job, people should
see the estimate the plan used, and the first estimate is all sjf and the size factor have to go
on. The queue re-estimates a waiting job only when its own batch's 1st, 2nd, 4th, 8th, ... member
finishes: a sweep of 250 jobs all looked like the user's last jobs when it was queued, and once a
few of them have run, the rest are known far better (without that, every job queued behind the
sweep waits for all of it). A running job's estimate no longer changes. Replays learn online: the
history holds only jobs that finished before the estimate is made (no peeking).

Pure: the history is handed in, nothing reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

from tools.history import Batch, Key, keys_of
from tools.models import MAX_DURATION_S, EstimateSource, JobSpec

MIN_ESTIMATE_S = 1.0


class History(Protocol):
    def runs(self, key: Key) -> Sequence[float]:
        """Runs kept under ``key``, shortest first."""
        ...


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of sorted values, interpolating linearly between ranks (numpy's
    default)."""
    if not ordered:
        raise ValueError("the quantile of nothing")
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    source: EstimateSource

    def __iter__(self):
        """``seconds, source = estimate``: what ``JobQueue`` takes."""
        return iter((self.seconds, self.source))


@dataclass(frozen=True)
class Predictor:
    """``predictor(spec, history, batch)`` -> ``Estimate`` of a job like ``spec`` (its own estimate, if
    any, is not read: the queue asks only for jobs without one). Chosen by replay (docs/evals.md): a
    quantile above the median, because an estimate that is too short makes backfill wrong (a job
    started in a gap overruns it and delays the job the gap was kept for), while one somewhat too long
    only passes up a gap."""

    quantile: float = 0.7
    min_samples: int = 3  # a general key with fewer runs is passed over for a more general one

    def __post_init__(self) -> None:
        if not 0.0 <= self.quantile <= 1.0 or self.min_samples < 1:
            raise ValueError("quantile is in [0, 1] and min_samples at least 1")

    def __call__(self, spec: JobSpec, history: History, batch: Batch | None = None) -> Estimate:
        for runs, needed in self._levels(spec, history, batch):
            if len(runs) >= needed:
                seconds = quantile(runs, self.quantile)
                if spec.time_limit_s is not None:
                    seconds = min(seconds, spec.time_limit_s)
                return Estimate(min(max(seconds, MIN_ESTIMATE_S), MAX_DURATION_S), EstimateSource.HISTORY)
        return Estimate(None, EstimateSource.DEFAULT)

    def _levels(self, spec: JobSpec, history: History, batch: Batch | None) -> Iterator[tuple[Sequence[float], int]]:
        """(runs, how many are enough), most specific first: one finished job of its own batch is."""
        if batch is not None and batch.finished:
            yield history.runs(batch.key), 1
        for key in keys_of(spec.user, spec.name, spec.command, spec.gpu_count):
            yield history.runs(key), self.min_samples


DEFAULT_PREDICTOR = Predictor()
