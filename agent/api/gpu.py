"""``/gpu``: the inventory, its live state, and declaring or re-detecting it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from agent.api.deps import ToolsDep
from tools.door import cluster, watch

router = APIRouter(prefix="/gpu", tags=["gpu"])


@router.get("/status")
def gpu_status(tools: ToolsDep) -> cluster.GpuStatus:
    """Nodes and GPUs: state (free, allocated, drained, unhealthy), holder, live readings where measured."""
    return cluster.gpu_status(tools)


@router.post("/initialize")
def initialize(tools: ToolsDep, body: cluster.SetInventory | None = None) -> cluster.GpuStatus:
    """Declare an inventory, or re-detect with an empty body. 409 if it would drop GPUs running jobs hold."""
    return cluster.set_inventory(tools, body or cluster.SetInventory())


@router.get("/{node}/{index}/samples")
def gpu_samples(tools: ToolsDep, node: str, index: int, since: float | None = None) -> watch.GpuSamples:
    """One GPU's readings over time (utilization, memory, temperature, power): as taken for the last
    ``sample_full_s``, then as means over ``sample_coarse_s`` spans; who uses it outside gpuherd and why it
    is drained or unhealthy. 404 for a GPU not in the inventory."""
    return watch.gpu_samples(tools, watch.GetGpuSamples(node=node, index=index, since=since))


class DrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, description="Why, for the event log and the dashboard.")


@router.post("/{node}/{index}/drain")
def drain(tools: ToolsDep, node: str, index: int, body: DrainBody | None = None) -> watch.GpuSamples:
    """Start no new job on this GPU (a job on it runs on). Administrators only; 404 for an unknown GPU."""
    return watch.set_drained(tools, watch.SetDrained(node=node, index=index, drained=True,
                                                     reason=(body or DrainBody()).reason))


@router.post("/{node}/{index}/undrain")
def undrain(tools: ToolsDep, node: str, index: int, body: DrainBody | None = None) -> watch.GpuSamples:
    """Let jobs on this GPU again (after a failing GPU was looked at). Administrators only."""
    return watch.set_drained(tools, watch.SetDrained(node=node, index=index, drained=False,
                                                     reason=(body or DrainBody()).reason))
