"""The bounded tool-calling loop, and typed tools as the model sees them.

Every tool call ends in one of three ways, and none of them leaves the loop:
- a result, returned to the model as JSON;
- a rejection (arguments that do not parse or validate, nested too deep, an unknown tool, a call
  past a cap, a request the core refuses, a proposal the validator refuses), returned to the model
  with the reason and "fix and try again";
- a tool error (a bug, the database is gone): recorded with its exception, and the loop stops.
Every failure of the model or its adapter (an exception of any kind, a reply that is not one) is a
model error. The loop stops when the model answers without a tool call, or at a bound: turns,
wall-clock budget, rejected calls, a model error or a tool error; ``run_loop`` itself never raises
(short of ``KeyboardInterrupt``). The caller decides what a stop means (chat: say so and list what
was done; scheduling: fall back to the deterministic policy).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Sequence

import openai
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.llm import Model, ModelError, ModelTimeout, ToolCall, normalized
from agent.messages import describe_errors
from tools.clock import Clock
from tools.door.context import PermissionDenied, ToolRefused
from tools.orchestrator import InvalidJob
from tools.queue import IllegalTransition, JobNotFound
from tools.store import QueueFull

log = logging.getLogger(__name__)

# The core's refusals: each becomes a rejection the model can act on, never a crash.
REFUSALS = (ToolRefused, JobNotFound, IllegalTransition, PermissionDenied, InvalidJob, QueueFull, ValueError)


@dataclass(frozen=True)
class Tool:
    name: str
    args: type[BaseModel]
    run: Callable[[Any, Any], Any]  # (context, parsed arguments) -> a JSON-able result
    description: str | None = None  # what the model reads; the argument model's docstring if None

    def schema(self) -> dict[str, Any]:
        """The OpenAI strict-mode function schema, generated from the argument model. Strict mode wants
        every field, so a field with a default is nullable (null: the default); and it has no free-form
        objects, so a map is a list of name/value pairs."""
        description = self.description or inspect.cleandoc(self.args.__doc__ or "")
        tool = openai.pydantic_function_tool(self.args, name=self.name, description=description)
        parameters = tool["function"]["parameters"]
        parameters["description"] = description
        properties = parameters["properties"]
        for key, field_info in self.args.model_fields.items():
            prop = properties[key]
            if key in _maps(self.args):
                prop.pop("additionalProperties")
                prop.update(type="array", items=_PAIR)
            if not field_info.is_required():
                prop.pop("default", None)
                if not any(option.get("type") == "null" for option in prop.get("anyOf", ())):
                    kept = {k: prop.pop(k) for k in ("description", "title") if k in prop}
                    properties[key] = {"anyOf": [prop, {"type": "null"}], **kept}
        return tool

    def parse(self, arguments: Any, raw: str) -> BaseModel:
        """The call's arguments as the argument model; a map may come as the schema's list of pairs."""
        if not isinstance(arguments, dict):
            return self.args.model_validate_json(raw or "{}")
        for key in _maps(self.args):
            pairs = arguments.get(key)
            if isinstance(pairs, list) and all(isinstance(p, dict) and {"name", "value"} <= p.keys() for p in pairs):
                arguments = {**arguments, key: {p["name"]: p["value"] for p in pairs}}
        return self.args.model_validate(arguments)


_PAIR = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "The name."}, "value": {"type": "string", "description": "Its value."}},
    "required": ["name", "value"],
    "additionalProperties": False,
}


def _maps(args: type[BaseModel]) -> list[str]:
    """The fields of ``args`` that are maps of text to text."""
    return [key for key, f in args.model_fields.items() if f.annotation == dict[str, str]]


class Verdict(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    ERROR = "error"  # the tool itself failed: our fault, not the model's


@dataclass(frozen=True)
class Action:
    """One tool call as the audit log and the chat reply show it."""

    tool: str
    arguments: Any  # the parsed JSON object, or the raw text when it did not parse
    verdict: Verdict
    detail: str  # the rejection's reason, or a short note on the result

    def to_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "arguments": self.arguments, "verdict": self.verdict.value, "detail": self.detail}


class Stop(StrEnum):
    ANSWERED = "answered"
    MAX_TURNS = "max_turns"
    BUDGET = "budget"
    REJECTIONS = "rejections"
    MODEL_ERROR = "model_error"
    TOOL_ERROR = "tool_error"


@dataclass(frozen=True)
class Bounds:
    max_turns: int = 6  # model calls per request
    budget_s: float = 15.0  # wall-clock for the whole request
    max_rejections: int = 3  # rejected tool calls before we stop listening
    max_calls_per_reply: int = 16  # tool calls run from one reply; the rest are refused unrun


@dataclass(frozen=True)
class TurnRecord:
    latency_s: float
    content: str | None
    tool_calls: list[dict[str, Any]]
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class LoopResult:
    reply: str | None
    stop: Stop
    error: str | None = None
    actions: list[Action] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    # The exception behind a model or tool error (not stored; a front door chooses its answer by it).
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def timed_out(self) -> bool:
        """The model did not answer in time: the budget ran out, or its adapter timed out."""
        return self.stop == Stop.BUDGET or isinstance(self.exception, ModelTimeout)

    @property
    def done(self) -> list[Action]:
        """The calls that took effect (or read something), in order."""
        return [a for a in self.actions if a.verdict == Verdict.OK]


_JSON = TypeAdapter(Any)


def to_json(value: Any) -> str:
    return _JSON.dump_json(value, exclude_none=False).decode()


# Of arguments that do not parse, the audit log and the reply keep this much.
MAX_KEPT_RAW = 2_000


def _finite_or_text(text: str) -> float | str:
    """A JSON number as a float, or as its text when it is not finite (1e309, NaN): what the audit log
    and the reply carry stays valid JSON, and the tool refuses the text as not a number."""
    value = float(text)
    return value if math.isfinite(value) else text


def _parsed(raw: str) -> Any:
    """The call's arguments as JSON, or the raw text (cut short) when they are not JSON or are nested
    too deep to read."""
    try:
        return json.loads(raw or "{}", parse_float=_finite_or_text, parse_constant=str)
    except (ValueError, RecursionError):
        return raw[:MAX_KEPT_RAW] if isinstance(raw, str) else repr(raw)[:MAX_KEPT_RAW]


def call_tool(tools: dict[str, Tool], context: Any, call: ToolCall) -> tuple[Action, str]:
    """Run one call; return the audit record and the text the model gets back."""
    action, text, _ = run_call(tools, context, call)
    return action, text


def run_call(tools: dict[str, Tool], context: Any, call: ToolCall) -> tuple[Action, str, BaseException | None]:
    """``call_tool``, with the exception of a tool that failed (None otherwise). Never raises for
    anything the model sent."""
    arguments = _parsed(call.arguments)
    tool = tools.get(call.name)
    if tool is None:
        reason = f"unknown tool {str(call.name)[:100]!r}; the tools are: {', '.join(tools)}"
        return (*_rejected(call.name, arguments, reason), None)
    try:
        # The arguments, then the core's own models (e.g. priority 11): refused in the words every
        # front door uses for the same value.
        parsed = tool.parse(arguments, call.arguments)
    except ValidationError as exc:
        return (*_rejected(call.name, arguments, describe_errors(exc.errors())), None)
    except RecursionError:
        return (*_rejected(call.name, arguments, "the arguments are nested too deeply to read"), None)
    except (ValueError, TypeError) as exc:
        return (*_rejected(call.name, arguments, f"the arguments cannot be read: {exc}"), None)
    try:
        result = tool.run(context, parsed)
        text = to_json({"ok": True, "result": result})
    except ValidationError as exc:
        return (*_rejected(call.name, arguments, describe_errors(exc.errors())), None)
    except REFUSALS as exc:
        return (*_rejected(call.name, arguments, str(exc)), None)
    except Exception as exc:  # a bug, or the storage failed: stop, and say so
        log.exception("tool %s failed", call.name)
        detail = f"the tool failed ({type(exc).__name__}: {_first_line(exc)}); nothing more was done"
        text = to_json({"ok": False, "error": detail})
        return Action(call.name, arguments, Verdict.ERROR, detail), text, exc
    return Action(call.name, arguments, Verdict.OK, _done(result)), text, None


def _done(result: Any) -> str:
    """The OK action's detail: "done", with the job it made or changed where there is one."""
    job_id = result.get("job_id") if isinstance(result, dict) else getattr(result, "job_id", None)
    if job_id is None and not isinstance(result, dict):
        job_id = getattr(result, "id", None)
    return f"done (job {job_id})" if isinstance(job_id, int) and not isinstance(job_id, bool) else "done"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _rejected(name: str, arguments: Any, reason: str) -> tuple[Action, str]:
    text = to_json({"ok": False, "rejected": reason, "hint": "fix the call and try again, or answer the user"})
    return Action(str(name), arguments, Verdict.REJECTED, reason), text


