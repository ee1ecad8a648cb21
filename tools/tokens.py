"""Bearer tokens for requests over TCP: minted for a Unix user, stored only as a hash, revocable.

A token is 32 random bytes (URL-safe text, prefixed ``herd_`` so that it is recognisable in a leaked
file). Only its SHA-256 is stored: the token is random, so a slow hash would add nothing, and a stolen
database does not give working tokens. The table lives in the server's database, beside the jobs.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from pathlib import Path

from pydantic import BaseModel

PREFIX = "herd_"


class TokenNotFound(LookupError):
    """No token has this id."""


class TokenInfo(BaseModel):
    """A token as it may be shown: never the token itself."""

    id: int
    user: str
    created: float
    note: str
    revoked: float | None = None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, path: Path | str, *, busy_timeout_s: float = 5.0) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (id INTEGER PRIMARY KEY, user TEXT NOT NULL, digest TEXT NOT NULL UNIQUE,"
            " created REAL NOT NULL, note TEXT NOT NULL DEFAULT '', revoked REAL)"
        )

    def mint(self, user: str, *, now: float, note: str = "") -> tuple[TokenInfo, str]:
        """A new token for ``user``: its record, and the token, which is never seen again."""
        token = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            cursor = self._db.execute("INSERT INTO tokens (user, digest, created, note) VALUES (?, ?, ?, ?)",
                                      (user, _digest(token), now, note))
        return TokenInfo(id=cursor.lastrowid, user=user, created=now, note=note), token

    def user_of(self, token: str) -> str | None:
        """Whose token this is, or None for an unknown or revoked one."""
        with self._lock:
            row = self._db.execute("SELECT user FROM tokens WHERE digest = ? AND revoked IS NULL",
                                   (_digest(token),)).fetchone()
        return row[0] if row else None

    def list(self, user: str | None = None) -> list[TokenInfo]:
        """Tokens not revoked, of ``user`` or everyone's."""
        sql, args = "SELECT id, user, created, note, revoked FROM tokens WHERE revoked IS NULL", ()
        if user is not None:
            sql, args = sql + " AND user = ?", (user,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [TokenInfo(id=r[0], user=r[1], created=r[2], note=r[3], revoked=r[4]) for r in rows]

    def get(self, token_id: int) -> TokenInfo:
        with self._lock:
            r = self._db.execute("SELECT id, user, created, note, revoked FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if r is None:
            raise TokenNotFound(f"no token {token_id}")
        return TokenInfo(id=r[0], user=r[1], created=r[2], note=r[3], revoked=r[4])

    def revoke(self, token_id: int, *, now: float) -> TokenInfo:
        info = self.get(token_id)
        if info.revoked is None:
            with self._lock:
                self._db.execute("UPDATE tokens SET revoked = ? WHERE id = ?", (now, token_id))
        return info.model_copy(update={"revoked": info.revoked or now})

    def close(self) -> None:
        with self._lock:
            self._db.close()
