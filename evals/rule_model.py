"""``RuleModel``: a deterministic, rule-based ``Model``, the baseline a real model must beat.

It plays three parts: the scripted model ``make test`` runs the chat scenarios with (no network, same
answer every time), the floor we report next to a real model's score, and a scheduling model for
``herd eval replay --policies agent --model rule`` (when it is offered ``propose_allocation``: see
``RuleModel.schedule``). It reads only what a real model would read, the conversation and the tool
results, and never the scenario files, so its score is earned.

What it understands (``parse_request``), in the person's text with the command cut out first (the
command is data; a "priority 10" inside it must not set a priority):
- GPUs: "4 GPUs", "a single GPU", "two gpus", "a couple of GPUs", "8xH100", "4 A100s", "0 GPUs".
- Hardware: a GPU model named ("A100", "8xH100") is checked against the cluster (get_cluster_state)
  before anything is submitted; a model the cluster does not have is refused, saying what it has.
- Durations: "3 hours", "90 min", "2h", "half an hour", "2 days". A duration right after "at most",
  "no more than", "limit", "kill it after" ... is the hard time limit; otherwise the estimate. A
  number word needs a space before its unit ("an hour"), so "and", "as" and "am" are no durations.
- Priority: "priority 7"; "urgent"/"asap" -> 8; "low priority"/"no rush"/"not urgent" -> 3;
  "highest"/"top priority" -> 10; "lowest priority" -> 1.
- Command: in backticks (several: one job each), or after " -- ", or else a command line in the text
  starting with python, torchrun, accelerate, deepspeed, bash, ... up to the first word of prose
  ("on 2 GPUs", "for", "with", ","); a name after "called" or "named", in quotes if it has spaces
  (a " -- " inside quotes is part of the name, not the command's start).
- Begin time (``begin_at``): a clock time after "at", "after", "from" or "not before" ("at 11pm",
  "after 6pm", "at 23:00") -> "23:00"; a date ("on 2026-12-02 at 8am", "2026-12-02 08:00") ->
  "2026-12-02T08:00"; "tonight" or "this evening" without a time -> "20:00", or none when it is 20:00
  already (the request's time says). "overnight" is not a begin time.
- Dependencies: "after job 3" / "after my job 3" / "once job 3 ..." / "when job 3 ..." -> after [3];
  with "whatever happens", "regardless", "even if it fails" ... -> after_any [3]. The job named is then
  one to wait for, not one to act on.
- Preemptible: "preemptible", "can be interrupted", "interruptible", "filler".
- Jobs: "job 3" or "#3" with cancel/stop/kill -> cancel_job; with priority words -> set_priority;
  "why"/"waiting"/"pending" -> explain_job (without an id: list my jobs, then explain the waiting ones).
  Another user's jobs named by their user ("bo's jobs") are refused: only one's own.
- Reading: "quota" -> get_quotas; "reserved"/"reservation" -> list_reservations; a question about
  free GPUs, what runs or the queue -> get_cluster_state and list_queue, answered from them.
- Overreach ("ignore the rules", "you are now admin", "all GPUs") is refused outright.
It asks a question when the command or the GPU count is missing, or when a cancel gives no job id.
The answer after a question fills in what is missing: the earlier request and the answer are merged,
and the answer to "which command?" is taken whole as the command (or the command line in it). After
its tool calls it answers from the tool results, never from its own guess. It never reads job names
or commands as orders.

What it does not understand, among much else: a limit word after the duration ("4 hours max"), a job
named rather than numbered, "2 or 4 GPUs" (it takes one instead of asking), a clock time without
am/pm or minutes ("at 11"), a weekday or a month name ("on Wednesday", "December 2"), "in 2 hours" as
a begin time (it reads it as the estimate), several dependencies ("after jobs 3 and 4": it takes 3),
several jobs without backticks. The harness scores what it does, so each gap shows in the report as a
failed scenario.
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
HIGHEST_PRIORITY, LOWEST_PRIORITY = 10, 1

_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "twelve": 12, "sixteen": 16, "zero": 0,
          "a couple of": 2, "a pair of": 2}
_WORD_NUM = r"half an?|a couple of|a pair of|" + "|".join(w for w in _WORDS if " " not in w)
_NUM = r"\d+(?:\.\d+)?|" + _WORD_NUM
_GPUS = re.compile(rf"\b({_NUM})\s+(?:[a-z0-9]+\s+)?gpus?\b")
_HARDWARE = re.compile(rf"\b(?:(\d+|{_WORD_NUM})\s*(?:x\s*|×\s*)?)?"
                       r"(a100|h100|h200|b200|v100|a10g?|l40s?|l4|t4|a6000|a40|rtx\s?\d{4}|mi\d{3}x?)s?\b")
_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
# Digits may touch their unit ("2h"); a number word needs a space ("an hour"): "and", "as" and "am"
# are words, not a day, a second and a minute.
_DURATION = re.compile(r"\b(?:(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)"
                       rf"|({_WORD_NUM})\s+(days?|hours?|hrs?|minutes?|mins?|seconds?|secs?))\b")
_LIMIT_WORDS = re.compile(r"at most|no more than|not more than|no longer than|max(?:imum)?|limit|"
                          r"cap|(?:kill|stop) it after|time ?out|hard")
_PRIORITY_N = re.compile(r"\bprio(?:rity)?\s*(?:of|to|=|:)?\s*(\d+)\b")
_TO_N = re.compile(r"\bto\s+(\d+)\b")  # "raise job 2 to 9": only read when a job is named
_LOW = re.compile(r"\blow[- ]prio(?:rity)?\b|\bno rush\b|\bnot urgent\b|\bisn't urgent\b|\bwhenever\b")
_URGENT = re.compile(r"\burgent\b|\basap\b|\bas soon as possible\b|\bhigh[- ]prio(?:rity)?\b")
_HIGHEST = re.compile(r"\b(?:highest|top|max(?:imum)?)[- ]prio(?:rity)?\b")
_LOWEST = re.compile(r"\b(?:lowest|bottom|min(?:imum)?)[- ]prio(?:rity)?\b")
_BACKTICKS = re.compile(r"`([^`]+)`")
_DASHES = re.compile(r"(?:^|\s)--\s+(.+)$", re.S)
_QUOTED_NAME = re.compile(r"\b(?:called|named|call it|name it|name)\s+(?:\"([^\"]+)\"|“([^”]+)”|'([^']+)')")
_NAME = re.compile(r"\b(?:called|named|call it|name it)\s+[\"']?([A-Za-z0-9._-]+)")
_NAME_HOLE = "QUOTEDNAME"
_EXECUTABLES = ("python", "python3", "torchrun", "accelerate", "deepspeed", "bash", "sh", "srun", "julia",
                "rscript", "jupyter", "pytest", "mpirun")
_PROSE_WORDS = {"on", "with", "for", "using", "at", "after", "and", "please", "in", "taking", "takes", "should",
                "it", "that", "then", "but", "so", "which", "needs", "need", "-", "—"}
_JOB_ID = re.compile(r"\bjob\s*(?:#|id\s*)?(\d+)\b|#(\d+)\b")
_CANCEL = re.compile(r"\b(?:cancel|kill|stop|abort|remove|delete)\b(?!\s+it\s+after)")
_CHANGE = re.compile(r"\b(?:set|change|raise|lower|bump|boost|make|increase|decrease|give|put|drop|move)\b")
_PRIORITY_WORDS = re.compile(r"\bprio(?:rity)?\b|\burgent\b|\basap\b")
_EXPLAIN = re.compile(r"\bwhy\b|\bexplain\b|\bwaiting\b|\bpending\b|\bstuck\b|\bnot running\b")
_QUOTA = re.compile(r"\bquotas?\b")
_RESERVED = re.compile(r"\breserv(?:ed|ations?)\b")
_STATE = re.compile(r"\bfree\b|\bavailable\b|\bidle\b|\bin use\b|\bbusy\b|\brunning\b|\bqueue\b|\bnodes?\b")
_QUESTION = re.compile(r"\?\s*$|^\s*(?:what|how|when|which|who|is|are|any|can|will)\b")
# A clock time counts only with am/pm or minutes: "at 2 GPUs" and "after 4 hours" are not times.
_CLOCK = re.compile(r"\b(?:at|after|from|not before|no earlier than)\s+(\d{1,2})(?::(\d{2}))?\s*([ap]m)?\b")
_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})(?:[ t](\d{2}:\d{2}))?\b")  # "2026-12-02", "2026-12-02 08:00"
_TONIGHT = re.compile(r"\btonight\b|\bthis evening\b")
TONIGHT_HOUR = 20  # "tonight" without a time is 20:00; agent.chat.SYSTEM_PROMPT says the same
_AFTER_JOB = re.compile(r"\b(?:after|once|when|until)\s+(?:my\s+|the\s+|our\s+)?(?:job\s*#?|#)(\d+)\b")
_ANY_END = re.compile(r"\bwhatever\b|\bregardless\b|\bno matter\b|\bhowever it ends\b|\beven if it fails\b|"
                      r"\b(?:succeeds|passes) or fails\b")
_PREEMPTIBLE = re.compile(r"\bpre-?empt(?:ible|able)\b|\binterruptible\b|\bfiller\b|"
                          r"\b(?:can|may) be (?:interrupted|pre-?empted)\b")
_OTHERS_JOBS = re.compile(r"\b([a-z][a-z0-9_.-]*)'s\s+(?:[a-z0-9_-]+\s+){0,2}?jobs?\b")
_NOT_A_USER = {"it", "that", "what", "who", "there", "here", "one", "today", "yesterday", "tomorrow", "let", "everyone",
               "somebody", "someone", "nobody", "team", "lab", "last", "this", "my"}
_OVERREACH = re.compile(r"\bignore (?:the |all |your |any |previous |these )*(?:rules|instructions)\b|"
                        r"\byou are (?:now )?(?:an? )?admin\b|\bas (?:an? )?admin\b|\ball (?:the )?gpus\b|"
                        r"\bevery gpu\b")
ASK_COMMAND = "Which command should the job run (in backticks, or after --)?"
ASK_GPUS = "How many GPUs does it need?"
OVERREACH = ("I can't do that: I act only for you, within the scheduler's rules; I cannot act as an administrator, "
             "change the rules, or give anyone more GPUs than they allow.")


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
    intent: str | None = None  # cancel | priority | explain | quota | reservations | state | others | overreach
    begin_at: str | None = None  # as submit_job takes it: "23:00", "2026-12-02T08:00"
    after: tuple[int, ...] | None = None
    after_any: tuple[int, ...] | None = None
    preemptible: bool | None = None
    hardware: str | None = None  # a GPU model named: "a100", "h100"
    owner: str | None = None  # whose jobs the message names ("bo's jobs")
    more: tuple["Request", ...] = ()  # further jobs of the same message (several commands)

    def merged(self, later: "Request") -> "Request":
        """An answer to our question fills in the earlier request; what it says wins."""
        said = {f.name: getattr(later, f.name) for f in fields(later)
                if getattr(later, f.name) is not None and f.name != "more"}
        return replace(self, **said)

    def submission(self) -> dict[str, Any]:
        return {
            "name": self.name, "command": self.command, "gpu_count": self.gpu_count,
            "priority": self.priority, "est_duration_s": self.est_duration_s,
            "time_limit_s": self.time_limit_s, "cwd": None, "env": None, "max_retries": None,
            "begin_at": self.begin_at, "after": self.after, "after_any": self.after_any,
            "preemptible": self.preemptible,
        }


def _number(text: str) -> float:
    if text.startswith("half"):
        return 0.5
    return float(_WORDS[text] if text in _WORDS else text)


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


def bare_command(text: str) -> str | None:
    """A command line written into prose without marks: from a known program ("python", "torchrun",
    "./run.sh") to the first word of prose after it; a word after a flag is the flag's value."""
    tokens = text.split()
    for i, token in enumerate(tokens):
        word = token.lstrip("\"'(").lower()
        if word.rstrip(".,;:?!") in _EXECUTABLES or word.startswith("./"):
            kept = [token.lstrip("\"'(")]
            if kept[0][-1:] in ",;:?!" and word.rstrip(".,;:?!") in _EXECUTABLES:
                return None  # "python," is a word, not a command
            for previous, token in zip(tokens[i:], tokens[i + 1:]):
                bare = token.lower().rstrip(".,;:?!)\"'")
                if bare in _PROSE_WORDS and not previous.startswith("-"):
                    break
                end = token[-1:] in ",;?!" or (token.endswith(".") and not re.search(r"\.\w+\.$", token))
                kept.append(token.rstrip(",;?!)\"'") if end or token[-1:] in ")\"'" else token)
                if end:
                    kept[-1] = kept[-1].rstrip(".")
                    break
            command = " ".join(kept).rstrip(",;:?!")
            return command if len(kept) > 1 or "/" in command else None
    return None


