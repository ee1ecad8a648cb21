"""``/tokens``: bearer tokens for requests over TCP, minted over the server's socket."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from agent.api.deps import ToolsDep
from tools.door import tokens
from tools.models import MAX_ID
from tools.tokens import TokenInfo

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED)
def mint(tools: ToolsDep, body: tokens.MintToken | None = None) -> tokens.Minted:
    """A new token for the caller; only over the Unix socket (``herd token``). Shown once."""
    return tokens.mint_token(tools, body or tokens.MintToken())


@router.get("")
def list_tokens(tools: ToolsDep, everyone: bool = False) -> list[TokenInfo]:
    """The caller's tokens not revoked (``everyone``: all users', for administrators)."""
    return tokens.list_tokens(tools, tokens.ListTokens(everyone=everyone))


@router.delete("/{token_id}")
def revoke(token_id: Annotated[int, Path(ge=1, le=MAX_ID)], tools: ToolsDep) -> TokenInfo:
    """Revoke a token: the caller's own, or anyone's for an administrator."""
    return tokens.revoke_token(tools, tokens.RevokeToken(token_id=token_id))
