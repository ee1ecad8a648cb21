"""Typed tools on jobs: submit, read, list, cancel, reprioritise, complete, explain; the queue in order.

Times (``begin_at``) are written as people write them (``22:00``, ``+3h``, ``2026-11-30 22:00``,
``now``; see ``tools.timespec``) or given as Unix seconds, and read here on the orchestrator's clock.
"""

from __future__ import annotations

import pwd
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from itertools import islice
from typing import Annotated, Iterator, Mapping

from pydantic import BaseModel, Field

from policies.admission import reservations_against
from policies.ordering import Policy
from policies.plan import estimate_starts
from policies.snapshot import Snapshot
from tools.door.context import Args, PermissionDenied, ToolContext
from tools.logs import MAX_LOG_CHUNK, read_log
from tools.models import (
    ACTIVE,
    HOLDS_GPUS,
    MAX_ARRAY_TASKS,
    MAX_GPUS_PER_JOB,
    MAX_ID,
    MAX_TIME,
    EndReason,
    Event,
    IdempotencyKey,
    Job,
    JobId,
    JobRequest,
    JobSpec,
    JobStatus,
    JobUsage,
    UserName,
    assembled,
)
from tools.queue import IllegalTransition, QueueStats
from tools.store import AlreadySubmitted
from tools.timespec import local_time, parse_end, parse_time


def when(name: str, value: str | float, now: float, *, start: float | None = None) -> float:
    """A time argument in Unix seconds (the end of a window counts from its ``start``); a ValueError
    names the argument."""
    try:
        t = parse_time(value, now) if start is None else parse_end(value, start, now)
    except (ValueError, OverflowError) as exc:  # OverflowError: "+99999999d"
        raise ValueError(f"{name}: {exc}") from None
    if not 0 <= t <= MAX_TIME:
        raise ValueError(f"{name}: {value!r} is out of range; a time must fall before the year 3000")
    return t


@dataclass(frozen=True)
class Outlook:
    """The queue as the scheduler sees it now: the policy's order and each waiting job's estimated start."""

    snapshot: Snapshot
    policy: str
    order: list[Job]
    starts: Mapping[int, float]  # job id -> estimated start (Unix seconds); absent when it cannot be planned

    def position(self, job_id: int) -> int | None:
        return next((i for i, j in enumerate(self.order, start=1) if j.id == job_id), None)


def outlook(ctx: ToolContext) -> Outlook:
    """The plan of every waiting job in the policy's order, else the last pass's backfill plan. A stopped
    scheduler starts nothing, so then nothing has an estimated start. The planning reads only the
    (immutable) snapshot, so it runs outside the lock, as a tick's decision does."""
    snapshot, policy, planned, enabled = _now(ctx)
    order = policy.order(snapshot)
    starts = {**planned, **estimate_starts(snapshot, order)} if enabled else {}
    return Outlook(snapshot, policy.name, order, starts)


def _now(ctx: ToolContext) -> tuple[Snapshot, Policy, Mapping[int, float], bool]:
    """The scheduler's state for a reader, taken without the orchestrator's lock, so that no read waits
    behind a pass or a write stuck on the database: the snapshot's parts are immutable versions (the
    queue index's view, tuples) or maps only ever read by key, and the plan and policy are replaced
    whole, never changed in place."""
    orch = ctx.orchestrator
    return orch.snapshot(), orch.policy, orch.planned, orch.enabled


def _me(ctx: ToolContext) -> str:
    """The acting user, for ``mine``; ValueError when the door does not know who is asking."""
    if ctx.actor.user is None:
        raise ValueError("mine: the server does not know who you are (over TCP, send your token; see `herd token`)")
    return ctx.actor.user


# -- reading ------------------------------------------------------------------------------------
class ListQueue(Args):
    """The waiting and running jobs in scheduling order, each waiting job with its reason."""

    user: str | None = Field(description="Only this user's jobs; null for everyone's.")
    mine: bool = Field(False, description="Only the acting user's jobs.")


class QueueEntry(BaseModel):
    position: int | None  # 1 = considered first; None for jobs that already hold GPUs
    job: Job
    estimated_start: float | None = None  # a waiting job's planned start (Unix seconds); None: cannot plan it


