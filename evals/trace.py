"""Traces: load a job trace (the schema of ``shared/traces``) into typed rows, and estimate durations.

Schema: ``job_id,user,submit_time_s,duration_s,num_gpus,status,vc[,gpu_milli]``, one job a row.
Loading filters (``vc``), drops rows without GPUs, rebases time so the first kept job arrives at
t = 0, compresses inter-arrival gaps by ``time_scale`` and keeps the first ``max_jobs`` jobs.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Iterable, Sequence

COLUMNS = ("job_id", "user", "submit_time_s", "duration_s", "num_gpus", "status", "vc")
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9._@-]+")


@dataclass(frozen=True, slots=True)
class TraceJob:
    job_id: str
    tenant: str  # who the job belongs to: the trace's user, else its vc (the traces publish no users)
    submit_s: float  # seconds after the first job's submission
    duration_s: float  # run time once started
    gpus: int

    @property
    def work(self) -> float:
        """GPU-seconds."""
        return self.gpus * self.duration_s


def tenant_name(user: str, vc: str) -> str:
    """A name ``JobSpec.user`` accepts: the user, else the vc, else ``unknown``."""
    raw = user.strip() or vc.strip()
    return _NOT_A_NAME.sub("_", raw)[:64] or "unknown"


def parse_rows(rows: Iterable[dict[str, str]], *, vc: str | None = None) -> list[TraceJob]:
    """Typed jobs from CSV rows, in submission order; rows of another vc or without GPUs are dropped."""
    jobs = []
    for row in rows:
        if vc is not None and row.get("vc", "") != vc:
            continue
        gpus = int(float(row["num_gpus"] or 0))
        if gpus <= 0:
            continue  # CPU-only or fractional-GPU pods: nothing for a whole-GPU scheduler to place
        jobs.append(
            TraceJob(
                job_id=row["job_id"],
                tenant=tenant_name(row.get("user") or "", row.get("vc") or ""),
                submit_s=float(row["submit_time_s"]),
                duration_s=float(row["duration_s"]),
                gpus=gpus,
            )
        )
    jobs.sort(key=lambda j: (j.submit_s, j.job_id))
    return jobs


def rebase(jobs: Sequence[TraceJob], *, time_scale: float = 1.0, max_jobs: int | None = None) -> list[TraceJob]:
    """First job at t = 0; every gap between arrivals multiplied by ``time_scale``; the first ``max_jobs``."""
    if time_scale <= 0:
        raise ValueError(f"time scale must be positive, not {time_scale}")
    jobs = list(jobs[:max_jobs] if max_jobs is not None else jobs)
    if not jobs:
        return []
    t0 = jobs[0].submit_s
    return [replace(j, submit_s=(j.submit_s - t0) * time_scale) for j in jobs]


def load_trace(
    path: Path | str, *, vc: str | None = None, time_scale: float = 1.0, max_jobs: int | None = None
) -> list[TraceJob]:
    with open(path, newline="") as f:
        jobs = parse_rows(csv.DictReader(f), vc=vc)
    return rebase(jobs, time_scale=time_scale, max_jobs=max_jobs)


def write_trace(path: Path | str, rows: Iterable[dict[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


# -- duration estimates ----------------------------------------------------------------------------


class EstimateMode(StrEnum):
    ORACLE = "oracle"  # the true duration
    NOISY = "noisy"  # the true duration off by a random factor (Helios' error bands below)
    NONE = "none"  # no estimate, and none predicted: sjf falls back to submission order
    HISTORY = "history"  # no estimate given; the core predicts one from the jobs finished so far (the service's way)


# The Helios paper's (Hu et al., SC'21) accuracy of duration estimates, cumulative: 10% of jobs are
# within 10% of the truth, 50% within 50%, 70% within 100%, 90% within 1000%, all within 10000%.
NOISE_BANDS: tuple[tuple[float, float], ...] = ((0.10, 0.10), (0.50, 0.50), (0.70, 1.0), (0.90, 10.0), (1.0, 100.0))


def noise_factor(rng: random.Random) -> float:
    """A factor ``f`` with ``max(f, 1/f) - 1`` (the relative error) drawn from ``NOISE_BANDS``.

    Within a band the error is uniform between the band's edges; over- and under-estimates are
    equally likely. An under-estimate divides (est = d / (1 + e)) so that it stays positive: "off by
    1000%" means eleven times too long or eleven times too short.
    """
    u = rng.random()
    low = 0.0
    for share, high in NOISE_BANDS:
        if u < share:
            break
        low = high
    error = rng.uniform(low, high)
    return 1.0 + error if rng.random() < 0.5 else 1.0 / (1.0 + error)


def estimates(jobs: Sequence[TraceJob], mode: EstimateMode | str, *, seed: int = 0) -> list[float | None]:
    """One estimate per job as its user gives it (seconds, or None); ``noisy`` is reproducible for a
    seed. ``history`` gives none: the replay's core predicts them (``predicts``)."""
    mode = EstimateMode(mode)
    if mode in (EstimateMode.NONE, EstimateMode.HISTORY):
        return [None] * len(jobs)
    if mode == EstimateMode.ORACLE:
        return [j.duration_s for j in jobs]
    rng = random.Random(seed)
    return [j.duration_s * noise_factor(rng) for j in jobs]


def predicts(mode: EstimateMode | str) -> bool:
    """Whether the core estimates jobs given without an estimate: every mode but ``none``."""
    return EstimateMode(mode) != EstimateMode.NONE
