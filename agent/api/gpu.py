"""``/gpu``: the inventory, its live state, and declaring or re-detecting it."""

from __future__ import annotations

from fastapi import APIRouter

from agent.api.deps import ToolsDep
from tools.door import cluster

router = APIRouter(prefix="/gpu", tags=["gpu"])


@router.get("/status")
def gpu_status(tools: ToolsDep) -> cluster.GpuStatus:
    """Nodes and GPUs: state (free, allocated, drained, unhealthy), holder, live readings where measured."""
    return cluster.gpu_status(tools)


@router.post("/initialize")
def initialize(tools: ToolsDep, body: cluster.SetInventory | None = None) -> cluster.GpuStatus:
    """Declare an inventory, or re-detect with an empty body. 409 if it would drop GPUs running jobs hold."""
    return cluster.set_inventory(tools, body or cluster.SetInventory())