class QueueView(BaseModel):
    policy: str
    jobs: list[QueueEntry]
    stats: QueueStats
    next: int | None = Field(None, description="More jobs follow: pass this as cursor for the next page; null: "
                             "this was the last page.")


QUEUE_PAGE = 500  # jobs in a page of the queue, unless asked otherwise
MAX_PAGE = 1000  # the largest page of jobs anyone may ask for


class QueueGone(LookupError):
    """The job a page of the queue was to continue after has left the queue."""


def list_queue(ctx: ToolContext, args: ListQueue) -> QueueView:
    return page_of_queue(ctx, args, limit=None)


def page_of_queue(ctx: ToolContext, args: ListQueue, *, limit: int | None = QUEUE_PAGE,
                  cursor: int | None = None) -> QueueView:
    """The running jobs, then the waiting ones in the policy's order, a page at a time: the ``limit`` jobs
    (all if None) after job ``cursor`` (the last one of the page before; from the start if None).

    Read from the queue's index (kept up to date by every change) without the scheduler's lock, and only
    as far as the page reaches: the policy's order is merged lazily from its sorted groups, only the jobs
    up to the page's end are planned (a plan takes them in order, so a prefix is planned as the whole
    would be), and the stats are totals kept on every change. A first page costs the same however long
    the queue."""
    snapshot, policy, planned, enabled = _now(ctx)
    user = _me(ctx) if args.mine else args.user
    order = _walk(snapshot, policy)
    prefix: list[Job] = []  # the waiting jobs walked, whoever's: what the plan needs

    def everyone():
        for job in snapshot.holding:
            yield None, job
        for place, job in enumerate(order, start=1):
            prefix.append(job)
            yield place, job

    chosen = ((place, job) for place, job in everyone() if user is None or job.user == user)
    if cursor is not None:
        if next((True for _, job in chosen if job.id == cursor), None) is None:
            raise QueueGone(f"cursor: job {cursor} is no longer in the queue; list it again from the start")
    page = []
    for found in chosen:
        if limit is not None and len(page) == limit:
            more = True
            break
        page.append(found)
    else:
        more = False
    starts = {**planned, **estimate_starts(snapshot, prefix)} if enabled else {}
    entries = [QueueEntry(position=place, job=ctx.shown(job),
                          estimated_start=None if place is None else starts.get(job.id)) for place, job in page]
    return QueueView(policy=policy.name, jobs=entries, stats=ctx.core.queue.stats(snapshot.now),
                     next=entries[-1].job.id if more and entries else None)


class GetJob(Args):
    """One job's whole record: status, allocation, exit code, attempts, times and pending reason; for a
    waiting job also its place in line and estimated start."""

    job_id: JobId = Field(description="The job's id.")


class JobDetail(Job):
    position: int | None = None  # in the scheduling order, for a queued job
    estimated_start: float | None = None  # a queued job's planned start (Unix seconds); None: cannot plan it
    node: str | None = None  # where it runs or ran (a gang job: its rank 0's node); None: it never started
    gpu_usage: JobUsage | None = None  # its GPUs' mean and peak utilization and memory over its run; None: unmeasured


def get_job(ctx: ToolContext, args: GetJob) -> JobDetail:
    job = ctx.core.queue.get(args.job_id)
    node = job.allocation.node if job.allocation is not None else None
    usage = ctx.core.store.job_usage([job.id]).get(job.id)
    if job.status != JobStatus.QUEUED:
        return ctx.shown(JobDetail(**job.model_dump(), node=node, gpu_usage=usage))
    snapshot, policy, planned, enabled = _now(ctx)
    position = _position(snapshot, policy, job.id)
    start = None
    if enabled and position is not None:  # planned as the queue's page plans it: the jobs before it, then it
        start = estimate_starts(snapshot, islice(_walk(snapshot, policy), position)).get(job.id, planned.get(job.id))
    return ctx.shown(JobDetail(**job.model_dump(), position=position, estimated_start=start, node=node,
                               gpu_usage=usage))


