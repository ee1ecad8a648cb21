"""Model access: a one-method interface, the OpenAI-compatible client behind it, and nothing else.

Any endpoint that speaks the chat-completions API works (OpenAI, vLLM, Ollama, llama.cpp's server).
Tests never build ``OpenAIModel`` against a real endpoint: they script a ``Model`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class ModelError(RuntimeError):
    """The model could not answer: unreachable, timed out, an HTTP error, or a reply we cannot read."""


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
        try:
            response = self._client.chat.completions.create(
                model=self._settings.model,
                messages=messages,
                tools=tools or self._openai.NOT_GIVEN,
                timeout=max(0.1, min(timeout_s, self._settings.timeout_s)),
                **self._settings.extra,
            )
        except self._openai.APITimeoutError as exc:
            raise ModelError(f"the model did not answer within {timeout_s:.1f} s") from exc
        except self._openai.APIStatusError as exc:
            raise ModelError(f"the model endpoint answered HTTP {exc.status_code}: {exc.message}") from exc
        except self._openai.APIError as exc:
            raise ModelError(f"the model endpoint failed: {exc}") from exc
        try:
            choice = response.choices[0].message
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "")
                for c in choice.tool_calls or ()
            )
        except (AttributeError, IndexError, TypeError) as exc:
            raise ModelError(f"the model's reply is not a chat completion: {exc}") from exc
        usage = response.usage
        return ModelReply(
            content=choice.content,
            tool_calls=calls,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )
