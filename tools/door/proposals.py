"""The scheduling agent's typed tool: propose that a queued job start now on given GPUs."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from policies.snapshot import Proposal, Snapshot
from policies.validator import Accepted, Batch
from tools.door.context import Args, ToolRefused


class ProposeAllocation(Args):
    """Propose that a queued job start now on the given GPUs of one node. The validator checks it at
    once; the result says whether it was accepted or why not."""

    job_id: int = Field(description="The queued job to start.")
    node: str = Field(description="The node whose GPUs it gets.")
    gpu_indices: list[int] = Field(description="Exactly as many free GPU indices of that node as the job asks for.")
    reason: str = Field(description="One line on why this job and these GPUs.")


@dataclass
class ProposalSession:
    """One scheduling decision: what the agent's read tools answer from and its proposals' batch."""

    snapshot: Snapshot
    proposer: str = "agent"
    batch: Batch = field(init=False)

    def __post_init__(self) -> None:
        self.batch = Batch(self.snapshot)

    @property
    def accepted(self) -> list[Accepted]:
        return self.batch.accepted


def propose_allocation(session: ProposalSession, args: ProposeAllocation) -> dict[str, object]:
    proposal = Proposal(
        job_id=args.job_id, gpus=tuple((args.node, i) for i in args.gpu_indices),
        by=session.proposer, reason=args.reason[:200],
    )
    refused = session.batch.add(proposal)
    if refused is not None:
        codes = ", ".join(c.value for c in refused.codes)
        raise ToolRefused(f"the validator refused it ({codes}): {refused.explain()}")
    return {"accepted": True, "job_id": args.job_id, "node": args.node, "gpus": sorted(args.gpu_indices)}