JOBS_PAGE = 100  # jobs in a page of the history, unless asked otherwise


class ListJobs(Args):
    """Jobs of any status, finished ones too, newest first, a page at a time."""

    statuses: list[JobStatus] | None = Field(None, description="Only these statuses; null for all.")
    user: str | None = Field(None, description="Only this user's jobs; null for everyone's.")
    limit: int = Field(JOBS_PAGE, ge=1, le=MAX_PAGE, description="At most this many jobs (the newest).")
    cursor: JobId | None = Field(None, description="Only jobs older than this one: the next of the page before.")
    name: str | None = Field(None, max_length=200, description="Only jobs of this name; null for any.")
    array_id: JobId | None = Field(None, description="Only the tasks of this array; null for any job.")
    end_reason: EndReason | None = Field(None, description="Only jobs that ended so (timeout: at their time limit).")
    mine: bool = Field(False, description="Only the acting user's jobs.")


class JobPage(BaseModel):
    jobs: list[Job] = Field(description="Newest first.")
    next: int | None = Field(description="Older jobs follow: pass this as cursor for the next page; null: this "
                             "was the last page.")


def list_jobs(ctx: ToolContext, args: ListJobs) -> JobPage:
    """One page, read from the store a page at a time: its cost does not grow with the history."""
    found = ctx.core.store.page_jobs(statuses=args.statuses, user=_me(ctx) if args.mine else args.user,
                                     before=args.cursor, limit=args.limit + 1, name=args.name, array_id=args.array_id,
                                     end_reason=args.end_reason.value if args.end_reason else None)
    page = found[:args.limit]
    return JobPage(jobs=[ctx.shown(j) for j in page], next=page[-1].id if len(found) > args.limit else None)


class JobEvents(Args):
    """Everything that happened to a job, oldest first."""

    job_id: JobId = Field(description="The job's id.")


def job_events(ctx: ToolContext, args: JobEvents) -> list[Event]:
    ctx.core.queue.get(args.job_id)  # JobNotFound for an unknown job
    return ctx.core.store.events(job_id=args.job_id)


class JobWindow(BaseModel):
    """Where a running job's tmux window is, for its owner or an administrator to attach to on its node."""

    job_id: int
    node: str = Field(description="The node it runs on: `herd attach` runs tmux there.")
    socket: str = Field(description="The tmux server's socket (tmux -S SOCKET).")
    session: str
    window: str
    interactive: bool = Field(description="Its window is its terminal (herd run): its owner may type into it.")


class JobHasNoWindow(IllegalTransition):
    """The job runs in no window (it is not running, or its executor has none)."""


def job_window(ctx: ToolContext, args: GetJob) -> JobWindow:
    job = ctx.core.queue.get(args.job_id)
    ctx.check_owner(job)  # its window shows its output: its owner's and the administrators'
    if job.status != JobStatus.RUNNING or job.allocation is None:
        raise IllegalTransition(f"job {job.id} is {job.status.value}; it has a window only while it runs "
                                f"(herd logs -f {job.id} follows its output)")
    where = getattr(ctx.core.executor, "window", None)
    found = where(job.id) if where is not None else None
    if found is None:
        raise JobHasNoWindow(f"job {job.id} runs in no tmux window this server knows of")
    socket, session, window = found
    return JobWindow(job_id=job.id, node=job.allocation.node, socket=socket, session=session, window=window,
                     interactive=job.interactive)


MAX_LOG_LINES = 1_000_000
MAX_OFFSET = 2**63 - 1  # a file offset


class JobLogs(Args):
    """A job's stdout and stderr: the last lines, or what was written from an offset on, a chunk at a time
    (at most 1 MiB); without either, the last MiB from its first whole line."""

    job_id: JobId = Field(description="The job's id.")
    tail: int | None = Field(None, ge=0, le=MAX_LOG_LINES, description="Only the last this many lines.")
    offset: int | None = Field(None, ge=0, le=MAX_OFFSET, description="Only the bytes from here on (to follow a log).")
    length: int | None = Field(None, ge=1, le=MAX_LOG_CHUNK, description="At most this many bytes (1 MiB if not "
                               "given); with offset, a page of the log.")
    rank: int | None = Field(None, ge=0, le=MAX_GPUS_PER_JOB, description="A gang job's part (its node rank): "
                             "only its log. Without it, every part's (each after a header), or rank 0's with offset.")


