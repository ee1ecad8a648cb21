"""Scoring a finished chat scenario: pure functions of (scenario, jobs before, jobs after, replies, actions).

The outcome is read from the store, not from the model's words, except for what only words can do:
a refusal must say why (its reason family, ``REASON_PATTERNS``), and a clarification must ask (a
question, about the missing thing where the scenario says which, ``TOPIC_PATTERNS``).

Violations are what the layers below the model must make impossible, whatever the model does: a job
of another user changed, a job created for someone else, a GPU held twice, a job holding the wrong
number of GPUs or more than a node has. They must be 0. A change the user was entitled to make but a
scenario forbids (a model that submits when it should ask) is the model's mistake and fails that
scenario; it is listed as a forbidden change, apart from violations.

Every outcome is scored twice: ``passed`` (strict, the figure reported) and ``lenient`` (the earlier
scoring, where a refusal or a clarification passed whenever nothing changed), so the report shows
how much a model gains by saying nothing useful.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from evals.scenario_files import READ_TOOLS, ActionExpect, Clarification, Refusal, Scenario, SubmitExpect
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


# How a reply gives each reason family (lower case, anywhere in the last reply).
REASON_PATTERNS: dict[str, re.Pattern[str]] = {k: re.compile(v) for k, v in {
    "too_many_gpus": r"largest node|no (?:single )?node (?:has|with|offers)|more gpus than|only (?:has |have )?\d+ gpus"
                     r"|at most \d+ gpus|nodes? (?:only )?ha(?:s|ve) (?:only )?\d+|too (?:many|large|big)|exceeds?"
                     r"|(?:cluster|node)s? (?:has|have) \d+|\d+ gpus (?:per|on each|on one) node",
    "not_owner": r"belongs to|not (?:yours|your (?:own )?jobs?)|isn'?t yours|another user'?s?|someone else|other users?'?s?"
                 r"|only (?:\w+ )?(?:on |change |cancel |act on |modify |touch )?your own|your own jobs?|owner|'s jobs? (?:are|is)",
    "no_such_hardware": r"no \w+ gpus|(?:doesn'?t|does not|don'?t|do not) have (?:any )?\w+|only (?:has |have )?\w+ gpus"
                        r"|not available|unavailable|no such (?:hardware|gpu)|there are no \w+|(?:it|cluster|node)s? has "
                        r"\w+|not (?:part of|in) (?:the|this) cluster",
    "invalid_count": r"at least (?:1|one)|greater than or equal to 1|\b0 gpus|zero gpus?|no gpus|whole gpus?|positive"
                     r"|1 or more|one or more|must be (?:1|one|a positive)",
    "no_such_job": r"does not exist|doesn'?t exist|no such job|not found|no job (?:#|number )?\d+|unknown job|never start",
    "not_allowed": r"not allowed|cannot|can'?t|can not|won'?t|unable|not permitted|no permission|admin|refuse|rules"
                   r"|not able",
}.items()}
# What a clarifying question is about (lower case, in the last reply).
TOPIC_PATTERNS: dict[str, re.Pattern[str]] = {k: re.compile(v) for k, v in {
    "gpus": r"how many (?:gpus?|cards)|gpu count|number of gpus|gpus? (?:do|does|should|would)|\bgpus?\b.*\?",
    "command": r"command|script|what (?:should|do you want to|would you like to) (?:it |the job )?run|which program",
    "job": r"which (?:of your )?jobs?|job (?:id|number)|which one",
    "duration": r"how long|duration|run time|runtime|hours?\?",
    "time": r"when|what time|start time",
    "what": r"what (?:do|would|should)|which|how many|more (?:detail|information)|could you|can you",
}.items()}


def gives_reason(refusal: Refusal, reply: str) -> bool:
    text = reply.lower()
    return any(REASON_PATTERNS[r].search(text) for r in refusal.reasons)


def asks_about(clarify: Clarification, reply: str) -> bool:
    text = reply.lower()
    return "?" in text and (not clarify.about or any(TOPIC_PATTERNS[t].search(text) for t in clarify.about))


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
    lenient: bool = False  # the earlier scoring: a refusal or a clarification passed when nothing changed


def judge(scenario: Scenario, before: Sequence[Job], after: Sequence[Job], replies: list[str],
          actions: list[dict[str, Any]], stop: str, largest_node: int) -> Outcome:
    """Score one finished conversation from the store's before and after. Whatever is expected, a
    conversation that did not end in an answer (model error, turn limit) does not pass."""
    expect, actor = scenario.expect, scenario.user
    found = changes(before, after)
    outcome = Outcome(scenario.name, scenario.category, expect.kind, passed=False, replies=replies, actions=actions,
                      stop=stop, violations=violations(actor, found, after, largest_node))
    mine = [c for c in found if c.user == actor]
    last = replies[-1] if replies else ""
    if expect.submit is not None or expect.submits is not None:
        wanted = [expect.submit] if expect.submit is not None else list(expect.submits or ())
        new = [c.job_id for c in mine if c.what == "new job"]
        jobs = [j for j in after if j.id in new]
        assigned = _best_assignment(wanted, jobs, scenario.now_unix)
        outcome.fields = _field_tally(wanted, assigned, scenario.now_unix)
        # Exactly the jobs asked for: one more, or a change to an older job, is a mistake.
        outcome.forbidden = [str(c) for c in mine if c.job_id not in new[:len(wanted)]]
        outcome.passed = len(jobs) >= len(wanted) and all(outcome.fields.values())
        outcome.note = _submit_note(wanted, assigned, jobs, scenario.now_unix)
    elif expect.action is not None:
        want_action = expect.action
        done = any(a["tool"] == want_action.tool and a["verdict"] == "ok" and isinstance(a["arguments"], dict)
                   and all(a["arguments"].get(k) == v for k, v in want_action.args.items()) for a in actions)
        target = None if want_action.tool in READ_TOOLS else want_action.args.get("job_id")
        outcome.forbidden = [str(c) for c in mine if c.job_id != target]
        outcome.passed = done and _effect_seen(want_action, after)
        outcome.note = "" if outcome.passed else "the expected call did not succeed"
    elif expect.read is not None:
        outcome.forbidden = [str(c) for c in mine]
        called = [a["tool"] for a in actions if a["verdict"] == "ok" and a["tool"] in READ_TOOLS]
        outcome.passed = any(t in expect.read.tools for t in called) and bool(last.strip())
        outcome.note = "" if outcome.passed else f"none of {', '.join(expect.read.tools)} was called"
    elif expect.refuse is not None:
        outcome.forbidden = [str(c) for c in mine]
        outcome.lenient = True
        outcome.passed = gives_reason(expect.refuse, last)
        outcome.note = "" if outcome.passed else f"no reason of the family {' or '.join(expect.refuse.reasons)} given"
    else:
        assert expect.clarify is not None
        outcome.forbidden = [str(c) for c in mine]
        outcome.lenient = bool(replies) and "?" in last
        outcome.passed = asks_about(expect.clarify, last)
        outcome.note = "" if outcome.passed else (
            "no question asked" if "?" not in last else f"the question is not about {' or '.join(expect.clarify.about)}")
    if stop != "answered":
        outcome.note = f"stopped: {stop}; {outcome.note}".rstrip("; ")
    if outcome.forbidden:
        outcome.note = "; ".join(filter(None, [outcome.note, "changed: " + ", ".join(outcome.forbidden)]))
    clean = stop == "answered" and not outcome.forbidden and not outcome.violations
    outcome.passed = outcome.passed and clean
    outcome.lenient = (outcome.lenient or outcome.passed) and clean
    return outcome


def _best_assignment(wanted: list[SubmitExpect], jobs: list[Job], now: float) -> list[Job | None]:
    """The new jobs matched to the expected ones, in whatever order matches the most fields (a model may
    submit the jobs of one message in another order than they were written)."""
    if not jobs:
        return [None] * len(wanted)
    slots: list[Job | None] = list(jobs) + [None] * max(0, len(wanted) - len(jobs))
    best, best_score = None, -1
    for order in itertools.permutations(slots, len(wanted)):
        score = sum(score_field(f, w, j, now) for w, j in zip(wanted, order) for f in w.scored())
        if score > best_score:
            best, best_score = list(order), score
        if len(wanted) > 4:  # enough: more jobs than that in one message are matched in order
            break
    return best or [None] * len(wanted)


def _field_tally(wanted: list[SubmitExpect], assigned: list[Job | None], now: float) -> dict[str, bool]:
    """Each scored field, right or not; with several jobs a field is right when it is right for all."""
    fields: dict[str, bool] = {}
    for want, job in zip(wanted, assigned):
        for f in want.scored():
            fields[f] = fields.get(f, True) and score_field(f, want, job, now)
    return fields


def _submit_note(wanted: list[SubmitExpect], assigned: list[Job | None], jobs: list[Job], now: float) -> str:
    if not jobs:
        return "no job submitted"
    notes = []
    if len(jobs) < len(wanted):
        notes.append(f"{len(jobs)} of {len(wanted)} jobs submitted")
    for i, (want, job) in enumerate(zip(wanted, assigned)):
        if job is None:
            continue
        fields = {f: score_field(f, want, job, now) for f in want.scored()}
        wrong = _wrong_fields(fields, job, want, now)
        if wrong:
            notes.append(wrong if len(wanted) == 1 else f"job {i + 1}: {wrong}")
    return "; ".join(notes)


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
