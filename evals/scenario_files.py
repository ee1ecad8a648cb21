"""The chat scenario files: their schema, and loading them (``evals/scenarios/*.yaml``).

Each file is one scenario: a cluster (nodes with their GPU model, drained GPUs, jobs already queued or
running), a user, one or more messages in one chat session, and what must come of them:

- ``submit``: exactly one new job for the user; only the fields listed are scored, each on its own,
  so the report shows which fields a model gets wrong (``est_duration_s`` within ``est_tolerance``).
  The job's earliest start is scored as ``begin_at``: a time read against the scenario's ``now``
  (``"23:00"`` is the next 23:00 after it, within ``begin_tolerance_s``; ``null`` means at once), or a
  window from ``begin_after`` to ``begin_before`` (``"18:00"`` to ``"23:59"``: that evening).
- ``submits``: several jobs from one message, exactly as many new jobs as listed, each matching one
  entry (in any order), scored like ``submit``.
- ``refuse``: nothing may change, and the last reply must give the reason: one of the ``reason``
  families (``REASONS``: too many GPUs, not the owner, no such hardware, an invalid count, no such
  job, not allowed). "Nothing changed" alone is not a refusal: a question, or silence, fails.
- ``clarify``: nothing may change and the reply asks a question; with ``about``, about one of those
  things (the GPU count, the command, which job, ...). Only for requests that are ambiguous.
- ``action``: one call of ``tool`` with ``args`` on the user's own job succeeds, its effect is in the
  store, and nothing else changes. The read tools (``explain_job``, ``get_quotas``,
  ``list_reservations``) change nothing; the call itself is what is scored.
- ``read``: a question about the cluster or the queue: one of ``tools`` (read tools) must be called
  and succeed, nothing may change, and the conversation must end in an answer.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.models import UserName
from tools.timespec import TIME_FORMS, parse_end, parse_time

SCENARIOS_DIR = Path(__file__).parent / "scenarios"
# When a scenario's messages arrive unless it says otherwise: a Monday afternoon, in the local time of
# the machine that runs the eval (the service reads "23:00" in its own local time too).
DEFAULT_NOW = "2026-11-30T14:00"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSpec(_Strict):
    name: str
    gpus: int = Field(ge=1, le=64)
    model: str | None = Field(None, description="The GPU model (get_cluster_state shows it); unknown if not given.")
    drained: list[int] = Field(default_factory=list, description="GPU indices that take no new job.")


class ExistingJob(_Strict):
    """A job already there. Jobs get ids 1, 2, ... in list order (messages refer to them by id)."""

    user: UserName
    gpus: int = Field(1, ge=1)
    priority: int = Field(5, ge=1, le=10)
    status: Literal["queued", "running"]
    name: str | None = None
    command: str = "python train.py"


class ClusterSpec(_Strict):
    nodes: list[NodeSpec] = Field(min_length=1)
    jobs: list[ExistingJob] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterSpec":
        for node in self.nodes:
            if any(not 0 <= i < node.gpus for i in node.drained):
                raise ValueError(f"node {node.name}: drained GPUs {node.drained} outside 0..{node.gpus - 1}")
        statuses = [j.status for j in self.jobs]
        # Running jobs are started by one tick before the queued ones are submitted.
        if statuses != sorted(statuses, key=lambda s: s != "running"):
            raise ValueError("list the running jobs before the queued ones (ids follow the list order)")
        return self


class SubmitExpect(_Strict):
    """The fields of the job that must be submitted; only those written in the file are scored."""

    gpu_count: int | None = None
    priority: int | None = None
    est_duration_s: float | None = None
    time_limit_s: float | None = None
    command: str | None = None
    name: str | None = None
    after: tuple[int, ...] = ()  # compared as sets: the order of the ids does not matter
    after_any: tuple[int, ...] = ()
    preemptible: bool = False
    # "about 3 hours" is an estimate: 2.75 h to 3.25 h are all fair readings of it, 2 h is not.
    est_tolerance: float = Field(0.1, ge=0, description="Relative tolerance on est_duration_s.")
    # The job's earliest start (its begin_at, or its submit time when it has none), scored as one field,
    # "begin_at": either begin_at (null: at once) or the window begin_after .. begin_before.
    begin_at: str | None = Field(None, description=f"{TIME_FORMS}, read against the scenario's now.")
    begin_after: str | None = Field(None, description="The window's start, read against the scenario's now.")
    begin_before: str | None = Field(None, description="The window's end; '23:59' is the first 23:59 after its start.")
    begin_tolerance_s: float = Field(300, ge=0, description="How far from begin_at the start may be.")

    def scored(self) -> list[str]:
        """The job's fields to score; ``begin_at`` stands for the begin window too."""
        written = self.model_fields_set - {"est_tolerance", "begin_tolerance_s"}
        if written & {"begin_after", "begin_before"}:
            written = (written - {"begin_after", "begin_before"}) | {"begin_at"}
        return [f for f in type(self).model_fields if f in written]

    @field_validator("begin_at", "begin_after", "begin_before")
    @classmethod
    def _a_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time(value, 0.0)  # a ValueError says which forms are times
        return value

    @model_validator(mode="after")
    def _something_scored(self) -> "SubmitExpect":
        if not self.scored():
            raise ValueError("list at least one field of the job to score")
        window = {"begin_after", "begin_before"} & self.model_fields_set
        if window and "begin_at" in self.model_fields_set:
            raise ValueError("give begin_at, or begin_after and begin_before, not both")
        if len(window) == 1 or (window and None in (self.begin_after, self.begin_before)):
            raise ValueError("a begin window needs both begin_after and begin_before")
        if "begin_tolerance_s" in self.model_fields_set and "begin_at" not in self.model_fields_set:
            raise ValueError("begin_tolerance_s is a tolerance on begin_at; give begin_at too")
        return self

    def begin_window(self, now: float) -> tuple[float, float]:
        """The earliest starts (Unix seconds) that pass, for messages sent at ``now``."""
        if self.begin_after is not None and self.begin_before is not None:
            start = parse_time(self.begin_after, now)
            return start, parse_end(self.begin_before, start, now)
        at = now if self.begin_at is None else parse_time(self.begin_at, now)
        return at - self.begin_tolerance_s, at + self.begin_tolerance_s