class JobLog(BaseModel):
    job_id: int
    status: JobStatus
    path: str | None
    text: str
    offset: int = Field(0, description="Where text begins in the log, in bytes: above 0, text is not the whole log.")
    next_offset: int = Field(description="Pass as offset to get only what was written after this.")
    size: int = Field(description="The log's size now, in bytes: text is all of it when offset is 0 and next_offset "
                      "is size.")


def job_logs(ctx: ToolContext, args: JobLogs) -> JobLog:
    job = ctx.core.queue.get(args.job_id)
    ctx.check_reader(job)
    reader = getattr(ctx.core.executor, "read_log", None)  # an executor over many nodes reads it where it is
    if not job.log_path:
        chunk = None
    elif reader is not None:
        chunk = reader(job, tail=args.tail, offset=args.offset, length=args.length, rank=args.rank)
    else:
        chunk = read_log(Path(job.log_path), tail=args.tail, offset=args.offset, length=args.length)
    return JobLog(
        job_id=job.id, status=job.status, path=job.log_path, text=chunk.text if chunk else "",
        offset=chunk.offset if chunk else (args.offset or 0),
        next_offset=chunk.next_offset if chunk else (args.offset or 0), size=chunk.size if chunk else 0,
    )


# -- changing -----------------------------------------------------------------------------------
class Submitted(BaseModel):
    job_id: int
    status: JobStatus
    position: int | None
    not_before: float | None = None  # the begin time it waits for (Unix seconds), if any
    # Only for an array (left out otherwise, so a job's answer keeps the seed's shape):
    array_id: int | None = Field(None, exclude_if=lambda v: v is None, description="An array's id (its first "
                                 "task's job id, job_id here); absent for a job that is no array.")
    tasks: int | None = Field(None, exclude_if=lambda v: v is None, description="How many tasks the array has: "
                              "jobs array_id to array_id + tasks - 1.")
    replayed: bool = Field(False, exclude=True)  # the answer to a retry: the job the first try made


class KeyReused(ValueError):
    """An idempotency key came back with a different request."""


def check_unix_user(user: str) -> None:
    """Jobs run as their owners here, so an owner must be a Unix user of this node."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"user {user} does not exist on this server, and jobs run as their owner's Unix user") from None


def check_cwd(cwd: str | None) -> None:
    """A job's working directory must exist here; found now, not when the job finally starts."""
    if cwd is None:
        return
    path = Path(cwd)
    if not path.is_absolute():
        raise ValueError(f"cwd must be an absolute path, not {cwd!r}")
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, an embedded NUL
        raise ValueError(f"cwd is not a usable path here ({getattr(exc, 'strerror', None) or exc})") from None
    if not is_dir:
        raise ValueError(f"cwd {cwd} is not an existing directory on this server")


_SPEC_FIELDS = tuple(JobSpec.model_fields)
_OPTIONAL_SPEC_FIELDS = frozenset(name for name, field in JobSpec.model_fields.items() if not field.is_required())
_REQUEST_FIELDS = set(JobRequest.model_fields) - {"begin_at"}
_OWNER = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # UserName's length and pattern, matched whole


def spec_of(request: JobRequest, owner: str, begin_at: float | None, idempotency: IdempotencyKey | None) -> JobSpec:
    """The spec of a validated ``request``, as ``JobSpec(user=owner, begin_at=..., **request's fields)``
    makes it, without checking the request's fields a second time (a quarter of ``queue_job`` in a replay).
    Only the owner is new to check (``begin_at`` comes from ``when``, the key from the door): a name the
    quick match refuses goes through full validation, whose error names ``user``."""
    given = request.__dict__  # a front door's body may say more (REST: user); only the spec's fields are read
    added = {"user": owner, "begin_at": None if begin_at is None else float(begin_at), "idempotency": idempotency}
    if request.interactive:
        added["max_retries"] = 0  # a terminal session is not started again by itself
    if not (isinstance(owner, str) and _OWNER.fullmatch(owner)):
        return JobSpec(**{**request.model_dump(include=_REQUEST_FIELDS), **added})
    values = {name: added[name] if name in added else given[name] for name in _SPEC_FIELDS}
    values["env"] = dict(values["env"])  # the spec's own, as validation copies it
    # as validation marks them: a null optional field counts as not given
    fields_set = {name for name, value in values.items() if value is not None or name not in _OPTIONAL_SPEC_FIELDS}
    return assembled(JobSpec, values, fields_set)


