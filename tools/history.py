"""Run times of finished jobs: what the lab already knows about how long its jobs take.

``JobQueue`` records every attempt that ends by itself with exit code 0; the predictor
(``policies/estimates.py``) reads the history to estimate jobs queued without an estimate. Each run
is filed under keys from the most specific to the most general:

- ``("task", user, task, gpus)``: the same user's runs of the same task (its name, else its command,
  with numbers blurred: ``exp3`` and ``exp4``, ``--lr 3e-4`` and ``--lr 1e-3`` are one task) on as
  many GPUs;
- ``("task", user, task)``: that task on any number of GPUs;
- ``("user", user, gpus)`` and ``("user", user)``: the user's runs;
- ``("lab", gpus)`` and ``("lab",)``: everyone's.

**Batches.** Jobs of one task (same user, task and GPU count) queued less than ``batch_gap_s`` apart
form a batch: a sweep, a script's loop of submissions. Its members are alike, so the runs of its
finished members, kept under the batch's own key, say the most about the members still waiting,
and the queue re-estimates those when the batch's 1st, 2nd, 4th, 8th, ... member finishes. Only
those runs enter the general keys: a sweep of 250 jobs adds 8 runs to its user's history, not 250,
so that one experiment does not make every other job of the user look like it.

Each key keeps only its last ``window`` runs (recent history: habits change), at most ``max_keys``
keys and open batches are kept, the least recently used dropped first, and a batch is known to its
jobs only while they are active: a record costs O(1) and memory is bounded whatever the lab runs.
Nothing here reads a clock; times are handed in.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from tools.models import Job, JobStatus

Key = tuple
_NUMBER = re.compile(r"\d+")
TASK_CHARS = 200  # a task key is at most this long


def task_key(name: str | None, command: str) -> str:
    """What makes two jobs "the same task": the name if there is one, else the command; whitespace
    collapsed and every run of digits replaced by ``#``."""
    text = name if name else command
    return _NUMBER.sub("#", " ".join(text.split()))[:TASK_CHARS]


def keys_of(user: str, name: str | None, command: str, gpus: int) -> tuple[Key, ...]:
    """The general keys a run of this job is filed under, most specific first."""
    return _general_keys(user, task_key(name, command), gpus)


def _general_keys(user: str, task: str, gpus: int) -> tuple[Key, ...]:
    return (("task", user, task, gpus), ("task", user, task), ("user", user, gpus), ("user", user),
            ("lab", gpus), ("lab",))


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(eq=False)
class Batch:
    """Jobs of one task queued close together. ``key`` files its runs; ``members`` are its active jobs."""

    key: Key  # ("batch", user, task, gpus, time its first job was queued)
    last_queued: float
    finished: int = 0  # members that completed
    members: dict[int, None] = field(default_factory=dict)  # active job ids, in the order they joined


class RunHistory:
    """Recent run times (seconds) per key, and the batches of active jobs. Mutable, owned by the
    queue, which calls it under the scheduler's lock."""

    def __init__(self, *, window: int = 64, max_keys: int = 20_000, batch_gap_s: float = 60.0) -> None:
        if window < 1 or max_keys < 6 or batch_gap_s < 0:
            raise ValueError("a history keeps at least one run per key and six keys, and batches need a gap >= 0")
        self.window = window
        self.max_keys = max_keys
        self.batch_gap_s = batch_gap_s
        self._runs: OrderedDict[Key, deque[float]] = OrderedDict()
        self._sorted: dict[Key, tuple[float, ...]] = {}  # cache of sorted runs, dropped when a key changes
        self._open: OrderedDict[tuple[str, str, int], Batch] = OrderedDict()  # each task's latest batch
        self._batch_of: dict[int, Batch] = {}  # active job id -> its batch

    # -- reading -------------------------------------------------------------------------------
    def runs(self, key: Key) -> Sequence[float]:
        """The runs kept under ``key``, shortest first (empty if none)."""
        found = self._sorted.get(key)
        if found is None:
            kept = self._runs.get(key)
            if kept is None:
                return ()
            found = self._sorted[key] = tuple(sorted(kept))
        return found

    def batch_of(self, job_id: int) -> Batch | None:
        """The batch of an active job (None for a job queued before this history was made)."""
        return self._batch_of.get(job_id)

    def __len__(self) -> int:
        """Keys kept."""
        return len(self._runs)

    # -- changing ------------------------------------------------------------------------------
    def batch_for(self, user: str, name: str | None, command: str, gpus: int, now: float) -> Batch:
        """The batch a job of this task queued at ``now`` belongs to: its task's open batch if the last
        job of it was queued at most ``batch_gap_s`` ago, else a new one."""
        task = (user, task_key(name, command), gpus)
        batch = self._open.get(task)
        if batch is None or now - batch.last_queued > self.batch_gap_s:
            batch = self._open[task] = Batch(("batch", *task, now), now)
            while len(self._open) > self.max_keys:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(task)
        batch.last_queued = now
        return batch

    def join(self, job_id: int, batch: Batch) -> None:
        """Job ``job_id`` was queued in ``batch``."""
        batch.members[job_id] = None
        self._batch_of[job_id] = batch

    def leave(self, job_id: int) -> None:
        """The job ended for good: it no longer belongs to a batch."""
        batch = self._batch_of.pop(job_id, None)
        if batch is not None:
            batch.members.pop(job_id, None)

    def record(self, user: str, name: str | None, command: str, gpus: int, run_s: float,
               batch: Batch | None = None) -> bool:
        """One finished run of ``run_s`` seconds, of a job of ``batch`` (if known: the batch's key then
        names the task, as ``batch_for`` found it for this job). Returns whether the batch just reached
        1, 2, 4, 8, ... finished runs: its waiting members should be re-estimated."""
        run_s = max(0.0, float(run_s))
        if batch is None:
            self._add(keys_of(user, name, command, gpus), run_s)
            return False
        batch.finished += 1
        milestone = _power_of_two(batch.finished)
        _, user, task, gpus, _ = batch.key
        self._add((batch.key, *_general_keys(user, task, gpus)) if milestone else (batch.key,), run_s)
        return milestone

    def record_job(self, job: Job, batch: Batch | None = None) -> bool:
        """A job that completed (its last attempt's run time), of ``batch``; whether the batch's waiting
        members should now be re-estimated (``record``)."""
        if job.status != JobStatus.COMPLETED or job.start_time is None or job.end_time is None:
            return False
        return self.record(job.user, job.name, job.command, job.gpu_count, job.end_time - job.start_time, batch)

    def _add(self, keys: Iterable[Key], run_s: float) -> None:
        runs, cache = self._runs, self._sorted
        for key in keys:
            kept = runs.get(key)
            if kept is None:
                kept = runs[key] = deque(maxlen=self.window)
            else:
                runs.move_to_end(key)
            kept.append(run_s)
            cache.pop(key, None)
        while len(runs) > self.max_keys:
            old, _ = runs.popitem(last=False)
            cache.pop(old, None)

    @classmethod
    def of(cls, jobs: Iterable[Job], **kwargs) -> RunHistory:
        """A history of ``jobs`` (oldest first), e.g. the completed jobs a store holds at start-up. Their
        batches are not known: each run counts on its own."""
        history = cls(**kwargs)
        for job in jobs:
            history.record_job(job)
        return history
