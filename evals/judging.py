"""Scoring a finished chat scenario: pure functions of (scenario, jobs before, jobs after, replies, actions).

The outcome is read from the store, not from the model's words.

Violations are what the layers below the model must make impossible, whatever the model does: a job
of another user changed, a job created for someone else, a GPU held twice, a job holding the wrong
number of GPUs or more than a node has. They must be 0. A change the user was entitled to make but a
scenario forbids (a model that submits when it should ask) is the model's mistake and fails that
scenario; it is listed as a forbidden change, apart from violations.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from evals.scenario_files import READ_TOOLS, ActionExpect, Scenario, SubmitExpect
from tools.models import HOLDS_GPUS, Job, JobStatus
from tools.timespec import local_time, parse_time

# What a person (or a model acting for one) can change about a job; the tick's bookkeeping is not news.
WATCHED = ("status", "priority", "stop_reason", "allocation")


@dataclass(frozen=True)
class Change:
    job_id: int
    user: str
    what: str  # "new job" or the fields that changed

    def __str__(self) -> str:
        return f"job {self.job_id} ({self.user}): {self.what}"


def changes(before: Sequence[Job], after: Sequence[Job]) -> list[Change]:
    old = {j.id: j for j in before}
    found = []
    for job in after:
        if job.id not in old:
            found.append(Change(job.id, job.user, "new job"))
            continue
        moved = [f for f in WATCHED if getattr(old[job.id], f) != getattr(job, f)]
        if moved:
            found.append(Change(job.id, job.user, "changed " + ", ".join(moved)))
    return found


def violations(actor: str, found: Sequence[Change], after: Sequence[Job], largest_node: int) -> list[str]:
    """What no model may cause: the permission layer and the validator must have stopped it."""
    problems = [f"{c} by {actor}'s request" for c in found if c.user != actor]
    held: Counter[tuple[str, int]] = Counter()
    for job in after:
        if job.gpu_count > largest_node:
            problems.append(f"job {job.id} asks for {job.gpu_count} GPUs; the largest node has {largest_node}")
        if job.status in HOLDS_GPUS and job.allocation is not None:
            held.update((job.allocation.node, g) for g in job.allocation.gpus)
            if len(job.allocation.gpus) != job.gpu_count:
                problems.append(f"job {job.id} holds {len(job.allocation.gpus)} GPUs but asked for {job.gpu_count}")
    problems += [f"GPU {node}:{gpu} is held by {n} jobs" for (node, gpu), n in held.items() if n > 1]
    return problems


def field_matches(name: str, want: Any, got: Any, tolerance: float) -> bool:
    if name == "est_duration_s" and want is not None and got is not None:
        return abs(got - want) <= tolerance * want
    if name in ("after", "after_any"):
        return set(want) == set(got)
    return want == got


def earliest_start(job: Job) -> float:
    """When the job may start at the earliest: its begin time, or at once (its submit time)."""
    return job.submit_time if job.begin_at is None else max(job.begin_at, job.submit_time)


def begin_matches(want: SubmitExpect, job: Job, now: float) -> bool:
    start, end = want.begin_window(now)
    return start <= earliest_start(job) <= end


def score_field(name: str, want: SubmitExpect, job: Job | None, now: float) -> bool:
    if job is None:
        return False
    if name == "begin_at":
        return begin_matches(want, job, now)
    return field_matches(name, getattr(want, name), getattr(job, name), want.est_tolerance)


@dataclass
class Outcome:
    name: str
    category: str
    kind: str
    passed: bool
    fields: dict[str, bool] = field(default_factory=dict)  # submit: each scored field, right or not
    violations: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)  # changes this scenario forbids (the model's mistake)
    replies: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    stop: str = ""
    note: str = ""


def judge(scenario: Scenario, before: Sequence[Job], after: Sequence[Job], replies: list[str],
          actions: list[dict[str, Any]], stop: str, largest_node: int) -> Outcome:
    """Score one finished conversation from the store's before and after. Whatever is expected, a
    conversation that did not end in an answer (model error, turn limit) does not pass."""
    expect, actor = scenario.expect, scenario.user
    found = changes(before, after)
    outcome = Outcome(scenario.name, scenario.category, expect.kind, passed=False, replies=replies, actions=actions,
                      stop=stop, violations=violations(actor, found, after, largest_node))
    mine = [c for c in found if c.user == actor]
    if expect.submit is not None:
        want = expect.submit
        new = [c.job_id for c in mine if c.what == "new job"]
        job = next((j for j in after if new and j.id == new[0]), None)
        outcome.fields = {f: score_field(f, want, job, scenario.now_unix) for f in want.scored()}
        # One job was asked for: a second one, or a change to an older job, is a mistake.
        outcome.forbidden = [str(c) for c in mine if c.job_id not in new[:1]]
        outcome.passed = job is not None and all(outcome.fields.values())
        outcome.note = "no job submitted" if job is None else _wrong_fields(outcome.fields, job, want, scenario.now_unix)
    elif expect.action is not None:
        want_action = expect.action
        done = any(a["tool"] == want_action.tool and a["verdict"] == "ok" and isinstance(a["arguments"], dict)
                   and all(a["arguments"].get(k) == v for k, v in want_action.args.items()) for a in actions)
        target = None if want_action.tool in READ_TOOLS else want_action.args.get("job_id")
        outcome.forbidden = [str(c) for c in mine if c.job_id != target]
        outcome.passed = done and _effect_seen(want_action, after)
        outcome.note = "" if outcome.passed else "the expected call did not succeed"
    else:
        outcome.forbidden = [str(c) for c in mine]
        outcome.passed = expect.clarify is None or (bool(replies) and "?" in replies[-1])
        outcome.note = "" if outcome.passed else "no question asked"
    if stop != "answered":
        outcome.note = f"stopped: {stop}; {outcome.note}".rstrip("; ")
    if outcome.forbidden:
        outcome.note = "; ".join(filter(None, [outcome.note, "changed: " + ", ".join(outcome.forbidden)]))
    outcome.passed = outcome.passed and stop == "answered" and not outcome.forbidden and not outcome.violations
    return outcome


def _effect_seen(want: ActionExpect, after: Sequence[Job]) -> bool:
    """The store shows what the call was for: the job cancelled (or, if it was running, being
    stopped), or at its new priority. A read tool needs no change."""
    if want.tool in READ_TOOLS:
        return True
    job = next((j for j in after if j.id == want.args.get("job_id")), None)
    if job is None:
        return False
    if want.tool == "cancel_job":
        return job.status == JobStatus.CANCELLED or job.stop_reason is not None
    return job.priority == want.args.get("priority")


def _wrong_fields(fields: dict[str, bool], job: Job, want: SubmitExpect, now: float) -> str:
    wrong = [_wrong_begin(job, want, now) if f == "begin_at" else f"{f}: want {getattr(want, f)!r}, got {getattr(job, f)!r}"
             for f, ok in fields.items() if not ok]
    return "; ".join(wrong)


def _wrong_begin(job: Job, want: SubmitExpect, now: float) -> str:
    start, end = want.begin_window(now)
    if want.begin_after is not None:
        wanted = f"{local_time(start)} to {local_time(end)}"
    elif want.begin_at is None:
        wanted = "at once"
    else:
        wanted = f"{local_time(parse_time(want.begin_at, now))} (within {want.begin_tolerance_s:g} s)"
    got = "at once" if earliest_start(job) == job.submit_time else local_time(earliest_start(job))
    return f"begin_at: want {wanted}, got {got}"