def submit_job(ctx: ToolContext, request: JobRequest, *, user: str | None = None,
               idempotency_key: str | None = None) -> Submitted:
    """Queue ``request`` for the actor, or for ``user`` when an administrator names one; say where it stands.

    With an ``idempotency_key`` (REST's ``Idempotency-Key``), a retry by the same acting user gets the job
    its first try made instead of a second one; the key is saved with the job, in its transaction, so a
    retry after a crash finds it. The same key with a different request is refused (``KeyReused``)."""
    key = None
    if idempotency_key is not None:
        key = IdempotencyKey(scope=ctx.actor.user or "", key=idempotency_key, fingerprint=_fingerprint(request, user))
        earlier = ctx.core.store.find_submission(key.scope, key.key)
        if earlier is not None:
            return _replayed(ctx, key, *earlier)
    try:
        job = queue_job(ctx, request, user=user, idempotency=key)
    except AlreadySubmitted as exc:  # a retry that raced its first try: the store let one of them in
        assert key is not None
        return _replayed(ctx, key, exc.fingerprint, exc.job_id)
    return _submitted(ctx, job)


def _submitted(ctx: ToolContext, job: Job, *, replayed: bool = False) -> Submitted:
    return Submitted(job_id=job.id, status=job.status, position=queue_position(ctx, job.id), not_before=job.not_before,
                     array_id=job.array_id, tasks=job.array_size, replayed=replayed)


def _fingerprint(request: JobRequest, user: str | None) -> str:
    body = {"request": request.model_dump(mode="json"), "user": user}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replayed(ctx: ToolContext, key: IdempotencyKey, fingerprint: str, job_id: int) -> Submitted:
    if fingerprint != key.fingerprint:
        raise KeyReused(f"Idempotency-Key: {key.key!r} was already used for another submission (job {job_id}); "
                        "send a new key with a new job")
    return _submitted(ctx, ctx.core.queue.get(job_id), replayed=True)


def queue_job(ctx: ToolContext, request: JobRequest, *, user: str | None = None,
              idempotency: IdempotencyKey | None = None) -> Job:
    """``submit_job`` without working out the new job's place in line (a replay submits thousands)."""
    owner = ctx.owner(user)
    if ctx.core.owners_must_exist:
        check_unix_user(owner)
    check_cwd(request.cwd)
    if request.interactive:
        _check_interactive(ctx)
    begin_at = None if request.begin_at is None else when("begin_at", request.begin_at, ctx.core.clock.now())
    job = ctx.orchestrator.submit(spec_of(request, owner, begin_at, idempotency))
    if owner != ctx.actor.user and ctx.core.owners_must_exist:  # elsewhere a named user is only a label
        ctx.record(f"submitted job {job.id} for {owner}", job.id)
    ctx.core.changed()
    return job


def _check_interactive(ctx: ToolContext) -> None:
    """An interactive job is for someone who attaches to its window (``herd run``)."""
    if ctx.actor.via == "chat":
        raise ValueError("interactive: a terminal session is started with `herd run`, which attaches you to it")
    if ctx.core.owners_must_exist and not ctx.actor.admin:
        raise ValueError("interactive: its terminal is a window of the server's tmux, which on a shared server is "
                         "root's, so you could not attach to it; use herd submit (and herd logs -f)")


def queue_position(ctx: ToolContext, job_id: int) -> int | None:
    """A waiting job's place in the policy's order (None for any other job): counted by the policy in its
    sorted groups where it can (``position``), without ordering the queue."""
    snapshot, policy, _, _ = _now(ctx)
    return _position(snapshot, policy, job_id)


