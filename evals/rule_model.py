"""``RuleModel``: a deterministic, rule-based ``Model``, the baseline a real model must beat.

It plays two parts: the scripted model ``make test`` runs the chat scenarios with (no network, same
answer every time), and the floor we report next to a real model's score. It reads only what a real
model would read, the conversation, and never the scenario files, so its score is earned.

What it understands (``parse_request``), in the person's text with the command cut out first (the
command is data; a "priority 10" inside it must not set a priority):
- GPUs: "4 GPUs", "a single GPU", "two gpus".
- Durations: "3 hours", "90 min", "2h", "half an hour", "2 days". A duration right after "at most",
  "no more than", "limit", "kill it after" ... is the hard time limit; otherwise the estimate.
- Priority: "priority 7"; "urgent"/"asap" -> 8; "low priority"/"no rush"/"not urgent" -> 3.
- Command: in backticks, or after " -- "; a name after "called" or "named".
- Begin time (``begin_at``): a clock time after "at", "after", "from" or "not before" ("at 11pm",
  "after 6pm", "at 23:00") -> "23:00"; a date ("on 2026-12-02 at 8am", "2026-12-02 08:00") ->
  "2026-12-02T08:00"; "tonight" or "this evening" without a time -> "20:00", or none when it is 20:00
  already (the request's time says). "overnight" is not a begin time.
- Dependencies: "after job 3" / "once job 3 ..." / "when job 3 ..." -> after [3]; with "whatever
  happens", "regardless", "even if it fails" ... -> after_any [3]. The job named is then one to wait
  for, not one to act on.
- Preemptible: "preemptible", "can be interrupted", "interruptible", "filler".
- Jobs: "job 3" or "#3" with cancel/stop/kill -> cancel_job; with priority words -> set_priority;
  "why"/"waiting"/"pending" -> explain_job (without an id: list my jobs, then explain the waiting ones).
- Reading: "quota" -> get_quotas; "reserved"/"reservation" -> list_reservations.
It asks a question when the command or the GPU count is missing, or when a cancel gives no job id.
The answer after a question fills in what is missing: the earlier request and the answer are merged,
and the answer to "which command?" is taken whole as the command. After its tool calls it answers
from the tool results, never from its own guess. It never reads job names or commands as orders.

What it does not understand, among much else: "a couple of GPUs", "8xH100", a limit word after the
duration ("4 hours max"), a job named rather than numbered, "2 or 4 GPUs" (it takes one instead of
asking), several jobs in one message, a clock time without am/pm or minutes ("at 11"), a weekday or a
month name ("on Wednesday", "December 2"), "in 2 hours" as a begin time (it reads it as the estimate),
several dependencies ("after jobs 3 and 4": it takes 3). The harness scores what it does, so each gap
shows in the report as a failed scenario.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from agent.llm import ModelReply, ToolCall

URGENT_PRIORITY = 8  # agent.chat.SYSTEM_PROMPT: "urgent" means priority 8
LOW_PRIORITY = 3  # and "low priority" means 3

_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "twelve": 12, "sixteen": 16}
_NUM = r"\d+(?:\.\d+)?|half an?|" + "|".join(_WORDS)
_GPUS = re.compile(rf"\b({_NUM})\s+(?:[a-z0-9]+\s+)?gpus?\b")
_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(rf"\b({_NUM})\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b")
_LIMIT_WORDS = re.compile(r"at most|no more than|not more than|no longer than|max(?:imum)?|limit|"
                          r"cap|(?:kill|stop) it after|time ?out|hard")
_PRIORITY_N = re.compile(r"\bprio(?:rity)?\s*(?:of|to|=|:)?\s*(\d+)\b")
_TO_N = re.compile(r"\bto\s+(\d+)\b")  # "raise job 2 to 9": only read when a job is named
_LOW = re.compile(r"\blow[- ]prio(?:rity)?\b|\bno rush\b|\bnot urgent\b|\bisn't urgent\b|\bwhenever\b")
_URGENT = re.compile(r"\burgent\b|\basap\b|\bas soon as possible\b|\bhigh[- ]prio(?:rity)?\b")
_COMMAND = (re.compile(r"`([^`]+)`"), re.compile(r"(?:^|\s)--\s+(.+)$", re.S))
_NAME = re.compile(r"\b(?:called|named|name it)\s+[\"']?([A-Za-z0-9._-]+)")
_JOB_ID = re.compile(r"\bjob\s*(?:#|id\s*)?(\d+)\b|#(\d+)\b")
_CANCEL = re.compile(r"\b(?:cancel|kill|stop|abort|remove|delete)\b(?!\s+it\s+after)")
_CHANGE = re.compile(r"\b(?:set|change|raise|lower|bump|boost|make|increase|decrease)\b")
_PRIORITY_WORDS = re.compile(r"\bprio(?:rity)?\b|\burgent\b|\basap\b")
_EXPLAIN = re.compile(r"\bwhy\b|\bexplain\b|\bwaiting\b|\bpending\b|\bstuck\b|\bnot running\b")
_QUOTA = re.compile(r"\bquotas?\b")
_RESERVED = re.compile(r"\breserv(?:ed|ations?)\b")
# A clock time counts only with am/pm or minutes: "at 2 GPUs" and "after 4 hours" are not times.
_CLOCK = re.compile(r"\b(?:at|after|from|not before|no earlier than)\s+(\d{1,2})(?::(\d{2}))?\s*([ap]m)?\b")
_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})(?:[ t](\d{2}:\d{2}))?\b")  # "2026-12-02", "2026-12-02 08:00"
_TONIGHT = re.compile(r"\btonight\b|\bthis evening\b")
TONIGHT_HOUR = 20  # "tonight" without a time is 20:00; agent.chat.SYSTEM_PROMPT says the same
_AFTER_JOB = re.compile(r"\b(?:after|once|when|until)\s+(?:job\s*#?|#)(\d+)\b")
_ANY_END = re.compile(r"\bwhatever\b|\bregardless\b|\bno matter\b|\bhowever it ends\b|\beven if it fails\b|"
                      r"\b(?:succeeds|passes) or fails\b")
_PREEMPTIBLE = re.compile(r"\bpre-?empt(?:ible|able)\b|\binterruptible\b|\bfiller\b|"
                          r"\b(?:can|may) be (?:interrupted|pre-?empted)\b")
ASK_COMMAND = "Which command should the job run (in backticks, or after --)?"
ASK_GPUS = "How many GPUs does it need?"


@dataclass(frozen=True)
class Request:
    """What one message asks for; ``None`` where the message does not say."""

    gpu_count: int | None = None
    est_duration_s: float | None = None
    time_limit_s: float | None = None
    priority: int | None = None
    command: str | None = None
    name: str | None = None
    job_id: int | None = None
    intent: str | None = None  # cancel | priority | explain | quota | reservations; None: a submission, if anything
    begin_at: str | None = None  # as submit_job takes it: "23:00", "2026-12-02T08:00"
    after: tuple[int, ...] | None = None
    after_any: tuple[int, ...] | None = None
    preemptible: bool | None = None

    def merged(self, later: "Request") -> "Request":
        """An answer to our question fills in the earlier request; what it says wins."""
        said = {f.name: getattr(later, f.name) for f in fields(later) if getattr(later, f.name) is not None}
        return replace(self, **said)


def _number(text: str) -> float:
    if text.startswith("half"):
        return 0.5
    return float(_WORDS.get(text) or text)


def _clock_time(text: str) -> str | None:
    """The first clock time after "at", "after", "from" ... as ``HH:MM``; 11pm is 23:00, 12am 00:00."""
    for match in _CLOCK.finditer(text):
        hour, minutes, half = int(match.group(1)), match.group(2), match.group(3)
        if minutes is None and half is None:
            continue
        if half is not None:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if half == "pm" else 0)
        if hour <= 23 and int(minutes or 0) <= 59:
            return f"{hour:02d}:{minutes or '00'}"
    return None


def begin_time(text: str, now: float | None) -> str | None:
    """``begin_at`` for submit_job, from lower-case prose; ``now`` (Unix seconds) decides whether
    "tonight" is still ahead."""
    clock, date = _clock_time(text), _DATE.search(text)
    if date is not None:
        return f"{date.group(1)}T{date.group(2) or clock or '00:00'}"
    if clock is not None:
        return clock
    if _TONIGHT.search(text):  # at 20:00 or later it is tonight already: start at once
        return None if now is not None and datetime.fromtimestamp(now).hour >= TONIGHT_HOUR else f"{TONIGHT_HOUR}:00"
    return None


def parse_request(message: str, now: float | None = None) -> Request:
    command = next((m.group(1).strip() for p in _COMMAND if (m := p.search(message))), None)
    prose = message
    for pattern in _COMMAND:  # the command is data: nothing in it may set another field
        prose = pattern.sub(" ", prose)
    text = prose.lower()
    est = limit = None
    previous_end = 0
    for match in _DURATION.finditer(text):
        seconds = _number(match.group(1)) * _UNITS[match.group(2)[0]]
        if _LIMIT_WORDS.search(text[previous_end:match.start()][-30:]):
            limit = limit or seconds
        else:
            est = est or seconds
        previous_end = match.end()
    job = _JOB_ID.search(text)
    job_id = int(job.group(1) or job.group(2)) if job else None
    after = after_any = None
    dependency = _AFTER_JOB.search(text)
    if dependency is not None:  # the job named is one to wait for, not one to act on: a submission
        ids = (int(dependency.group(1)),)
        if _ANY_END.search(text):
            after_any = ids
        else:
            after = ids
        job_id = None
    number = _PRIORITY_N.search(text) or (_TO_N.search(text) if job_id is not None else None)
    priority = (int(number.group(1)) if number else LOW_PRIORITY if _LOW.search(text) else
                URGENT_PRIORITY if _URGENT.search(text) else None)
    intent = (None if dependency is not None else
              "cancel" if _CANCEL.search(text) else
              "priority" if job_id is not None and _CHANGE.search(text) and _PRIORITY_WORDS.search(text) else
              "explain" if _EXPLAIN.search(text) else
              "quota" if _QUOTA.search(text) else
              "reservations" if _RESERVED.search(text) else None)
    gpus = _GPUS.search(text)
    name = _NAME.search(prose)
    return Request(
        gpu_count=int(_number(gpus.group(1))) if gpus else None, est_duration_s=est, time_limit_s=limit,
        priority=priority, command=command, name=name.group(1) if name else None, job_id=job_id, intent=intent,
        begin_at=begin_time(text, now), after=after, after_any=after_any,
        preemptible=True if _PREEMPTIBLE.search(text) else None,
    )


def _quoted(message: dict[str, Any]) -> dict[str, Any]:
    """agent.chat.quoted_request: a first line, then the user, time and message as JSON."""
    try:
        return json.loads((message.get("content") or "").split("\n", 1)[1])
    except (IndexError, ValueError):
        return {"message": message.get("content") or ""}


def current_request(messages: list[dict[str, Any]]) -> tuple[Request, str | None]:
    """The request being answered, merged with the earlier ones when we asked a question in between;
    and the acting user."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    last = users[-1]
    quoted = _quoted(messages[last])
    text, now = quoted.get("message", ""), quoted.get("time_unix")
    request = parse_request(text, now)
    for earlier in reversed(users[:-1]):
        question = next((m.get("content") or "" for m in reversed(messages[earlier:last]) if m["role"] == "assistant"), "")
        if not question.rstrip().endswith("?"):
            break
        if "command" in question and request.command is None and request.gpu_count is None:
            request = Request(command=text.strip())  # the answer to "which command?" is the command
        text = _quoted(messages[earlier]).get("message", "")
        request = parse_request(text, now).merged(request)
        last = earlier
    return request, _quoted(messages[users[-1]]).get("user")


