"""Typed tools on bearer tokens: mint one for yourself (over the server's socket), list, revoke."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tools.door.context import Args, PermissionDenied, ToolContext
from tools.models import MAX_ID
from tools.tokens import TokenInfo, TokenStore


class MintToken(Args):
    """A new token for the acting user, for requests over TCP; shown once, stored only as a hash."""

    note: str = Field("", max_length=200, description="What it is for (a laptop, a notebook server).")


class Minted(BaseModel):
    token: str = Field(description="Send it as Authorization: Bearer <token>. It is not shown again.")
    info: TokenInfo


def _tokens(ctx: ToolContext) -> TokenStore:
    if ctx.core.tokens is None:
        raise PermissionDenied("this server keeps no tokens")
    return ctx.core.tokens


def mint_token(ctx: ToolContext, args: MintToken) -> Minted:
    """Only over the socket, where the kernel says who is asking: a token cannot mint another."""
    user = ctx.owner(None)
    if ctx.actor.via != "socket":
        raise PermissionDenied("tokens are minted over the server's Unix socket (run `herd token` on the server), "
                               "where the kernel says who you are")
    info, token = _tokens(ctx).mint(user, now=ctx.core.clock.now(), note=args.note)
    ctx.record(f"mint token {info.id}")
    return Minted(token=token, info=info)


class ListTokens(Args):
    """The tokens not revoked: the actor's own, or everyone's for an administrator."""

    everyone: bool = Field(False, description="Everyone's tokens (administrators only).")


def list_tokens(ctx: ToolContext, args: ListTokens) -> list[TokenInfo]:
    if args.everyone:
        ctx.check_admin("listing everyone's tokens")
        return _tokens(ctx).list()
    return _tokens(ctx).list(ctx.owner(None))


class RevokeToken(Args):
    """Revoke a token: requests carrying it get 401 from now on."""

    token_id: int = Field(ge=1, le=MAX_ID, description="The token's id (herd token list).")


def revoke_token(ctx: ToolContext, args: RevokeToken) -> TokenInfo:
    tokens = _tokens(ctx)
    info = tokens.get(args.token_id)
    if info.user != ctx.actor.user:
        ctx.check_admin("revoking another user's token")
    else:
        ctx.owner(None)  # a person who may act
    revoked = tokens.revoke(args.token_id, now=ctx.core.clock.now())
    ctx.record(f"revoke token {info.id} of {info.user}")
    return revoked
