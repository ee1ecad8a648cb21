"""A scripted ``Model`` for tests: it plays back replies in order, records what it was sent, fails on
a call nobody scripted, and can tell whether every scripted step was used. No test reaches a real
model: this is the only ``Model`` the tests build, apart from the fake HTTP server test."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any, Callable

from agent.llm import ModelReply, ToolCall

Step = ModelReply | Exception | Callable[[list[dict[str, Any]]], ModelReply]
_ids = itertools.count(1)


def call(tool: str, /, raw: str | None = None, **arguments: Any) -> ModelReply:
    """A reply that calls one tool (``raw`` to send arguments that are not valid JSON)."""
    return calls((tool, raw if raw is not None else json.dumps(arguments)))


def calls(*pairs: tuple[str, str]) -> ModelReply:
    return ModelReply(
        content=None,
        tool_calls=tuple(ToolCall(id=f"call_{next(_ids)}", name=n, arguments=a) for n, a in pairs),
        prompt_tokens=100, completion_tokens=20,
    )


def propose_call(job_id: int, node: str, *gpus: int) -> ModelReply:
    return call("propose_allocation", job_id=job_id, node=node, gpu_indices=list(gpus), reason="fits")


def say(text: str) -> ModelReply:
    return ModelReply(content=text, prompt_tokens=120, completion_tokens=10)


class ScriptedModel:
    name = "scripted"

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.sent: list[list[dict[str, Any]]] = []
        self.tools_seen: list[list[dict[str, Any]]] = []

    def complete(self, messages, tools, timeout_s) -> ModelReply:
        self.sent.append(copy.deepcopy(messages))
        self.tools_seen.append(tools)
        if not self.steps:
            raise AssertionError(f"unexpected model call #{len(self.sent)}: nothing more was scripted")
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step(messages) if callable(step) else step

    def assert_done(self) -> None:
        assert not self.steps, f"{len(self.steps)} scripted step(s) were never used"
