"""The agent's audit log: every model conversation (chat or scheduling), its tool calls, verdicts,
latency and token counts, readable through the API. Chat sessions are read back from it, so a
follow-up sees the earlier turns.

It lives in its own SQLite file beside the job store: the job store is the scheduler's source of
truth and must stay small and fast; transcripts are large and only appended.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.loop import LoopResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_turns (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    time              REAL    NOT NULL,
    kind              TEXT    NOT NULL,      -- chat | schedule
    session_id        TEXT,
    user              TEXT,
    model             TEXT    NOT NULL,
    stop              TEXT    NOT NULL,
    error             TEXT,
    latency_s         REAL    NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    messages          TEXT    NOT NULL,      -- the whole conversation, JSON
    actions           TEXT    NOT NULL       -- tool calls with arguments and verdicts, JSON
);
CREATE INDEX IF NOT EXISTS agent_turns_by_session ON agent_turns (session_id, id);
"""


class AuditEntry(BaseModel):
    id: int
    time: float
    kind: str
    session_id: str | None
    user: str | None
    model: str
    stop: str
    error: str | None
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    actions: list[dict[str, Any]]
    messages: list[dict[str, Any]] | None  # the whole conversation; None where left out


def _dumps(value: list[Any], what: str) -> str:
    """``value`` as JSON text, whatever it holds: numbers that are not finite become null, objects that
    are not JSON become their text; a value nested too deep to write is replaced by a note saying so, so
    that the record is written whatever happened."""
    try:
        return json.dumps(value, allow_nan=False, default=str)
    except ValueError:  # a number that is not finite
        try:
            return json.dumps(_finite(value), allow_nan=False, default=str)
        except (TypeError, ValueError, RecursionError):
            pass
    except (TypeError, RecursionError):
        pass
    return json.dumps([{"role": "note", "content": f"the {what} could not be stored as JSON"}])


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _total(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class AuditLog:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def record(
        self, *, time: float, kind: str, model: str, result: LoopResult,
        session_id: str | None = None, user: str | None = None,
    ) -> int:
        row = (
            time, kind, session_id, user, model, result.stop.value, result.error,
            sum(t.latency_s for t in result.turns if math.isfinite(t.latency_s)),
            _total([t.prompt_tokens for t in result.turns]),
            _total([t.completion_tokens for t in result.turns]),
            _dumps(result.messages, "conversation"), _dumps([a.to_dict() for a in result.actions], "actions"),
        )
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO agent_turns (time, kind, session_id, user, model, stop, error, latency_s, "
                "prompt_tokens, completion_tokens, messages, actions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return int(cur.lastrowid)

    def entries(self, *, session_id: str | None = None, kind: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """The newest entries first."""
        sql, args = "SELECT * FROM agent_turns WHERE 1 = 1", []
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        names = ("id", "time", "kind", "session_id", "user", "model", "stop", "error", "latency_s",
                 "prompt_tokens", "completion_tokens")
        return [
            AuditEntry(**dict(zip(names, row[:11])), messages=json.loads(row[11]), actions=json.loads(row[12]))
            for row in rows
        ]

    def session(self, session_id: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(owner, the conversation so far) of a chat session; (None, []) if it is new."""
        latest = self.entries(session_id=session_id, kind="chat", limit=1)
        if not latest:
            return None, []
        return latest[0].user, latest[0].messages

    def close(self) -> None:
        with self._lock:
            self._db.close()