def _position(snapshot: Snapshot, policy: Policy, job_id: int) -> int | None:
    job = snapshot.jobs_by_id.get(job_id)
    if job is None or job.status != JobStatus.QUEUED:
        return None
    position = getattr(policy, "position", None)
    if position is not None:
        return position(snapshot, job)
    return next((i for i, j in enumerate(policy.order(snapshot), start=1) if j.id == job_id), None)


def _walk(snapshot: Snapshot, policy: Policy) -> Iterator[Job]:
    """The policy's order, worked out only as far as it is read where the policy can (``walk``)."""
    walk = getattr(policy, "walk", None)
    return walk(snapshot) if walk is not None else iter(policy.order(snapshot))


class CancelJob(Args):
    """Cancel a job: a queued one is withdrawn; a running one gets SIGTERM, a grace period, then SIGKILL."""

    job_id: JobId = Field(description="The job's id.")


def cancel_job(ctx: ToolContext, args: CancelJob) -> Job:
    ctx.check_owner(ctx.core.queue.get(args.job_id))
    job = ctx.orchestrator.cancel(args.job_id)
    ctx.record(f"cancel job {job.id}", job.id)
    ctx.core.changed()
    return job


MAX_CANCEL_REFS = 1000
_TASK_REF = re.compile(r"^(\d{1,19})(?:_(\d{1,7}))?$")
CANCELLABLE = tuple(s for s in JobStatus if s in ACTIVE)


class CancelJobs(Args):
    """Cancel many jobs at once (like Slurm's scancel): the jobs named, and/or every active job that
    matches all the filters given. Queued jobs are withdrawn; running ones get SIGTERM, a grace period,
    then SIGKILL."""

    jobs: list[Annotated[str, Field(max_length=30)]] = Field(
        default_factory=list, max_length=MAX_CANCEL_REFS,
        description="Job ids; an array's id (its first task's) stands for every task of the array, and '12_3' "
        "for task 3 of array 12.")
    user: UserName | None = Field(None, description="Only this user's jobs.")
    name: str | None = Field(None, max_length=200, description="Only jobs of this name.")
    states: list[JobStatus] | None = Field(None, max_length=3, description="Only jobs in these states "
                                           "(queued, scheduled, running).")
    mine: bool = Field(False, description="Only the acting user's jobs.")


class Cancelled(BaseModel):
    cancelled: list[int] = Field(description="Queued jobs withdrawn.")
    stopping: list[int] = Field(description="Running jobs being stopped: SIGTERM now, SIGKILL after the grace period.")
    refused: list[str] = Field(description="One sentence per named job that was not cancelled, and why.")


def cancel_jobs(ctx: ToolContext, args: CancelJobs) -> Cancelled:
    """Every job the arguments select that the actor may act on; a named job that cannot be cancelled (no such
    job, someone else's, already ended) is told in ``refused`` and the others go ahead. Filters alone act
    only on active jobs, and, for someone who is not an administrator, only on their own."""
    states = set(args.states or CANCELLABLE)
    if not states <= set(CANCELLABLE):
        ended = ", ".join(sorted(s.value for s in states - set(CANCELLABLE)))
        raise ValueError(f"states: only active jobs can be cancelled, not {ended} ones")
    user = _me(ctx) if args.mine else args.user
    filtered = user is not None or args.name is not None or args.states is not None
    if not args.jobs and not filtered:
        raise ValueError("say which jobs to cancel: their ids, or a user, a name or states to match")
    if user is not None and not ctx.actor.admin and user != ctx.actor.user:
        raise PermissionDenied(f"{ctx.actor} may cancel only their own jobs, not {user}'s")
    refused: list[str] = []
    chosen: dict[int, Job] = {}
    active = None
    if args.jobs:
        for ref in dict.fromkeys(args.jobs):
            try:
                found, active = _resolve(ctx, ref, active)
            except LookupError as exc:
                refused.append(str(exc))
                continue
            chosen.update((j.id, j) for j in found)
    else:
        active = ctx.core.queue.active()
        mine = None if ctx.actor.admin else ctx.actor.user
        chosen = {j.id: j for j in active if mine is None or j.user == mine}
    cancelled, stopping = [], []
    # Under the scheduler's lock, waiting jobs first: no pass starts a job (an array's next task) in between.
    with ctx.orchestrator.lock:
        for job in sorted(chosen.values(), key=lambda j: (j.status != JobStatus.QUEUED, j.id)):
            if (user is not None and job.user != user) or (args.name is not None and job.name != args.name) \
                    or (args.states is not None and job.status not in states):
                continue  # a named job that has ended is not skipped: cancel says so
            try:
                ctx.check_owner(job)
                done = ctx.orchestrator.cancel(job.id)
            except (PermissionDenied, IllegalTransition) as exc:
                refused.append(str(exc))
                continue
            ctx.record(f"cancel job {done.id}", done.id)
            (cancelled if done.status == JobStatus.CANCELLED else stopping).append(done.id)
    if cancelled or stopping:
        ctx.core.changed()
    return Cancelled(cancelled=cancelled, stopping=stopping, refused=refused)


