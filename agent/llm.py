"""Model access: a one-method interface, the OpenAI-compatible client behind it, and nothing else.

Any endpoint that speaks the chat-completions API works (OpenAI, vLLM, Ollama, llama.cpp's server).
Tests never build ``OpenAIModel`` against a real endpoint: they script a ``Model`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


class ModelError(RuntimeError):
    """The model could not answer: unreachable, timed out, an HTTP error, or a reply we cannot read."""


class ModelTimeout(ModelError):
    """The model did not answer in time (a front door says 504, not 502)."""


# What the loop keeps of a tool call's arguments that are not text (an object instead of JSON text).
MAX_ARGUMENT_CHARS = 100_000


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text, exactly as the model wrote it; it may not even parse


@dataclass(frozen=True)
class ModelReply:
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def as_message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return message


def as_text(content: Any) -> str | None:
    """A reply's content as text: text as it is; a list of parts (``[{"type": "text", "text": ...}]``,
    as some servers send) joined; anything else is not a reply we can read (``ModelError``)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict):
                continue  # an image, a refusal marker, ...: nothing to say in text
            else:
                raise ModelError(f"the model's reply has a content part of type {type(part).__name__}")
        return "".join(texts)
    raise ModelError(f"the model's reply has content of type {type(content).__name__}, not text")


def as_arguments(arguments: Any) -> str:
    """A tool call's arguments as the JSON text the API specifies: text as it is, an object (some servers
    send one) written as JSON, nothing as empty. Never raises: what cannot be written is kept as text,
    and the tool refuses it as arguments that do not parse."""
    if isinstance(arguments, str):
        return arguments
    if arguments is None:
        return ""
    try:
        return json.dumps(arguments, ensure_ascii=False, allow_nan=False)[:MAX_ARGUMENT_CHARS]
    except (TypeError, ValueError, RecursionError):
        return repr(arguments)[:MAX_ARGUMENT_CHARS]


def normalized(reply: Any) -> ModelReply:
    """``reply`` as a well-formed ``ModelReply`` (any ``Model`` may be wrong): content as text, each tool
    call with text for its id, name and arguments. ``ModelError`` if it is not a reply at all."""
    if not isinstance(reply, ModelReply):
        raise ModelError(f"the model adapter returned a {type(reply).__name__}, not a reply")
    content = as_text(reply.content)
    calls = []
    for i, call in enumerate(reply.tool_calls or ()):
        name = getattr(call, "name", None)
        ident = getattr(call, "id", None)
        calls.append(ToolCall(
            id=ident if isinstance(ident, str) and ident else f"call_{i}",
            name=name if isinstance(name, str) else str(name)[:200],
            arguments=as_arguments(getattr(call, "arguments", None)),
        ))
    calls_t = tuple(calls)
    if content is reply.content and calls_t == tuple(reply.tool_calls or ()):
        return reply
    return ModelReply(content=content, tool_calls=calls_t, prompt_tokens=reply.prompt_tokens,
                      completion_tokens=reply.completion_tokens)


class Model(Protocol):
    name: str

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], timeout_s: float) -> ModelReply:
        """One chat-completions call. Raise ``ModelError`` for anything that is not a usable reply."""
        ...


@dataclass
class ModelSettings:
    """Where the model is; ``None`` for the base URL and key means the openai SDK's own defaults."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 20.0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 0}


class OpenAIModel:
    """The ``Model`` over the official ``openai`` client."""

    def __init__(self, settings: ModelSettings) -> None:
        import openai  # imported here so that a service without a model never needs the network stack

        self.name = settings.model
        self._settings = settings
        # Local servers accept any key; the SDK insists on one being set.
        self._client = openai.OpenAI(
            base_url=settings.base_url, api_key=settings.api_key or "not-needed", max_retries=0,
            timeout=settings.timeout_s,
        )
        self._openai = openai

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], timeout_s: float) -> ModelReply:
        """One call; whatever goes wrong (the network, the endpoint, a body that is not JSON, a reply
        nested too deep to parse, a shape that is not a chat completion) is a ``ModelError``."""
        timeout = max(0.1, min(timeout_s, self._settings.timeout_s))
        try:
            response = self._client.chat.completions.create(
                model=self._settings.model,
                messages=messages,
                tools=tools or self._openai.NOT_GIVEN,
                timeout=timeout,
                **self._settings.extra,
            )
        except self._openai.APITimeoutError as exc:
            raise ModelTimeout(f"the model did not answer within {timeout:.1f} s") from exc
        except self._openai.APIStatusError as exc:
            raise ModelError(f"the model endpoint answered HTTP {exc.status_code}: {_line(exc.message)}") from exc
        except self._openai.APIError as exc:
            raise ModelError(f"the model endpoint failed: {_line(exc)}") from exc
        except Exception as exc:  # a body that is not JSON, nested too deep, ...: the endpoint's fault
            raise ModelError(f"the model endpoint's answer could not be read ({type(exc).__name__}: {_line(exc)})") from exc
        try:
            choice = response.choices[0].message
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=as_arguments(c.function.arguments))
                for c in choice.tool_calls or ()
            )
            usage = getattr(response, "usage", None)
            reply = ModelReply(
                content=choice.content,
                tool_calls=calls,
                prompt_tokens=_count(getattr(usage, "prompt_tokens", None)),
                completion_tokens=_count(getattr(usage, "completion_tokens", None)),
            )
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"the model's reply is not a chat completion ({type(exc).__name__}: {_line(exc)})") from exc
        return normalized(reply)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _line(value: Any, limit: int = 300) -> str:
    """One line of an error's text, at most ``limit`` characters: an endpoint's error may be a page."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
