"""The bounded tool-calling loop, and typed tools as the model sees them.

Every tool call ends in one of three ways:
- a result, returned to the model as JSON;
- a rejection (arguments that do not parse or validate, an unknown tool, a request the core refuses,
  a proposal the validator refuses), returned to the model with the reason and "fix and try again";
- a real exception (a bug, the database is gone), which leaves the loop.
The loop stops when the model answers without a tool call, or at a bound: turns, wall-clock budget,
rejected calls, or a model error. The caller decides what a stop means (chat: say so; scheduling:
fall back to the deterministic policy).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Sequence

import openai
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.llm import Model, ModelError, ToolCall
from agent.messages import describe_errors
from tools.clock import Clock
from tools.door.context import PermissionDenied, ToolRefused
from tools.orchestrator import InvalidJob
from tools.queue import IllegalTransition, JobNotFound
from tools.store import QueueFull


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


@dataclass(frozen=True)
class Bounds:
    max_turns: int = 6  # model calls per request
    budget_s: float = 15.0  # wall-clock for the whole request
    max_rejections: int = 3  # rejected tool calls before we stop listening


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


_JSON = TypeAdapter(Any)


def to_json(value: Any) -> str:
    return _JSON.dump_json(value, exclude_none=False).decode()


def call_tool(tools: dict[str, Tool], context: Any, call: ToolCall) -> tuple[Action, str]:
    """Run one call; return the audit record and the text the model gets back."""
    tool = tools.get(call.name)
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.arguments
    if tool is None:
        reason = f"unknown tool {call.name!r}; the tools are: {', '.join(tools)}"
        return _rejected(call.name, arguments, reason)
    try:
        # The arguments, then the core's own models (e.g. priority 11): refused in the words every
        # front door uses for the same value.
        result = tool.run(context, tool.parse(arguments, call.arguments))
    except ValidationError as exc:
        return _rejected(call.name, arguments, describe_errors(exc.errors()))
    except REFUSALS as exc:
        return _rejected(call.name, arguments, str(exc))
    return Action(call.name, arguments, Verdict.OK, "done"), to_json({"ok": True, "result": result})


def _rejected(name: str, arguments: Any, reason: str) -> tuple[Action, str]:
    text = to_json({"ok": False, "rejected": reason, "hint": "fix the call and try again, or answer the user"})
    return Action(name, arguments, Verdict.REJECTED, reason), text


def run_loop(
    model: Model,
    messages: list[dict[str, Any]],
    tools: Sequence[Tool],
    context: Any,
    *,
    bounds: Bounds,
    clock: Clock,
) -> LoopResult:
    by_name = {t.name: t for t in tools}
    schemas = [t.schema() for t in tools]
    result = LoopResult(reply=None, stop=Stop.MAX_TURNS, messages=list(messages))
    started = clock.now()
    rejections = 0
    for _ in range(bounds.max_turns):
        left = bounds.budget_s - (clock.now() - started)
        if left <= 0:
            result.stop, result.error = Stop.BUDGET, f"no answer within the {bounds.budget_s:g} s budget"
            return result
        t0 = clock.now()
        try:
            reply = model.complete(result.messages, schemas, timeout_s=left)
        except ModelError as exc:
            result.stop, result.error = Stop.MODEL_ERROR, str(exc)
            return result
        result.turns.append(TurnRecord(
            latency_s=clock.now() - t0, content=reply.content,
            tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
        ))
        result.messages.append(reply.as_message())
        if not reply.tool_calls:
            result.reply, result.stop = reply.content, Stop.ANSWERED
            return result
        for call in reply.tool_calls:
            action, text = call_tool(by_name, context, call)
            result.actions.append(action)
            result.messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
            rejections += action.verdict == Verdict.REJECTED
        if rejections >= bounds.max_rejections:
            result.stop, result.error = Stop.REJECTIONS, f"{rejections} tool calls were rejected"
            return result
        if clock.now() - started > bounds.budget_s:
            result.stop, result.error = Stop.BUDGET, f"no answer within the {bounds.budget_s:g} s budget"
            return result
    result.error = f"no answer after {bounds.max_turns} turns"
    return result
