"""``/quotas``: GPU quotas per user and group, what each holds now and what its waiting jobs ask for."""

from __future__ import annotations

from fastapi import APIRouter

from agent.api.deps import ToolsDep
from policies.quotas import Quotas
from tools.door import rules

router = APIRouter(prefix="/quotas", tags=["quotas"])


@router.get("")
def get_quotas(tools: ToolsDep) -> Quotas:
    """Every user with a quota of their own, GPUs in use or waiting jobs, and every group."""
    return rules.get_quotas(tools, rules.GetQuotas())