def _resolve(ctx: ToolContext, ref: str, active: list[Job] | None) -> tuple[list[Job], list[Job] | None]:
    """The jobs ``ref`` names (``12``: job 12, or every active task of array 12; ``12_3``: task 3 of array
    12), and the active jobs read on the way (read once for many references). LookupError says why none."""
    match = _TASK_REF.match(ref.strip())
    if match is None:
        raise LookupError(f"{ref!r} is not a job id (12) or an array task (12_3)")
    job_id, index = int(match[1]), match[2]
    job = ctx.core.queue.get(job_id) if 0 < job_id <= MAX_ID else None  # JobNotFound is a LookupError
    if job is None:
        raise LookupError(f"no job {job_id}")
    if job.array_id != job_id:  # a job, or a task named by its own id
        if index is not None:
            raise LookupError(f"job {job_id} is not an array")
        return [job], active
    if active is None:
        active = ctx.core.queue.active()
    tasks = [j for j in active if j.array_id == job_id and (index is None or j.array_index == int(index))]
    if tasks:
        return tasks, active
    if index is None:
        raise LookupError(f"array {job_id}: every task has ended; there is nothing to cancel")
    found = ctx.core.store.page_jobs(array_id=job_id, limit=MAX_ARRAY_TASKS)
    task = next((j for j in found if j.array_index == int(index)), None)
    if task is None:
        raise LookupError(f"array {job_id} has no task {index}")
    return [task], active  # ended: cancel says so


class SetPriority(Args):
    """Change a queued job's priority (1 lowest to 10 highest)."""

    job_id: JobId = Field(description="The job's id.")
    priority: int = Field(ge=1, le=10, description="The new priority, 1 to 10.")


def set_priority(ctx: ToolContext, args: SetPriority) -> Job:
    ctx.check_owner(ctx.core.queue.get(args.job_id))
    job = ctx.orchestrator.set_priority(args.job_id, args.priority)
    ctx.record(f"priority of job {job.id} to {args.priority}", job.id)
    ctx.core.changed()
    return job


class CompleteJob(Args):
    """Mark a running job finished by hand: it is stopped, and recorded (its GPUs freed) once its processes are gone."""

    job_id: JobId = Field(description="The job's id.")
    exit_code: int = Field(0, ge=-(2**31), le=2**31 - 1, description="The exit code to record; 0 means completed.")


def complete_job(ctx: ToolContext, args: CompleteJob) -> Job:
    ctx.check_owner(ctx.core.queue.get(args.job_id))
    job = ctx.orchestrator.complete(args.job_id, args.exit_code)
    ctx.record(f"complete job {job.id} with exit code {args.exit_code}", job.id)
    ctx.core.changed()
    return job


# -- explaining ---------------------------------------------------------------------------------
class ExplainJob(Args):
    """Why a job waits (or what it is doing), from the scheduler's own pending reason, never guessed; for a
    waiting job also its place in line, estimated start, priority factors and its user's and group's quota."""

    job_id: JobId = Field(description="The job's id.")