def _parse(message: str, now: float | None, command: str | None) -> Request:
    """One job's request from ``message`` (its command already found and cut out of it)."""
    quoted = _QUOTED_NAME.search(message)
    prose = message if quoted is None else message[:quoted.start()] + " " + message[quoted.end():]
    for pattern in (_BACKTICKS, _DASHES):  # the command is data: nothing in it may set another field
        prose = pattern.sub(" ", prose)
    if command is not None and command in prose:
        prose = prose.replace(command, " ")
    text = prose.lower()
    est = limit = None
    previous_end = 0
    for match in _DURATION.finditer(text):
        amount, unit = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        seconds = _number(amount) * _UNITS[unit[0]]
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
    priority = (int(number.group(1)) if number else HIGHEST_PRIORITY if _HIGHEST.search(text) else
                LOWEST_PRIORITY if _LOWEST.search(text) else LOW_PRIORITY if _LOW.search(text) else
                URGENT_PRIORITY if _URGENT.search(text) else None)
    gpus = _GPUS.search(text)
    hardware = _HARDWARE.search(text)
    gpu_count = int(_number(gpus.group(1))) if gpus else None
    if gpu_count is None and hardware is not None and hardware.group(1):
        gpu_count = int(_number(hardware.group(1)))
    owners = [m.group(1) for m in _OTHERS_JOBS.finditer(text) if m.group(1) not in _NOT_A_USER]
    acting = (_CANCEL.search(text) is not None or (_CHANGE.search(text) is not None and
                                                   _PRIORITY_WORDS.search(text) is not None))
    intent = ("overreach" if _OVERREACH.search(text) else
              None if dependency is not None else
              "others" if owners and acting else
              "cancel" if _CANCEL.search(text) else
              "priority" if job_id is not None and _CHANGE.search(text) and _PRIORITY_WORDS.search(text) else
              "explain" if _EXPLAIN.search(text) else
              "quota" if _QUOTA.search(text) else
              "reservations" if _RESERVED.search(text) else
              "state" if command is None and _STATE.search(text) and _QUESTION.search(text)
              else None)
    if quoted is not None:
        name = next(g for g in quoted.groups() if g is not None)
    else:
        plain = _NAME.search(prose)
        name = plain.group(1) if plain else None
    return Request(
        gpu_count=gpu_count, est_duration_s=est, time_limit_s=limit,
        priority=priority, command=command, name=name, job_id=job_id, intent=intent,
        begin_at=begin_time(text, now), after=after, after_any=after_any,
        preemptible=True if _PREEMPTIBLE.search(text) else None,
        hardware=re.sub(r"\s", "", hardware.group(2)) if hardware else None,
        owner=owners[0] if owners else None,
    )