class RuleModel:
    """The ``Model`` protocol, answered by rules; see the module's docstring."""

    name = "rule-baseline"

    def __init__(self) -> None:
        self._calls = 0

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], timeout_s: float) -> ModelReply:
        if messages[-1]["role"] == "tool":
            return self._after_tools(messages)
        request, user = current_request(messages)
        if request.intent == "cancel":
            if request.job_id is None:
                return ModelReply(content="Which job should I cancel? Please give its id.")
            return self._call(("cancel_job", {"job_id": request.job_id}))
        if request.intent == "priority":
            if request.priority is None:
                return ModelReply(content=f"Which priority (1 to 10) should job {request.job_id} get?")
            return self._call(("set_priority", {"job_id": request.job_id, "priority": request.priority}))
        if request.intent == "explain":
            if request.job_id is None:
                return self._call(("list_queue", {"user": user}))
            return self._call(("explain_job", {"job_id": request.job_id}))
        if request.intent == "quota":
            return self._call(("get_quotas", {}))
        if request.intent == "reservations":
            return self._call(("list_reservations", {}))
        # Anything else is read as a submission.
        missing = [q for q, value in ((ASK_GPUS, request.gpu_count), (ASK_COMMAND, request.command)) if value is None]
        if missing:
            return ModelReply(content=" ".join(missing))
        return self._call(("submit_job", {
            "name": request.name, "command": request.command, "gpu_count": request.gpu_count,
            "priority": request.priority, "est_duration_s": request.est_duration_s,
            "time_limit_s": request.time_limit_s, "cwd": None, "env": None, "max_retries": None,
            "begin_at": request.begin_at, "after": request.after, "after_any": request.after_any,
            "preemptible": request.preemptible,
        }))

    def _call(self, *calls: tuple[str, dict[str, Any]]) -> ModelReply:
        tool_calls = []
        for name, arguments in calls:
            self._calls += 1
            tool_calls.append(ToolCall(id=f"rule_{self._calls}", name=name, arguments=json.dumps(arguments)))
        return ModelReply(content=None, tool_calls=tuple(tool_calls))

    def _after_tools(self, messages: list[dict[str, Any]]) -> ModelReply:
        """Answer from the latest tool results; a queue listing for "why does my job wait" leads to
        explain_job for each of the user's waiting jobs."""
        start = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        names = {c["id"]: c["function"]["name"] for c in messages[start].get("tool_calls", [])}
        results = [(names.get(m["tool_call_id"], "?"), json.loads(m["content"])) for m in messages[start + 1:]]
        if len(results) == 1 and results[0][0] == "list_queue" and results[0][1].get("ok"):
            waiting = [e["job"]["id"] for e in results[0][1]["result"]["jobs"] if e["job"]["status"] == "queued"]
            if waiting:
                return self._call(*(("explain_job", {"job_id": i}) for i in waiting))
            return ModelReply(content="You have no waiting jobs.")
        return ModelReply(content=" ".join(_describe(name, result) for name, result in results))


def _describe(tool: str, result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"I could not do that ({tool}): {result.get('rejected')}."
    value = result["result"]
    if tool == "submit_job":
        return f"Queued job {value['job_id']} ({value['status']}, position {value['position']})."
    if tool == "explain_job":
        reason = f" (reason: {value['reason']})" if value["reason"] else ""
        return f"Job {value['job_id']} is {value['status']}: {value['message']}{reason}."
    if tool in ("cancel_job", "set_priority"):
        return f"Job {value['id']} is {value['status']} with priority {value['priority']}."
    if tool == "get_quotas":
        default = value["default_user_quota"]
        users = "; ".join(f"{u['user']}: {_limit(u['quota'])}, {u['in_use']} in use, {u['waiting_gpus']} waiting"
                          for u in value["users"])
        return f"GPU quotas (GPUs at once): {users or 'none set'}; anyone else: {_limit(default)}."
    if tool == "list_reservations":
        if not value:
            return "No GPUs are reserved."
        return " ".join(f"{r['node']} GPUs {r['gpus']} for {r['user'] or r['group']}." for r in value)
    return "Done."


def _limit(quota: int | None) -> str:
    return "no limit" if quota is None else f"{quota} GPUs"
