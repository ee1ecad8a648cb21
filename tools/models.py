"""Domain types shared by every part of gpuherd.

Jobs, GPUs and events are immutable pydantic models: a change makes a new value (``model_copy``), so a
snapshot handed to a policy can never change under it.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Mapping, TypeVar

from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, computed_field, field_validator,
                      model_validator)

from tools.notify import JOB_EVENTS, MAX_URL, JobEvent, check_target, read_events


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for GPUs; always carries a pending reason
    SCHEDULED = "scheduled"  # GPUs reserved in the store; the executor is starting it
    RUNNING = "running"  # the executor runs it on its allocation
    COMPLETED = "completed"  # ended with exit code 0
    FAILED = "failed"  # non-zero exit, time limit, lost or unstartable, with no retry left
    CANCELLED = "cancelled"  # stopped or withdrawn by a person


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING})
HOLDS_GPUS = frozenset({JobStatus.SCHEDULED, JobStatus.RUNNING})

# The only legal moves. A failed attempt with retries left goes straight back to QUEUED (with a
# backoff), so FAILED, like every terminal state, is final.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.SCHEDULED, JobStatus.CANCELLED}),
    JobStatus.SCHEDULED: frozenset(
        {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class PendingReason(StrEnum):
    """Why a queued job is not running, in Slurm's vocabulary."""

    PRIORITY = "Priority"  # jobs ahead of it in the policy's order go first
    RESOURCES = "Resources"  # not enough free GPUs on any one node
    BEGIN_TIME = "BeginTime"  # not before a given time (retry backoff, deferred start)
    DEPENDENCY = "Dependency"  # waits for the jobs it runs after
    DEPENDENCY_NEVER = "DependencyNeverSatisfied"  # a job it runs after ended in a way that rules it out
    QUOTA_EXCEEDED = "QuotaExceeded"  # starting it would take its user or group over a GPU quota
    RESERVATION = "Reservation"  # the GPUs that would fit it are reserved for someone else
    HELD = "Held"  # the scheduler is stopped, so nothing new starts
    INFEASIBLE = "Infeasible"  # asks for more GPUs than any node has usable
    ARRAY_TASK_LIMIT = "JobArrayTaskLimit"  # its array already runs as many tasks as its %N allows


class EstimateSource(StrEnum):
    """Where a job's ``est_duration_s`` came from."""

    USER = "user"  # given with the job
    HISTORY = "history"  # predicted from the run times of finished jobs like it (policies/estimates.py)
    DEFAULT = "default"  # nothing to go on: no estimate, and the rules' default run time is assumed


class EndReason(StrEnum):
    """How a job's last attempt ended, beside its status: what the accounting and ``herd jobs --state``
    read (``timeout`` is Slurm's TIMEOUT: stopped at its time limit, status ``failed``)."""

    COMPLETED = "completed"  # exit code 0
    FAILED = "failed"  # a non-zero exit code (or no exit code) with no retry left, or it could not start
    TIMEOUT = "timeout"  # stopped at its time limit
    CANCELLED = "cancelled"  # cancelled by a person


class StopReason(StrEnum):
    """Why the orchestrator is stopping a running job; decides the state it ends in."""

    CANCEL = "cancel"
    TIME_LIMIT = "time_limit"
    PREEMPT = "preempt"  # makes room for a job of higher priority, or a reservation: requeued
    COMPLETE = "complete"  # marked finished by hand; ends with the exit code asked for (kept in exit_code)


