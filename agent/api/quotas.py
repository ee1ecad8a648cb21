"""``/quotas``: GPU quotas per user and group, what each holds now and what its waiting jobs ask for."""

from __future__ import annotations

from fastapi import APIRouter

from agent.api.deps import ToolsDep
from tools import toolkit

router = APIRouter(prefix="/quotas", tags=["quotas"])


@router.get("")
def get_quotas(tools: ToolsDep) -> toolkit.Quotas:
    """Every user with a quota of their own, GPUs in use or waiting jobs, and every group."""
    return toolkit.get_quotas(tools, toolkit.GetQuotas())
