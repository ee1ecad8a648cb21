"""``/chat`` and ``/agent``: plain-language requests through the LLM agent, and its audit log."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ServiceDep, ToolsDep
from agent.api.errors import STORAGE_FAULTS
from agent.audit import AuditEntry
from agent.chat import ChatReply
from tools.models import UserName

router = APIRouter(tags=["agent"])


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=4000, description="What the user asks, in plain language.")
    user: UserName | None = Field(None, description="Who the agent acts for: the caller if not given; another "
                                  "user only when an administrator asks.")
    session_id: str | None = Field(None, max_length=64, description="Continue an earlier conversation.")


class ChatResponse(BaseModel):
    reply: str
    actions: list[dict[str, Any]] = Field(description="Every tool call: tool, arguments, verdict, detail.")
    session_id: str
    stop: str = Field(description="answered, or the bound that ended the conversation.")


class ChatFailure(BaseModel):
    """502, 504 (the model failed, or did not answer in time), 500 or 503 (a tool failed, or the storage):
    the sentence, and what was done before."""

    detail: str = Field(description="What went wrong, and the actions already carried out, in one line.")
    reply: str
    actions: list[dict[str, Any]] = Field(description="Every tool call made before, with its verdict: those "
                                          "whose verdict is ok took effect.")
    session_id: str
    stop: str


# Whose fault an unfinished conversation was -> the answer. Never a 4xx: the caller asked well.
FAILURE_STATUS = {"model": 502, "timeout": 504, "tool": 500}
FAILURE_WORDS = {
    "model": "The model endpoint failed",
    "timeout": "The model endpoint did not answer in time",
    "tool": "The server failed while carrying out the model's request",
}


def failure_status(reply: ChatReply) -> int | None:
    if reply.failure is None:
        return None
    if reply.failure == "tool" and isinstance(reply.exception, STORAGE_FAULTS):
        return 503  # the storage, as every other request reports it: try again
    return FAILURE_STATUS[reply.failure]


@router.post("/chat", responses={
    502: {"model": ChatFailure, "description": "The model endpoint failed or sent what cannot be read; actions "
          "lists what was done before."},
    504: {"model": ChatFailure, "description": "The model endpoint did not answer in time; actions lists what was "
          "done before."},
})
async def chat(body: ChatRequest, service: ServiceDep, tools: ToolsDep) -> ChatResponse:
    """Ask the agent, which acts for the caller only; 503 when no model endpoint is configured. The
    model's own failures are 502 (or 504 for a timeout) with what was already done, never a 4xx."""
    user = tools.owner(body.user)  # who the door says is asking; a body naming someone else: admins only
    agent = service.chat()
    # The model call takes seconds: run it in a worker thread, the event loop keeps serving.
    reply = await anyio.to_thread.run_sync(lambda: agent.ask(body.message, user=user, session_id=body.session_id))
    status = failure_status(reply)
    if status is not None:
        detail = f"{FAILURE_WORDS[reply.failure or 'tool']}: {reply.error}. {reply.done}"
        failure = ChatFailure(detail=detail, reply=reply.reply, actions=reply.actions, session_id=reply.session_id,
                              stop=reply.stop)
        return JSONResponse(status_code=status, content=failure.model_dump(mode="json"))  # type: ignore[return-value]
    return ChatResponse(reply=reply.reply, actions=reply.actions, session_id=reply.session_id, stop=reply.stop)


@router.get("/agent/turns")
def agent_turns(
    service: ServiceDep,
    tools: ToolsDep,
    session_id: str | None = None,
    kind: str | None = Query(None, pattern="^(chat|schedule)$"),
    limit: int = Query(20, ge=1, le=500),
    messages: bool = Query(False, description="Include the whole conversation of each record."),
) -> list[AuditEntry]:
    """The agent's conversations, newest first: tool calls, verdicts, latency and token counts. A person's
    chats are theirs and the administrators'; the scheduling agent's turns are everyone's to read."""
    entries = service.audit.entries(session_id=session_id, kind=kind, limit=limit)
    if not tools.actor.admin:
        entries = [e for e in entries if e.kind != "chat" or (e.user is not None and e.user == tools.actor.user)]
    return entries if messages else [e.model_copy(update={"messages": None}) for e in entries]