class Allocation(BaseModel):
    """GPUs ``gpus`` of ``node``; a multi-node job (eval replays) also holds whole nodes in ``more``."""

    model_config = ConfigDict(frozen=True)

    node: str
    gpus: tuple[int, ...]
    # Further (node, GPUs), each a whole node; left out when empty, so a one-node allocation keeps
    # the shape clients know: {"node", "gpus"}.
    more: tuple[tuple[str, tuple[int, ...]], ...] = Field((), exclude_if=lambda more: not more)

    def cuda_visible_devices(self) -> str:
        """The GPUs on ``node``, as the executor of that node sets them."""
        return ",".join(str(i) for i in self.gpus)

    def pairs(self) -> tuple[tuple[str, int], ...]:
        """Every held GPU as (node, index), on every node."""
        node = self.node
        pairs = [(node, i) for i in self.gpus]
        for n, gpus in self.more:
            pairs += [(n, i) for i in gpus]
        return tuple(pairs)

    @property
    def gpu_count(self) -> int:
        return len(self.gpus) + sum(len(gpus) for _, gpus in self.more)

    def describe(self) -> str:
        """``a GPU(s) 0,1`` or, across nodes, ``a GPU(s) 0,1,2,3 + b GPU(s) 0,1,2,3``."""
        return " + ".join(f"{n} GPU(s) {','.join(map(str, g))}" for n, g in ((self.node, self.gpus), *self.more))


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by the executor for each job; a submission may not override them.
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HERD_JOB_ID", "HERD_ARRAY_JOB_ID",
                          "HERD_ARRAY_TASK_ID", "HERD_ARRAY_TASK_COUNT", "HERD_NODE", "HERD_NODE_RANK", "HERD_NNODES"})

UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]

# -- limits: what a request may ask for, so that every stored job can be started and read back ----------
MAX_ID = 2**63 - 1  # SQLite's INTEGER: a larger id cannot even be looked up
JobId = Annotated[int, Field(ge=1, le=MAX_ID, description="A job's id.")]
# Times are Unix seconds before the year 3000, so that every time can be shown as a local date.
MAX_TIME = 32_503_680_000.0
# Run times and time limits are at most a year (366 days).
MAX_DURATION_S = 366 * 86_400.0
MAX_GPUS_PER_JOB = 4096
MAX_COMMAND = 20_000  # characters
MAX_NAME = 200
MAX_CWD = 4096  # PATH_MAX
# A job's variables go to ``env -i`` as arguments: Linux takes at most 128 KiB per argument and about
# 2 MiB for all of them together, so each value and the whole map stay well inside that.
MAX_ENV_VARS = 128
MAX_ENV_VALUE = 32_768  # bytes (UTF-8)
MAX_ENV_BYTES = 131_072  # all "KEY=VALUE" entries together, in bytes (UTF-8)
MAX_DEPENDENCIES = 32
# An array (``0-109%8``): at most this many tasks (Slurm's default MaxArraySize is 1001), indices below
# MAX_ARRAY_INDEX.
MAX_ARRAY_TASKS = 1000
MAX_ARRAY_INDEX = 1_000_000
_ARRAY_RANGE = re.compile(r"^(\d{1,7})(?:-(\d{1,7})(?::(\d{1,7}))?)?$")
# The context under which the store reads jobs back: limits added after a job was accepted are not
# applied to it again (it was valid when it was stored, and must stay readable).
STORED = {"stored": True}


def no_nul(value: str) -> str:
    """Text that a process can receive: NUL ends a C string, so a job could never get it."""
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


def parse_array(text: str) -> tuple[tuple[int, ...], int | None]:
    """The task indices and the at-once limit of an array as Slurm writes it: ``0-109``, ``0-109%8``,
    ``1,3,5-7``, ``0-15:4`` (every 4th), each index once, in order. ValueError says what to write."""
    spec, _, limit_text = text.strip().partition("%")
    limit = None
    if limit_text:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise ValueError(f"%{limit_text} is not a limit of tasks at once; write e.g. 0-109%8")
        limit = int(limit_text)
    indices: set[int] = set()
    for part in spec.split(","):
        match = _ARRAY_RANGE.match(part.strip())
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a range of task indices; write e.g. 0-109, 0-109%8, "
                             "1,3,5-7 or 0-15:4")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        step = int(match[3]) if match[3] is not None else 1
        if last < first or step < 1:
            raise ValueError(f"{part.strip()!r} is an empty range; write the lower index first, e.g. 0-109")
        if last >= MAX_ARRAY_INDEX:
            raise ValueError(f"task indices run from 0 to {MAX_ARRAY_INDEX - 1}")
        if (last - first) // step + 1 + len(indices) > MAX_ARRAY_TASKS:
            raise ValueError(f"an array has at most {MAX_ARRAY_TASKS} tasks")
        indices.update(range(first, last + 1, step))
    return tuple(sorted(indices)), limit


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


