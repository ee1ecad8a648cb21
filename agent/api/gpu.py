"""``/gpu``: the inventory, its live state, and declaring or re-detecting it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ServiceDep, ToolsDep
from tools import toolkit
from tools.gpus import NodeDeclaration

router = APIRouter(prefix="/gpu", tags=["gpu"])


class GpuStatus(toolkit.ClusterState):
    notice: str = Field(description="Where the inventory came from; says so when it is declared, not detected.")
    metrics_error: str | None = Field(description="Why the last live reading failed; null when it worked.")


class InitializeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[NodeDeclaration] | None = Field(
        None, description="The inventory to declare; leave out (or send no body) to re-detect through NVML."
    )


@router.get("/status")
def gpu_status(tools: ToolsDep, service: ServiceDep) -> GpuStatus:
    """Nodes and GPUs: state (free, allocated, drained, unhealthy), holder, live readings where measured."""
    state = toolkit.get_cluster_state(tools, toolkit.GetClusterState())
    return GpuStatus(
        **state.model_dump(), notice=service.inventory_notice, metrics_error=service.resources.metrics_error
    )


@router.post("/initialize")
def initialize(service: ServiceDep, tools: ToolsDep, body: InitializeRequest | None = None) -> GpuStatus:
    """Declare an inventory, or re-detect with an empty body. 409 if it would drop GPUs running jobs hold."""
    if body is None or body.nodes is None:
        service.detect_inventory()
    else:
        service.declare_inventory(body.nodes)
    return gpu_status(tools, service)
