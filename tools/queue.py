"""The job queue: the lifecycle of a job and the one function that changes it.

``transition`` is the only place a job's status changes. It checks the move against
``models.TRANSITIONS``, stamps the time, keeps the fields that belong to each state consistent and
saves the job with an event row in one store transaction.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator, Mapping

from pydantic import Field, TypeAdapter

from tools.history import Batch, RunHistory
from tools.index import IN_LINE_MESSAGE, JobIndex
from tools.models import (
    HOLDS_GPUS,
    MAX_DURATION_S,
    TERMINAL,
    TRANSITIONS,
    EndReason,
    EstimateSource,
    Event,
    Job,
    JobSpec,
    JobStatus,
    PendingReason,
    StopReason,
    assembled,
    changed,
    parse_array,
)
from tools.timespec import local_time
from tools.store import Store

log = logging.getLogger(__name__)

# Members read on every save, bound once: reading one through its enum class costs as much as the
# rest of a status test.
_QUEUED, _SCHEDULED, _RUNNING = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING
_COMPLETED = JobStatus.COMPLETED

WAITING_FOR_PASS = "waiting for the scheduler's next pass"
# A job lost by the executor this many times fails rather than starting again: the losses are then
# more likely the job's own doing (killing its wrapper, its window or the tmux server) than the
# executor's, and requeueing it for ever would hold GPUs in a loop.
MAX_LOSSES = 3
# Completed jobs read back into the run-time history at start-up, newest first.
HISTORY_AT_START = 5_000

# Estimates a job queued without one, from the history and the job's batch: (seconds or None, where
# it came from). Given by the builder (agent/build.py: policies/estimates.py's predictor), so that
# this floor knows no policy.
Estimator = Callable[[JobSpec, RunHistory, "Batch | None"], "tuple[float | None, EstimateSource]"]


_END_REASONS = {JobStatus.COMPLETED: EndReason.COMPLETED, JobStatus.FAILED: EndReason.FAILED,
                JobStatus.CANCELLED: EndReason.CANCELLED}


# A new job's fields beyond its spec, as ``Job`` has them by default (all immutable: shared by every job).
_NEW_JOB = {name: field.get_default() for name, field in Job.model_fields.items()
            if name not in JobSpec.model_fields and not field.is_required()}
# An estimate not the user's, checked as ``Job`` checks ``est_duration_s``.
_ESTIMATE = TypeAdapter(Annotated[float, Field(gt=0, le=MAX_DURATION_S, strict=True, allow_inf_nan=False)] | None)


def new_job(spec: JobSpec, **fields: Any) -> Job:
    """A job of ``spec`` with the queue's ``fields``, made without checking the spec's fields again
    (they were checked when the spec was made, and the queue's are its own): validating the whole
    job a second time was a fifth of a submission. ``Job.model_construct`` does the same, but looks
    up every field's aliases and default on each call."""
    values = {**_NEW_JOB, **spec.__dict__, **fields}
    return assembled(Job, values, set(values))


class JobNotFound(LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class IllegalTransition(RuntimeError):
    """The request does not fit the job's state (e.g. cancelling a completed job)."""


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``attempt`` (1-based): base, doubled each time, capped.

    The retry's ``not_before`` is a wall-clock time, unlike the time-limit and grace deadlines (which
    are monotonic): it is stored with the job and must mean the same after a restart, which a
    monotonic reading cannot. A step of the system clock moves it; at worst a retry waits up to the
    step longer or starts that much sooner."""

    base_s: float = 10.0
    factor: float = 2.0
    max_s: float = 600.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * self.factor ** max(0, attempt - 1))


def decayed(value: float, elapsed_s: float, half_life_s: float) -> float:
    """``value`` after ``elapsed_s`` of exponential decay: half of it is gone after one half-life."""
    return value * 0.5 ** (max(0.0, elapsed_s) / half_life_s)


class DecayedUsage(Mapping[str, float]):
    """Users' GPU-seconds decayed to ``now``, each worked out when read: most passes read none."""

    def __init__(self, raw: Mapping[str, tuple[float, float]], now: float, half_life_s: float) -> None:
        self._raw, self._now, self._half_life_s = raw, now, half_life_s

    def __getitem__(self, user: str) -> float:
        value, as_of = self._raw[user]
        return decayed(value, self._now - as_of, self._half_life_s)

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclass(frozen=True)
class QueueStats:
    counts: dict[str, int]
    queued_gpus: int  # GPUs the waiting jobs ask for
    running_gpus: int  # GPUs held by scheduled and running jobs
    oldest_wait_s: float | None
    max_queued: int


@dataclass(frozen=True)
class Submission:
    """A job, or an array's tasks, ready to be stored (ids still 0), and the batch they join."""

    jobs: tuple[Job, ...]
    batch: Batch


class JobQueue:
    def __init__(
        self,
        store: Store,
        *,
        max_queued: int = 100,
        backoff: Backoff = Backoff(),
        usage_half_life_s: float = 7 * 86_400.0,
        estimator: Estimator | None = None,
        history: RunHistory | None = None,
        batch_gap_s: float = 60.0,
        max_queued_per_user: int | None = None,
    ) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.store = store
        # Waiting submissions at once (an array counts once), and one user's waiting jobs (each task
        # of an array counted; None: no limit).
        self.max_queued = max_queued
        self.max_queued_per_user = max_queued_per_user
        self.backoff = backoff
        self.usage_half_life_s = usage_half_life_s
        # Run times of completed jobs (recorded by ``finish``), from which ``estimator`` estimates a job
        # queued without an estimate; None: such a job keeps none (source "default"). Jobs of one task
        # queued less than ``batch_gap_s`` apart are one batch (``tools.history``).
        self.estimator = estimator
        if history is None:
            done = store.page_jobs(statuses=(JobStatus.COMPLETED,), limit=HISTORY_AT_START)
            history = RunHistory.of(reversed(done), batch_gap_s=batch_gap_s)
        self.history = history
        # Submissions read and join batches without the scheduler's lock, while a pass records ends.
        self._history_lock = threading.RLock()
        # Every write below also goes to the index, which the scheduler reads instead of the store.
        self.index = JobIndex(store.active_jobs())

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def active(self) -> list[Job]:
        return self.store.active_jobs()

    def usage(self, now: float) -> Mapping[str, float]:
        """Each user's GPU-seconds of finished attempts, decayed to ``now`` (when read)."""
        return DecayedUsage(self.store.get_usage(), now, self.usage_half_life_s)

    def stats(self, now: float) -> QueueStats:
        """From totals kept on every change (the index's, the store's counts): no walk of the queue."""
        oldest = self.index.oldest_queued()
        return QueueStats(
            counts={s.value: n for s, n in self.store.count_by_status().items()},
            queued_gpus=self.index.queued_gpus,
            running_gpus=self.index.holding_gpus(),
            oldest_wait_s=None if oldest is None else now - oldest.submit_time,
            max_queued=self.max_queued,
        )

    # -- changing ------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, *, now: float) -> Job:
        """Persist a new queued job, or every task of an array (``spec.array``) in one transaction, and
        return it (an array's first task, whose id is the array's); raises ``store.QueueFull`` when the
        queue, or its user's share of it, is at its limit."""
        return self.store_submission(self.prepare(spec, now=now))

    def prepare(self, spec: JobSpec, *, now: float) -> Submission:
        """The jobs a submission makes (stamped ``now``, estimated from the history), not yet stored.
        Needs no lock of the caller's."""
        deferred = spec.begin_at is not None and spec.begin_at > now
        estimate, source = spec.est_duration_s, EstimateSource.USER
        with self._history_lock:
            batch = self.history.batch_for(spec.user, spec.name, spec.command, spec.gpu_count, now)
            if estimate is None:
                estimate, source = ((None, EstimateSource.DEFAULT) if self.estimator is None
                                    else self.estimator(spec, self.history, batch))
        if source != EstimateSource.USER:
            estimate = _ESTIMATE.validate_python(estimate)  # (a user's was checked with the request)
        job = new_job(
            spec,
            est_duration_s=estimate,
            est_source=source,
            id=0,
            submit_time=now,
            not_before=spec.begin_at if deferred else None,
            pending_reason=PendingReason.BEGIN_TIME if deferred else PendingReason.PRIORITY,
            # The reason a pass gives every waiting job it does not reach, so that a submission to a busy
            # queue costs the pass no write; one that waits for other jobs is explained by the pass.
            pending_message=(f"deferred: not before {local_time(spec.begin_at)}" if deferred
                             else WAITING_FOR_PASS if spec.depends_on else IN_LINE_MESSAGE),
        )
        if spec.array is None:
            return Submission((job,), batch)
        indices, limit = parse_array(spec.array)
        return Submission(tuple(job.model_copy(update={"array_index": index, "array_size": len(indices),
                                                       "array_limit": limit, **({"idempotency": None} if i else {})})
                                for i, index in enumerate(indices)), batch)

    def store_submission(self, submission: Submission) -> Job:
        """Store a prepared submission; returns once it is on disk. Needs no lock: the store may write
        it together with other submissions (one transaction for all), and it is put in the index and its
        batch as it is stored, before anything else can change it."""
        def stored(added: list[Job]) -> None:
            with self._history_lock:
                for job in added:
                    self.index.put(job)
                    self.history.join(job.id, submission.batch)  # an array is a batch of its own kind

        added = self.store.add_jobs(submission.jobs, max_queued=self.max_queued,
                                    max_queued_per_user=self.max_queued_per_user, stored=stored)
        return added[0]

    def transition(self, job: Job, to: JobStatus, *, now: float, message: str = "", **changes: Any) -> Job:
        """Move ``job`` to ``to``; the one function that changes a job's status."""
        if to not in TRANSITIONS[job.status]:
            raise IllegalTransition(f"job {job.id} is {job.status.value}; it cannot become {to.value}")
        # (written out field by field, with identity tests: every start and end comes through here)
        if to is _QUEUED:
            fields: dict[str, Any] = {"status": to, "allocation": None, "stop_reason": None,
                                      "pending_reason": PendingReason.PRIORITY, "pending_message": WAITING_FOR_PASS,
                                      "end_reason": None}
        else:
            fields = {"status": to, "pending_reason": None, "pending_message": None}
            if to is _SCHEDULED:
                if changes.get("allocation") is None:
                    raise ValueError("a job is scheduled onto an allocation")
                fields["attempts"] = job.attempts + 1
                fields["preempted_for"] = None
            elif to is _RUNNING:
                fields["start_time"] = now
                if job.first_start_time is None:
                    fields["first_start_time"] = now
        if job.status is _RUNNING and job.start_time is not None:  # an attempt ends: count its time
            fields["run_s"] = job.run_s + max(0.0, now - job.start_time)
        if to in TERMINAL:
            fields["end_time"] = now
            with self._history_lock:
                self.history.leave(job.id)
            fields["end_reason"] = _END_REASONS[to]
        fields.update(changes)
        new = changed(job, fields)
        event = Event(
            time=now,
            kind=to.value,
            job_id=job.id,
            message=message or f"{job.display_name}: {job.status.value} -> {to.value}",
            data={"from": job.status.value, "to": to.value}
            | ({"allocation": new.allocation.model_dump()} if new.allocation and to in HOLDS_GPUS else {}),
        ) if self.store.keeps_events else None
        self.store.save_job(new, event)
        self.index.put(new)
        return new

    def update(self, job: Job, *, now: float, kind: str, message: str, **changes: Any) -> Job:
        """Change fields other than the status, with an event row."""
        if "status" in changes:
            raise ValueError("use transition() to change a job's status")
        new = changed(job, changes)
        event = Event(time=now, kind=kind, job_id=job.id, message=message) if self.store.keeps_events else None
        self.store.save_job(new, event)
        self.index.put(new)
        return new

    def set_pending(self, job: Job, reason: PendingReason, message: str) -> Job:
        """Record why a queued job waits. Not an event: it is re-derived on every pass."""
        if job.status != _QUEUED:
            raise IllegalTransition(f"job {job.id} is {job.status.value}; only queued jobs wait")
        if (job.pending_reason, job.pending_message) == (reason, message):
            return job
        new = changed(job, {"pending_reason": reason, "pending_message": message})
        self.store.save_job(new, None)
        if self.index.get(job.id) is job:  # then only the reason differs from what the index holds
            self.index.put_reason(new)
        else:
            self.index.put(new)
        return new

    def set_priority(self, job_id: int, priority: int, *, now: float) -> Job:
        if not 1 <= priority <= 10:
            raise ValueError(f"priority must be between 1 and 10, not {priority}")
        job = self.get(job_id)
        if job.status != JobStatus.QUEUED:
            raise IllegalTransition(
                f"job {job_id} is {job.status.value}; only a queued job's priority can change"
            )
        return self.update(
            job,
            now=now,
            kind="priority",
            message=f"{job.display_name}: priority {job.priority} -> {priority}",
            priority=priority,
        )

    def finish(self, job: Job, exit_code: int | None, *, now: float, note: str = "", lost: bool = False) -> Job:
        """Record the end of a running attempt; requeue it with a backoff while retries remain.

        ``lost``: the executor lost the job (its tmux server or window went away), which is not the
        job's failure: unless it exited 0 or was being stopped, it is requeued at once and the attempt
        is not counted, so no retry is used. The job's record is written before its user's fair-share
        usage, so that a failed write (the caller keeps the end and tries again) never charges twice."""
        batch = self.history.batch_of(job.id)  # looked up now: a job that ends leaves its batch

        def detail() -> str:  # built where it is read: a completion's words go only into its event
            code = "no exit code (the job vanished)" if exit_code is None else f"exit code {exit_code}"
            return f"{job.display_name}: {code}" + (f"; {note}" if note else "")

        stop = job.stop_reason
        if stop is None and exit_code == 0:  # (first: most ends) a run that ended by itself, and well
            new = self.transition(job, _COMPLETED, now=now, exit_code=0,
                                  message=detail() if self.store.keeps_events else "")
            with self._history_lock:
                if self.history.record_job(new, batch):  # what estimates learn from
                    self._reestimate(batch, now)
        elif stop == StopReason.COMPLETE:
            asked = job.exit_code if job.exit_code is not None else 0
            status = JobStatus.COMPLETED if asked == 0 else JobStatus.FAILED
            new = self.transition(job, status, now=now, exit_code=asked, stop_reason=None,
                                  message=f"{detail()}; marked {status.value} by hand (exit code {asked})")
        elif stop == StopReason.CANCEL:
            new = self.transition(job, JobStatus.CANCELLED, now=now, message=f"{detail()}; cancelled",
                                  exit_code=exit_code, stop_reason=None)
        elif stop == StopReason.PREEMPT:
            new = self.transition(job, JobStatus.QUEUED, now=now, exit_code=exit_code, preemptions=job.preemptions + 1,
                                  message=f"{detail()}; preempted and requeued (attempt {job.attempts} counted, "
                                  "no retry used)")
        elif stop == StopReason.TIME_LIMIT:
            new = self.transition(job, JobStatus.FAILED, now=now, exit_code=exit_code, stop_reason=None,
                                  end_reason=EndReason.TIMEOUT,
                                  message=f"{detail()}; stopped at its time limit of {job.time_limit_s:g} s (TIMEOUT)")
        elif lost and job.interactive:  # its window was its terminal: nothing to start again
            new = self.transition(job, JobStatus.FAILED, now=now, exit_code=exit_code,
                                  message=f"{detail()}; its window went away, and an interactive job ends with it")
        elif lost and job.losses + 1 >= MAX_LOSSES:
            new = self.transition(job, JobStatus.FAILED, now=now, exit_code=exit_code, losses=job.losses + 1,
                                  message=f"{detail()}; lost by the executor {job.losses + 1} times (its tmux server or "
                                  "window went away): failed rather than started again; a job that kills its own "
                                  "wrapper, window or tmux server ends this way")
        elif lost:
            new = self.transition(job, JobStatus.QUEUED, now=now, exit_code=exit_code, attempts=max(0, job.attempts - 1),
                                  losses=job.losses + 1,
                                  message=f"{detail()}; lost by the executor (its tmux server or window went away), "
                                  f"not by the job: requeued, attempt not counted, no retry used "
                                  f"(loss {job.losses + 1} of {MAX_LOSSES})")
        else:
            new = self.fail_attempt(job, now=now, exit_code=exit_code, why=detail())
        self._charge_usage(job, now)
        return new

    def _reestimate(self, batch: Batch | None, now: float) -> None:
        """A job of ``batch`` completed and the batch reached 1, 2, 4, 8, ... finished jobs: estimate its
        waiting members again from what they ran (never a user's own estimate). O(members), at most
        log2(batch size) times per batch."""
        if batch is None or self.estimator is None:
            return
        for job_id in list(batch.members):
            job = self.index.get(job_id)
            if job is None or job.status != JobStatus.QUEUED or job.est_source == EstimateSource.USER:
                continue
            estimate, source = self.estimator(job, self.history, batch)
            if (estimate, source) != (job.est_duration_s, job.est_source):
                old = "none" if job.est_duration_s is None else f"{job.est_duration_s:.0f} s"
                new = "none" if estimate is None else f"{estimate:.0f} s"
                self.update(job, now=now, kind="estimate", est_duration_s=estimate, est_source=source,
                            message=f"{job.display_name}: estimate {old} -> {new}, from {batch.finished} "
                            "finished job(s) of its batch")

    def fail_attempt(self, job: Job, *, now: float, exit_code: int | None, why: str) -> Job:
        """A failed attempt (or a failed start): retry after a backoff, or fail for good. Attempts
        ended by preemption were not the job's failure and use up no retry."""
        failures = job.attempts - job.preemptions
        if failures <= job.max_retries:
            delay = self.backoff.delay(failures)
            retry = f"retry {failures}/{job.max_retries} after {delay:g} s backoff ({why})"
            return self.transition(job, JobStatus.QUEUED, now=now, message=retry, exit_code=exit_code,
                                   not_before=now + delay, pending_reason=PendingReason.BEGIN_TIME,
                                   pending_message=retry)
        return self.transition(job, JobStatus.FAILED, now=now, exit_code=exit_code,
                               message=f"{why}; no retries left")

    def _charge_usage(self, job: Job, now: float) -> None:
        """Add the attempt's GPU-seconds to its user's usage. Called once the end is stored: if this
        write fails, the attempt goes uncharged (and says so in the log) rather than the end being
        recorded twice."""
        if job.start_time is None:
            return
        try:
            value, as_of = self.store.get_usage().get(job.user, (0.0, now))
            charged = decayed(value, now - as_of, self.usage_half_life_s) + job.gpu_count * (now - job.start_time)
            self.store.set_usage(job.user, charged, now)
        except Exception:
            log.exception("job %s ended but its GPU time could not be added to %s's fair-share usage", job.id, job.user)
