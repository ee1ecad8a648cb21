"""Who is asking: the acting ``Actor`` of a request, from how it reached the server.

- Over the Unix socket ``<workdir>/herd.sock`` the kernel says which Unix user connected (SO_PEERCRED).
- Over TCP a request carries ``Authorization: Bearer <token>``, minted with ``herd token`` over the
  socket, or from a browser the cookie that the dashboard's login set with such a token (HttpOnly,
  SameSite=Strict); a token that is unknown or revoked is refused (401). Without one a request reads only the open
  views, except in single-user mode, where a loopback request acts as the server's own user.

Three modes, chosen at start-up:
- **shared** (the server runs as root: a lab's head node): identity is enforced, admins are root and the
  configured ``admins``, jobs run as their owners;
- **personal** (a non-root server): only the server's own Unix user (and root) may act; jobs run as
  that user; ``user`` in a body is a label for fair share and accounting;
- **single-user** (``herd serve --single-user``, which ``make run`` starts): personal, and a loopback
  request without a token acts as the server's user, so ``curl localhost:10000/...`` works as written.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from enum import StrEnum

from agent.settings import Settings
from tools.door.context import ANONYMOUS, Actor, NotAuthenticated
from tools.tokens import TokenStore


class Mode(StrEnum):
    SHARED = "shared"
    PERSONAL = "personal"
    SINGLE_USER = "single-user"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # a uid without a name still is someone, and never an admin by name


def mode_of(settings: Settings, euid: int | None = None) -> Mode:
    euid = os.geteuid() if euid is None else euid
    return Mode.SINGLE_USER if settings.single_user else Mode.SHARED if euid == 0 else Mode.PERSONAL


@dataclass(frozen=True)
class Identities:
    mode: Mode
    server_user: str
    admins: frozenset[str]
    tokens: TokenStore

    @classmethod
    def for_server(cls, settings: Settings, tokens: TokenStore, euid: int | None = None) -> Identities:
        euid = os.geteuid() if euid is None else euid
        return cls(mode=mode_of(settings, euid), server_user=user_name(euid), admins=frozenset({"root", *settings.admins}), tokens=tokens)

    def describe(self) -> str:
        """The mode in one line, as the server says it at start-up and in /orchestrator/status."""
        if self.mode == Mode.SHARED:
            return ("shared: callers are who the socket or their token says; jobs run as their owners; "
                    f"admins: {', '.join(sorted(self.admins))}")
        also_root = "" if self.server_user == "root" else " (and root)"
        who = f"only {self.server_user}{also_root} may act; jobs run as {self.server_user}"
        if self.mode == Mode.SINGLE_USER:
            return f"single-user: {who}; loopback requests without a token act as {self.server_user}"
        return f"personal: {who}"

    def actor(self, *, peer_uid: int | None, authorization: str | None, loopback: bool,
              cookie: str | None = None) -> Actor:
        """The actor of one request; ``NotAuthenticated`` for a token that is not (or no longer) valid.
        ``cookie`` is the token a browser logged in with (the dashboard's ``herd_token`` cookie); a bearer
        token in ``authorization`` wins over it."""
        if peer_uid is not None:
            return self._person(user_name(peer_uid), "socket")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            user = self.tokens.user_of(token.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                raise NotAuthenticated("the token is unknown or revoked: mint a new one with `herd token` on the server")
            return self._person(user, "token")
        if cookie:
            user = self.tokens.user_of(cookie.strip())
            if user is None:
                raise NotAuthenticated("the token this browser logged in with is unknown or revoked: log out, and log "
                                       "in with a new one (`herd token` on the server)")
            return self._person(user, "cookie")
        if self.mode == Mode.SINGLE_USER and loopback:
            return self._person(self.server_user, "loopback")
        return ANONYMOUS

    def _person(self, user: str, via: str) -> Actor:
        if self.mode == Mode.SHARED:
            return Actor(user=user, admin=user in self.admins, via=via)
        if user in (self.server_user, "root"):
            return Actor(user=user, admin=True, via=via)
        return Actor(user=user, via=via, refused=(
            f"this gpuherd server is {self.server_user}'s own (personal mode): only {self.server_user} may act on it; "
            "a lab runs it as root, in shared mode"))