@functools.cache
def _schema(tool: Tool) -> dict[str, Any]:
    return tool.schema()


def schemas_of(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The tools' schemas (generated once per tool; a copy each time, so no model can change them)."""
    return [copy.deepcopy(_schema(t)) for t in tools]


def run_loop(
    model: Model,
    messages: list[dict[str, Any]],
    tools: Sequence[Tool],
    context: Any,
    *,
    bounds: Bounds,
    clock: Clock,
) -> LoopResult:
    """Talk with ``model`` until it answers or a bound stops it. Never raises: whatever fails ends as
    a stop, with the actions already taken in the result."""
    result = LoopResult(reply=None, stop=Stop.MAX_TURNS, messages=list(messages))
    try:
        _talk(model, tools, context, bounds, clock, result)
    except Exception as exc:  # a bug of the loop itself: stop, keep what was done
        log.exception("the agent's loop failed")
        result.stop, result.error, result.exception = Stop.TOOL_ERROR, f"internal error ({type(exc).__name__}: {_first_line(exc)})", exc
    return result


def _talk(model: Model, tools: Sequence[Tool], context: Any, bounds: Bounds, clock: Clock, result: LoopResult) -> None:
    by_name = {t.name: t for t in tools}
    schemas = schemas_of(tools)
    started = clock.now()
    rejections = 0
    for _ in range(bounds.max_turns):
        left = bounds.budget_s - (clock.now() - started)
        if left <= 0:
            result.stop, result.error = Stop.BUDGET, f"no answer within the {bounds.budget_s:g} s budget"
            return
        t0 = clock.now()
        try:
            reply = normalized(model.complete(result.messages, schemas, timeout_s=left))
        except ModelError as exc:
            result.stop, result.error, result.exception = Stop.MODEL_ERROR, str(exc), exc
            return
        except Exception as exc:  # the adapter's own bug, or anything its client raised
            log.warning("the model adapter failed: %s: %s", type(exc).__name__, _first_line(exc))
            result.stop, result.exception = Stop.MODEL_ERROR, exc
            result.error = f"the model adapter failed ({type(exc).__name__}: {_first_line(exc)})"
            return
        result.turns.append(TurnRecord(
            latency_s=clock.now() - t0, content=reply.content,
            tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
        ))
        result.messages.append(reply.as_message())
        if not reply.tool_calls:
            result.reply, result.stop = reply.content, Stop.ANSWERED
            return
        failure: BaseException | None = None
        for i, call in enumerate(reply.tool_calls):
            if failure is not None:
                action, text = _rejected(call.name, _parsed(call.arguments), "not run: an earlier call of this reply failed")
            elif i >= bounds.max_calls_per_reply:
                action, text = _rejected(call.name, _parsed(call.arguments), f"not run: at most {bounds.max_calls_per_reply} "
                                         "tool calls of one reply are run")
            else:
                action, text, failure = run_call(by_name, context, call)
            result.actions.append(action)
            result.messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
            rejections += action.verdict == Verdict.REJECTED
            if failure is not None and result.exception is None:
                result.exception = failure
                result.error = f"{call.name}: {action.detail}"
        if failure is not None:
            result.stop = Stop.TOOL_ERROR
            return
        if rejections >= bounds.max_rejections:
            result.stop, result.error = Stop.REJECTIONS, f"{rejections} tool calls were rejected"
            return
        if clock.now() - started > bounds.budget_s:
            result.stop, result.error = Stop.BUDGET, f"no answer within the {bounds.budget_s:g} s budget"
            return
    result.error = f"no answer after {bounds.max_turns} turns"