@cache
def _optional_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` that have a default (once per model: every request and job asks)."""
    return frozenset(name for name, field in model.model_fields.items() if not field.is_required())


class JobRequest(BaseModel):
    """What a person asks for: REST's body, the CLI's flags, chat's ``submit_job`` and a replayed trace
    row are each one of these, and the typed tool ``submit_job`` turns it into a ``JobSpec``.

    Ranges are checked here, so every door refuses a bad value with the same sentence. A null field
    means its default. ``begin_at`` is written as people write times and read by the door on the
    orchestrator's clock.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    # Integers, numbers and booleans are taken only as such (strict): `priority: true` is not 1 and
    # `preemptible: "yes"` is not true. A number given for a float field is fine.
    name: str | None = Field(None, max_length=MAX_NAME, validation_alias=AliasChoices("name", "run_id"),
                             description="A short label for the job (the seed's run_id); none if not given.")
    command: str = Field(min_length=1, max_length=MAX_COMMAND,
                         description="The shell command, run with bash, exactly as the user gave it.")
    cwd: str | None = Field(None, max_length=MAX_CWD,
                            description="Absolute working directory on the server; the server's work directory if not given.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description=f"Extra environment variables for the job: at most {MAX_ENV_VARS}, each value at most "
        f"{MAX_ENV_VALUE} bytes, {MAX_ENV_BYTES} bytes in all.")
    gpu_count: int = Field(ge=1, le=MAX_GPUS_PER_JOB, strict=True, description="Whole GPUs, all on one node.")
    priority: int = Field(5, ge=1, le=10, strict=True, description="1 (lowest) to 10 (highest); 5 if not given.")
    est_duration_s: float | None = Field(
        None, gt=0, strict=True, json_schema_extra={"maximum": MAX_DURATION_S},
        description="The user's estimate of the run time in seconds (at most a year); unknown if not given.")
    time_limit_s: float | None = Field(
        None, gt=0, strict=True, json_schema_extra={"maximum": MAX_DURATION_S},
        description="Stop the job after this many seconds of running (at most a year); no limit if not given.")
    max_retries: int = Field(1, ge=0, le=10, strict=True, description="Retries after a failed attempt; 1 if not given.")
    begin_at: str | float | None = Field(
        None, description="Not before this time: '22:00' (its next occurrence), '2026-11-30 22:00', '+3h', 'now', "
        "or Unix seconds; as soon as GPUs are free if not given.")
    after: tuple[Annotated[int, Field(ge=1, le=MAX_ID, strict=True)], ...] = Field(
        (), max_length=MAX_DEPENDENCIES, description="Start only after these jobs completed successfully (exit code 0).")
    after_any: tuple[Annotated[int, Field(ge=1, le=MAX_ID, strict=True)], ...] = Field(
        (), max_length=MAX_DEPENDENCIES, description="Start only after these jobs ended, however they ended.")
    preemptible: bool = Field(
        False, strict=True, description="True if the job may be stopped (SIGTERM, grace, SIGKILL) and requeued for a "
        "job of higher priority; it should checkpoint on SIGTERM.")
    array: str | None = Field(
        None, max_length=200, description="A job array, as Slurm writes it: '0-109' (110 tasks), '0-109%8' (at most 8 "
        "running at once), '1,3,5-7', '0-15:4'. Each task is a job of its own with HERD_ARRAY_JOB_ID and "
        f"HERD_ARRAY_TASK_ID set; at most {MAX_ARRAY_TASKS} tasks. No array if not given.")
    interactive: bool = Field(
        False, strict=True, description="True for a terminal session (herd run): the job's tmux window is its terminal, "
        "which its owner attaches to; it is not retried, and a lost window ends it.")
    notify: str | None = Field(
        None, max_length=MAX_URL, description="Where this job's notifications go: an http(s) webhook URL (written "
        "slack:https://... for a Slack-style {\"text\": ...} body), or 'off' for none; its owner's or the lab's "
        "webhook from the server's config if not given.")
    notify_on: tuple[JobEvent, ...] | None = Field(
        None, max_length=len(JOB_EVENTS), description="Which of this job's events notify: "
        + ", ".join(JOB_EVENTS) + "; the server's configured events if not given.")
    allow_idle: bool = Field(
        False, strict=True, description="True if the job may hold its GPUs idle (a notebook, a debugger): the idle "
        "check (idle_threshold, idle_after, idle_action) leaves it alone.")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """A null optional field is left out, so it takes its default; a null required one is refused."""
        if isinstance(data, dict) and None in data.values():
            optional = _optional_fields(cls)
            return {k: v for k, v in data.items() if v is not None or k not in optional}
        return data

    @field_validator("command")
    @classmethod
    def _command_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("command is empty")
        return no_nul(v)

    @field_validator("name", "cwd")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return v if v is None else no_nul(v)

    @field_validator("notify")
    @classmethod
    def _a_webhook(cls, v: str | None) -> str | None:
        return v if v is None else check_target(v)

    @field_validator("notify_on", mode="before")
    @classmethod
    def _job_events(cls, v: Any) -> Any:
        v = read_events(v)
        for name in v if isinstance(v, (list, tuple)) else ():
            if isinstance(name, str) and name not in JOB_EVENTS:
                raise ValueError(f"{name!r} is not one of a job's events: {', '.join(JOB_EVENTS)}")
        return v

    @field_validator("array")
    @classmethod
    def _an_array(cls, v: str | None) -> str | None:
        if v is not None:
            parse_array(no_nul(v))
        return v

    @field_validator("est_duration_s", "time_limit_s")
    @classmethod
    def _at_most_a_year(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and v > MAX_DURATION_S and not _stored(info):
            raise ValueError(f"must be at most {MAX_DURATION_S:.0f} s (366 days)")
        return v

    @field_validator("begin_at", mode="before")
    @classmethod
    def _a_time(cls, v: Any) -> Any:
        """Text as people write times, or Unix seconds: a finite number before the year 3000, not a
        boolean. (The time itself is read by the door, on the orchestrator's clock.)"""
        if isinstance(v, str):
            if len(v) > 100:
                raise ValueError("a time is at most 100 characters; write e.g. 22:00, +3h or 2026-11-30 22:00")
            return no_nul(v)
        if isinstance(v, bool):
            raise ValueError("give a time as text ('22:00', '+3h') or as Unix seconds, not true or false")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("Input should be a finite number")
        if isinstance(v, (int, float)) and v > MAX_TIME:
            raise ValueError(f"{v!r} is out of range; Unix seconds must fall before the year 3000 ({MAX_TIME:.0f})")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key in v:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key in RESERVED_ENV:
                raise ValueError(f"{key} is set by gpuherd for each job and cannot be overridden")
        if _stored(info):
            return v
        if len(v) > MAX_ENV_VARS:
            raise ValueError(f"{len(v)} variables; at most {MAX_ENV_VARS}")
        total = 0
        for key, value in v.items():
            if "\0" in value:
                raise ValueError(f"{key}: must not contain a NUL character")
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_ENV_VALUE:
                raise ValueError(f"{key}: its value has {size} bytes; at most {MAX_ENV_VALUE}")
            total += len(key) + 1 + size
        if total > MAX_ENV_BYTES:
            raise ValueError(f"the variables take {total} bytes; at most {MAX_ENV_BYTES} in all")
        return v

    @model_validator(mode="after")
    def _interactive_alone(self) -> JobRequest:
        if self.interactive and self.array is not None:
            raise ValueError("an interactive job is one terminal session, not an array")
        return self

    @model_validator(mode="after")
    def _dependencies_once(self) -> JobRequest:
        if not (self.after and self.after_any):
            return self
        both = sorted(set(self.after) & set(self.after_any))
        if both:
            raise ValueError(f"job(s) {', '.join(map(str, both))} are in both after and after_any; name each once")
        return self

    @property
    def depends_on(self) -> tuple[int, ...]:
        return (*self.after, *self.after_any)


class IdempotencyKey(BaseModel):
    """A submission's ``Idempotency-Key`` as the store keeps it: a retry by the same acting user with the
    same key gets the job the first try made, and a retry with another request is refused."""

    model_config = ConfigDict(frozen=True)

    scope: str  # who acted: a retry must come from the same acting user
    key: str
    fingerprint: str  # a digest of the request, to tell a retry from another request under the same key


class JobSpec(JobRequest):
    """A request with its owner and its begin time read: what the queue stores."""

    user: UserName = Field(description="Who owns the job.")
    begin_at: float | None = Field(None, ge=0, le=MAX_TIME, description="Not started before this time (Unix seconds).")
    # The submission's Idempotency-Key, for the store to keep beside the job in the same transaction;
    # never part of the job's record (the store hands back the job without it).
    idempotency: IdempotencyKey | None = Field(None, exclude_if=lambda v: v is None)


class Job(JobSpec):
    """A job as the queue knows it: the request plus everything that happened to it."""

    id: int
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0  # attempts started so far
    preemptions: int = 0  # attempts that ended by preemption (they do not use up retries)
    losses: int = 0  # attempts the executor lost (they do not use up retries; MAX_LOSSES of them fail it)
    preempted_for: int | None = None  # the waiting job this one was stopped for, until it starts again
    pending_reason: PendingReason | None = None
    pending_message: str | None = None
    allocation: Allocation | None = None
    exit_code: int | None = None
    submit_time: float
    start_time: float | None = None  # start of the current or last attempt
    end_time: float | None = None
    not_before: float | None = None  # earliest start (begin_at, or a retry's backoff)
    stop_reason: StopReason | None = None  # set while the orchestrator is stopping it
    log_path: str | None = None
    # Where est_duration_s came from; set when the job is queued. A job stored before sources were
    # recorded reads back as "user" if it has an estimate, else "default".
    est_source: EstimateSource = EstimateSource.DEFAULT
    # A task of an array: the array's id (its first task's job id), this task's index, how many tasks
    # the array has and how many may run at once (None: no limit). None for a job that is no task.
    array_id: int | None = None
    array_index: int | None = None
    array_size: int | None = None
    array_limit: int | None = None
    # Accounting: seconds run by its attempts that ended (the current one not yet counted), when its
    # first attempt started, and how its last attempt ended (None while it has not ended).
    run_s: float = 0.0
    first_start_time: float | None = None
    end_reason: EndReason | None = None

    @model_validator(mode="before")
    @classmethod
    def _source_of_estimate(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("est_source") is None:
            source = EstimateSource.USER if data.get("est_duration_s") is not None else EstimateSource.DEFAULT
            return {**data, "est_source": source}
        return data

    @property
    def display_name(self) -> str:
        return self.name or f"job-{self.id}"

    @property
    def task_label(self) -> str | None:
        """``12_3`` for task 3 of array 12 (Slurm's way); None for a job that is no task."""
        return None if self.array_id is None else f"{self.array_id}_{self.array_index}"

    def run_seconds(self, now: float) -> float:
        """Seconds it has run in all its attempts, the current one up to ``now``."""
        total = self.run_s
        if self.status == JobStatus.RUNNING and self.start_time is not None:
            total += max(0.0, now - self.start_time)
        elif not total and self.end_time is not None and self.start_time is not None:
            total = max(0.0, self.end_time - self.start_time)  # ended before run_s was kept
        return total

    def gpu_seconds(self, now: float) -> float:
        return self.gpu_count * self.run_seconds(now)


M = TypeVar("M", bound=BaseModel)


def assembled(cls: type[M], values: dict[str, Any], fields_set: set[str]) -> M:
    """A ``cls`` of ``values`` (every field), as ``BaseModel.model_construct`` makes one without looking
    up each field's aliases and default: for values already checked (a spec from its request, a job from
    its spec, a job's next version), where validating them again cost a fifth of a submission."""
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", fields_set)
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def changed(model: M, fields: Mapping[str, Any]) -> M:
    """``model.model_copy(update=fields)`` (no check of ``fields``, as there), in half the time: a job
    is copied on each of its five or so saves, and ``model_copy`` goes through ``copy.copy`` thrice."""
    given = model.__pydantic_fields_set__  # never changed in place (frozen): shared if it holds ``fields``
    return assembled(type(model), {**model.__dict__, **fields}, given if fields.keys() <= given else given | fields.keys())


class Reservation(BaseModel):
    """GPUs of one node kept for a user or a group from ``start`` to ``end``: nobody else may run on
    them in that window, and a job that would still run at ``start`` may not start on them before
    (unless it is preemptible: it is stopped when the window begins)."""

    model_config = ConfigDict(frozen=True)

    id: int = 0
    node: str
    gpus: tuple[int, ...]
    user: str | None = None
    group: str | None = None
    start: float
    end: float
    note: str = ""
    # Made for a count of GPUs (the server chose which): when its window begins, GPUs of it that another
    # job still runs on are swapped for free GPUs of its node before anyone is stopped.
    movable: bool = False

    def holder(self) -> str:
        return f"user {self.user}" if self.user else f"group {self.group}"

    def admits(self, user: str, group: str | None) -> bool:
        return user == self.user or (group is not None and group == self.group)

    def covers(self, start: float, end: float) -> bool:
        """Whether ``[start, end)`` overlaps the window."""
        return start < self.end and end > self.start


class GpuProcess(BaseModel):
    model_config = ConfigDict(frozen=True)

    pid: int
    used_memory_mib: int | None = None
    name: str | None = None  # None when the process ended between NVML's listing and our look-up
    uid: int | None = None  # its owner, from /proc; None where it cannot be read (ended, another pid namespace)
    user: str | None = None
    # Which gpuherd job it belongs to, told where the jobs run (tools.nvml.attribute): job_id, or
    # foreign=True for a process of no job; foreign None: not told (no executor that knows its jobs).
    job_id: int | None = None
    foreign: bool | None = None
    # pid, pgid, session and every ancestor's pid: what membership in a job's process tree is read
    # from. Used on the node that read it, never sent on.
    lineage: tuple[int, ...] = Field((), exclude=True)


class GpuMetrics(BaseModel):
    """Live readings; a field is None where the driver does not support it."""

    model_config = ConfigDict(frozen=True)

    memory_used_mib: int | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    processes: tuple[GpuProcess, ...] = ()
    ecc_uncorrected: int | None = None  # uncorrectable ECC errors since the driver loaded (volatile); None: no ECC
    xids: tuple[int, ...] = ()  # XID errors the driver reported since the last reading


class Gpu(BaseModel):
    model_config = ConfigDict(frozen=True)

    node: str
    index: int
    uuid: str
    model: str | None = None
    memory_total_mib: int | None = None
    healthy: bool = True
    drained: bool = False
    metrics: GpuMetrics | None = None
    reason: str | None = None  # why it is drained or unhealthy, where known

    @property
    def foreign(self) -> tuple[GpuProcess, ...]:
        """Its compute processes that belong to no gpuherd job: while there are any, it takes no job."""
        return tuple(p for p in self.metrics.processes if p.foreign) if self.metrics is not None else ()


class JobUsage(BaseModel):
    """What a job's GPUs did over its run, from the samples taken while it held them (every attempt):
    per sample the mean utilization of its GPUs and the memory used on them together."""

    model_config = ConfigDict(frozen=True)

    samples: int = 0
    utilization_sum: float = 0.0  # of the samples' mean utilization, in percent
    utilization_peak_pct: float = 0.0
    memory_sum_mib: float = 0.0
    memory_peak_mib: int = 0

    @computed_field
    @property
    def utilization_mean_pct(self) -> float | None:
        return round(self.utilization_sum / self.samples, 1) if self.samples else None

    @computed_field
    @property
    def memory_mean_mib(self) -> float | None:
        return round(self.memory_sum_mib / self.samples, 1) if self.samples else None

    def add(self, utilization_pct: float, memory_mib: int) -> JobUsage:
        return JobUsage(samples=self.samples + 1, utilization_sum=self.utilization_sum + utilization_pct,
                        utilization_peak_pct=max(self.utilization_peak_pct, utilization_pct),
                        memory_sum_mib=self.memory_sum_mib + memory_mib,
                        memory_peak_mib=max(self.memory_peak_mib, memory_mib))


class InventorySource(StrEnum):
    NVML = "nvml"  # detected through the NVIDIA driver
    DECLARED = "declared"  # told to us; nothing measured


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    source: InventorySource
    gpus: tuple[Gpu, ...]


class Event(BaseModel):
    """One row of the audit log; every state change writes one."""

    model_config = ConfigDict(frozen=True)

    id: int | None = None
    time: float
    kind: str
    job_id: int | None = None
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