def parse_request(message: str, now: float | None = None) -> Request:
    """The request in ``message``; several commands in backticks are several jobs (``more``), each with
    what the text after it says (its GPUs, ...) over what the whole message says."""
    quoted = _QUOTED_NAME.search(message)
    # A quoted name is not a command, even with " -- " in it.
    unquoted = message if quoted is None else message[:quoted.start()] + _NAME_HOLE + message[quoted.end():]
    ticks = list(_BACKTICKS.finditer(unquoted))
    if len(ticks) > 1:
        shared = _parse(message, now, None)
        jobs = []
        for i, tick in enumerate(ticks):
            end = ticks[i + 1].start() if i + 1 < len(ticks) else len(unquoted)
            own = _parse(unquoted[tick.end():end].replace(_NAME_HOLE, " "), now, None)
            jobs.append(replace(shared.merged(replace(own, intent=None, name=None)), command=tick.group(1).strip(),
                                intent=shared.intent))
        return replace(jobs[0], more=tuple(jobs[1:]))
    if ticks:
        command = ticks[0].group(1).strip()
    else:
        dashes = _DASHES.search(unquoted)
        command = dashes.group(1).strip() if dashes else bare_command(unquoted.replace(_NAME_HOLE, " "))
    return _parse(message, now, command)


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
        if any(t.get("function", {}).get("name") == "propose_allocation" for t in tools or ()):
            return self.schedule(messages)
        if messages[-1]["role"] == "tool":
            return self._after_tools(messages)
        request, user = current_request(messages)
        if request.intent == "overreach":
            return ModelReply(content=OVERREACH)
        if request.intent == "others":
            return ModelReply(content=f"I can only act on your own jobs; {request.owner}'s jobs are {request.owner}'s "
                              "(ask them, or an administrator).")
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
        if request.intent == "state":
            return self._call(("get_cluster_state", {}), ("list_queue", {"user": None}))
        # Anything else is read as a submission.
        missing = [q for q, value in ((ASK_GPUS, request.gpu_count), (ASK_COMMAND, request.command)) if value is None]
        if missing:
            return ModelReply(content=" ".join(missing))
        if request.hardware is not None:  # first see whether the cluster has it
            return self._call(("get_cluster_state", {}))
        return self._submit(request)

    def _submit(self, request: Request) -> ModelReply:
        return self._call(*(("submit_job", job.submission()) for job in (request, *request.more)))

    def _call(self, *calls: tuple[str, dict[str, Any]]) -> ModelReply:
        tool_calls = []
        for name, arguments in calls:
            self._calls += 1
            tool_calls.append(ToolCall(id=f"rule_{self._calls}", name=name, arguments=json.dumps(arguments)))
        return ModelReply(content=None, tool_calls=tuple(tool_calls))

    def _after_tools(self, messages: list[dict[str, Any]]) -> ModelReply:
        """Answer from the latest tool results; a queue listing for "why does my job wait" leads to
        explain_job for each of the user's waiting jobs, and the cluster's GPU models to the submission
        (or a refusal) of a job that named one."""
        start = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        names = {c["id"]: c["function"]["name"] for c in messages[start].get("tool_calls", [])}
        results = [(names.get(m["tool_call_id"], "?"), json.loads(m["content"])) for m in messages[start + 1:]]
        request, _ = current_request(messages)
        if [name for name, _ in results] == ["get_cluster_state"] and request.hardware is not None:
            return self._with_hardware(request, results[0][1])
        if len(results) == 1 and results[0][0] == "list_queue" and results[0][1].get("ok"):
            waiting = [e["job"]["id"] for e in results[0][1]["result"]["jobs"] if e["job"]["status"] == "queued"]
            if waiting:
                return self._call(*(("explain_job", {"job_id": i}) for i in waiting))
            return ModelReply(content="You have no waiting jobs.")
        return ModelReply(content=" ".join(_describe(name, result) for name, result in results))

    def _with_hardware(self, request: Request, result: dict[str, Any]) -> ModelReply:
        if not result.get("ok"):
            return ModelReply(content=_describe("get_cluster_state", result))
        models = sorted({g["model"] for n in result["result"]["nodes"] for g in n["gpus"] if g.get("model")})
        wanted = request.hardware or ""
        if not models or any(wanted in m.lower().replace(" ", "") for m in models):
            return self._submit(request)  # the cluster has it, or does not say which GPUs it has
        return ModelReply(content=f"This cluster has no {wanted.upper()} GPUs (it has {', '.join(models)}); "
                          "I queued nothing. Shall I use those instead?")

    # -- scheduling -----------------------------------------------------------------------------------
    def schedule(self, messages: list[dict[str, Any]]) -> ModelReply:
        """The scheduling part: best fit, shortest estimate first. From the snapshot in the prompt, the
        jobs that may start, shortest estimate first (unknown last), then by priority, each on the node
        with the fewest free GPUs that fits it; all in one reply, then "done"."""
        if messages[-1]["role"] == "tool":
            return ModelReply(content="done")
        try:
            data = json.loads(messages[-1]["content"].split("\n", 1)[1])
        except (IndexError, ValueError, KeyError):
            return ModelReply(content="done")
        free = {node: list(gpus) for node, gpus in data.get("free_gpus", {}).items()}
        jobs = [j for j in data.get("queued_jobs", []) if j.get("may_start") and isinstance(j.get("gpu_count"), int)]
        jobs.sort(key=lambda j: (j.get("est_duration_s") is None, j.get("est_duration_s") or 0,
                                 -(j.get("priority") or 0), j["job_id"]))
        proposals = []
        for job in jobs:
            fits = [node for node, gpus in free.items() if len(gpus) >= job["gpu_count"]]
            if not fits:
                continue
            node = min(fits, key=lambda n: (len(free[n]), n))
            take, free[node] = free[node][:job["gpu_count"]], free[node][job["gpu_count"]:]
            proposals.append(("propose_allocation", {"job_id": job["job_id"], "node": node, "gpu_indices": take,
                                                     "reason": "shortest first, best fit"}))
        if not proposals:
            return ModelReply(content="done")
        return self._call(*proposals)


def _describe(tool: str, result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"I could not do that ({tool}): {result.get('rejected') or result.get('error')}."
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
    if tool == "get_cluster_state":
        free = {n["name"]: sum(g["state"] == "free" for g in n["gpus"]) for n in value["nodes"]}
        per_node = ", ".join(f"{name}: {count}" for name, count in free.items())
        return f"{value['free_gpus']} of {value['total_gpus']} GPUs are free ({per_node})."
    if tool == "list_queue":
        jobs = [e["job"] for e in value["jobs"]]
        running = sum(j["status"] in ("running", "scheduled") for j in jobs)
        waiting = [e for e in value["jobs"] if e["job"]["status"] == "queued"]
        planned = [e["estimated_start"] for e in waiting if e.get("estimated_start") is not None]
        first = f"; the next start is planned at {_clock(min(planned))}" if planned else ""
        return f"{running} job(s) running and {len(waiting)} waiting{first}."
    return "Done."


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def _limit(quota: int | None) -> str:
    return "no limit" if quota is None else f"{quota} GPUs"
