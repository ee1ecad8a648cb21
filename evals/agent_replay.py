"""``herd eval replay --policies agent --model rule|endpoint``: the scheduling agent on a trace, beside
its fallback.

The agent is built as the service builds it (``agent.build.build_agent_policy``: the model proposes,
the validator decides, pure priority fills the rest), except that each pass waits for the model's
answer (``agent_wait_s=None``): on a simulated clock the model's seconds are not the trace's, and a
replay must not change with the machine's speed. Its budget and breaker run on the wall clock. The
model is the rule baseline (``evals.rule_model.RuleModel.schedule``: shortest estimate first, best
fit) or the configured endpoint, so a lab that configures one can measure it on its own trace.

What it adds to a policy's metrics (``agent_figures``): consultations, answered and failed ones, the
model's proposals (accepted, refused by the validator, dropped as stale), and the fallbacks.
"""

from __future__ import annotations

from typing import Any

from agent.build import build_agent_policy
from agent.llm import Model
from agent.scheduler import AgentPolicy
from agent.settings import Settings
from evals.report import human_time
from policies.ordering import FALLBACK_POLICY
from tools.clock import RealClock

AGENT = "agent"
FALLBACK = FALLBACK_POLICY  # what the agent is compared with


def agent_policy(model: Model, *, budget_s: float = 10.0) -> AgentPolicy:
    """The agent for a replay: answers awaited in the pass, budget and breaker on the wall clock."""
    settings = Settings.plain(agent_wait_s=None, agent_budget_s=budget_s)
    return build_agent_policy(settings, model, clock=RealClock())


def agent_figures(policy: AgentPolicy) -> dict[str, Any]:
    status = policy.status()
    return {
        "model": status.model,
        "consultations": status.consultations,
        "answered": status.answered,
        "failed": status.failed,
        "proposals_accepted": status.proposals_accepted,
        "proposals_refused": status.proposals_refused,
        "proposals_applied": status.proposals_applied,
        "proposals_stale": status.proposals_stale,
        "fallbacks": status.fallbacks,
        "breaker_opened": status.breaker.opened,
    }


def comparison(results: dict[str, dict[str, Any]]) -> str:
    """The agent beside its fallback, in a few lines."""
    agent, fallback = results.get(AGENT), results.get(FALLBACK)
    if agent is None:
        return ""
    figures = agent.get("agent", {})
    lines = [f"agent ({figures.get('model')}) vs its fallback ({FALLBACK}):"]
    if fallback is not None:
        change = agent["jct_mean_s"] / fallback["jct_mean_s"] - 1 if fallback["jct_mean_s"] else 0.0
        lines.append(f"  mean JCT {human_time(agent['jct_mean_s'])} vs {human_time(fallback['jct_mean_s'])} ({change:+.1%}), "
                     f"mean wait {human_time(agent['wait_mean_s'])} vs {human_time(fallback['wait_mean_s'])}")
    lines.append(f"  consultations {figures.get('consultations')} (answered {figures.get('answered')}, failed "
                 f"{figures.get('failed')}), fallbacks {figures.get('fallbacks')}")
    lines.append(f"  model proposals: {figures.get('proposals_accepted')} accepted, {figures.get('proposals_refused')} "
                 f"refused by the validator, {figures.get('proposals_stale')} stale; violations applied: "
                 f"{agent.get('rejected_proposals', 0)} refused again at apply, 0 applied (the validator's word)")
    return "\n".join(lines)