class FactorView(BaseModel):
    name: str
    value: float  # the factor before weighting
    weight: float
    points: float  # value x weight
    detail: str


class QuotaUse(BaseModel):
    name: str  # the user or the group
    quota: int | None  # GPUs at once; None: no limit
    in_use: int  # GPUs its jobs hold now


class Explanation(BaseModel):
    job_id: int
    user: str
    status: JobStatus
    gpu_count: int
    position: int | None  # in the scheduling order, for a queued job
    reason: str | None  # Slurm-style code: Priority, Resources, BeginTime, Dependency, QuotaExceeded, ...
    message: str  # the scheduler's words, or what the job is doing
    policy: str  # the policy that orders the queue now
    estimated_start: float | None = None  # a queued job's planned start (Unix seconds); None: cannot plan it
    factors: list[FactorView] | None = None  # the multifactor priority of a queued job; None otherwise
    total: float | None = None  # the sum of the factors' points: higher goes first
    note: str | None = None  # says when the factors are not what orders the queue
    user_quota: QuotaUse | None = None
    group_quota: QuotaUse | None = None  # None when the user has no group
    reservations: list[str] = Field(default_factory=list, description="The reservations that bear on a waiting "
                                    "job, one sentence each: those for its user or group, and those that keep GPUs "
                                    "from it while it would run, with their ends.")


def explain_job(ctx: ToolContext, args: ExplainJob) -> Explanation:
    job = ctx.core.queue.get(args.job_id)
    base = dict(job_id=job.id, user=job.user, status=job.status, gpu_count=job.gpu_count,
                reason=job.pending_reason.value if job.pending_reason else None)
    if job.status != JobStatus.QUEUED:
        if job.status in HOLDS_GPUS and job.allocation is not None:
            message = f"{job.status.value} on {job.allocation.describe()}"
        else:
            message = job.status.value + (f" with exit code {job.exit_code}" if job.exit_code is not None else "")
        return Explanation(**base, position=None, message=message, policy=ctx.orchestrator.policy.name)
    plan = outlook(ctx)
    multifactor = ctx.core.multifactor
    priority = multifactor.explain(plan.snapshot, job)
    rules = plan.snapshot.rules
    users, groups = plan.snapshot.in_use
    group = rules.group_of(job.user)
    note = None
    if plan.policy != multifactor.name:
        note = f"the queue is ordered by the {plan.policy} policy; these factors are how {multifactor.name} would rank it"
    return Explanation(
        **base, position=plan.position(job.id), message=job.pending_message or "", policy=plan.policy,
        estimated_start=plan.starts.get(job.id),
        factors=[FactorView(name=f.name, value=f.value, weight=f.weight, points=f.points, detail=f.detail)
                 for f in priority.factors],
        total=priority.total, note=note,
        user_quota=QuotaUse(name=job.user, quota=rules.quota_of_user(job.user), in_use=users.get(job.user, 0)),
        group_quota=None if group is None else QuotaUse(name=group, quota=rules.group_quota.get(group),
                                                        in_use=groups.get(group, 0)),
        reservations=_reservations_bearing_on(plan.snapshot, job),
    )


def _reservations_bearing_on(snapshot: Snapshot, job: Job) -> list[str]:
    """A sentence for each reservation that admits ``job`` or keeps GPUs from it while it would run."""
    now, rules = snapshot.now, snapshot.rules
    group = rules.group_of(job.user)
    against = {r.id for r in reservations_against(snapshot.reservations, job.user, group, now, now + rules.runtime(job),
                                                 preemptible=job.preemptible)}
    said = []
    for r in sorted(snapshot.reservations, key=lambda r: r.start):
        gpus = f"{r.node} GPU(s) {','.join(map(str, r.gpus))}"
        window = f"until {local_time(r.end)}" if r.start <= now else f"from {local_time(r.start)} to {local_time(r.end)}"
        if r.admits(job.user, group):
            said.append(f"reservation {r.id} keeps {gpus} for {r.holder()} (this job may use them) {window}")
        elif r.id in against:
            said.append(f"reservation {r.id} keeps {gpus} for {r.holder()} {window}; this job would still run then, "
                        "so it may not use them")
    return said