# Why a request is refused, in families; judging.REASON_PATTERNS says how a reply says each.
Reason = Literal["too_many_gpus", "not_owner", "no_such_hardware", "invalid_count", "no_such_job", "not_allowed"]
# What a clarifying question is about; judging.TOPIC_PATTERNS says how a question names each.
Topic = Literal["gpus", "command", "job", "duration", "time", "what"]


class Refusal(_Strict):
    why: str = Field(min_length=1)
    reason: Reason | list[Reason] = Field(description="The reason family the reply must give (any one of a list).")

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(self.reason) if isinstance(self.reason, list) else (self.reason,)


class Clarification(_Strict):
    why: str = Field(min_length=1)
    about: list[Topic] = Field(default_factory=list, description="The question must be about one of these.")


# The arguments each tool a scenario may expect takes; the read tools change nothing.
ACTION_ARGS = {"cancel_job": {"job_id"}, "set_priority": {"job_id", "priority"}, "explain_job": {"job_id"},
               "get_quotas": set(), "list_reservations": set()}
READ_TOOLS = ("explain_job", "get_quotas", "list_reservations", "get_cluster_state", "list_queue", "get_job")
ReadTool = Literal["explain_job", "get_quotas", "list_reservations", "get_cluster_state", "list_queue", "get_job"]


class ActionExpect(_Strict):
    tool: Literal["cancel_job", "set_priority", "explain_job", "get_quotas", "list_reservations"]
    args: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _its_arguments(self) -> "ActionExpect":
        want = ACTION_ARGS[self.tool]
        if set(self.args) != want:
            raise ValueError(f"{self.tool} takes args {sorted(want) or 'none'}, not {sorted(self.args) or 'none'}")
        return self


class ReadExpect(_Strict):
    why: str = Field(min_length=1)
    tools: list[ReadTool] = Field(min_length=1, description="Any one of these must be called, and succeed.")


KINDS = ("submit", "submits", "refuse", "clarify", "action", "read")


class Expect(_Strict):
    submit: SubmitExpect | None = None
    submits: list[SubmitExpect] | None = Field(None, min_length=2, description="Several jobs from one message.")
    refuse: Refusal | None = None
    clarify: Clarification | None = None
    action: ActionExpect | None = None
    read: ReadExpect | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Expect":
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)


Category = Literal["plain", "priority", "limit", "tonight", "dependency", "ambiguous", "impossible", "own-job",
                   "other-user", "explain", "injection", "multi-turn", "hardware", "cluster-state", "several-jobs"]


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    category: Category
    cluster: ClusterSpec
    user: UserName
    messages: list[str] = Field(min_length=1, description="User turns, in one chat session.")
    now: str = Field(DEFAULT_NOW, description="When the messages arrive: an ISO date and time, local unless it "
                     "names a zone.")
    expect: Expect

    @field_validator("now")
    @classmethod
    def _a_date_and_time(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO date and time, e.g. {DEFAULT_NOW}") from None
        return value

    @model_validator(mode="after")
    def _begin_window_in_order(self) -> "Scenario":
        for want in [self.expect.submit, *(self.expect.submits or ())]:
            if want is not None and want.begin_after is not None and want.begin_before is not None:
                start, end = want.begin_window(self.now_unix)
                if end <= start:
                    raise ValueError(f"expect.{self.expect.kind}: begin_before {want.begin_before!r} is not after "
                                     f"begin_after {want.begin_after!r}")
        return self

    @property
    def now_unix(self) -> float:
        return local_instant(self.now)


def local_instant(text: str) -> float:
    """Unix seconds of an ISO date and time; without a zone it is this machine's local time."""
    return datetime.fromisoformat(text).timestamp()


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text())
        return Scenario.model_validate(data)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"{path}: {problems}") from None


def load_scenarios(directory: Path) -> list[Scenario]:
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise ScenarioError(f"{directory}: no *.yaml scenario files")
    scenarios = [load_scenario(p) for p in paths]
    seen: dict[str, Path] = {}
    for path, scenario in zip(paths, scenarios):
        if scenario.name in seen:
            raise ScenarioError(f"{path}: name: {scenario.name!r} is also used by {seen[scenario.name]}")
        seen[scenario.name] = path
    return scenarios
