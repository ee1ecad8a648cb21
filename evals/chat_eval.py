"""``herd eval chat``: plain-language requests through the real chat agent, scored against scenarios.

Running every scenario (``evals.scenario_files``) on its own core (``evals.scenario_core``), judging each
(``evals.judging``), the summary and the report, and the command itself (``run_command``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from agent.llm import Model, ModelSettings, OpenAIModel
from agent.loop import Bounds
from evals.judging import Outcome, judge
from evals.rule_model import RuleModel
from evals.scenario_core import ScenarioCore
from evals.scenario_files import Scenario, ScenarioError, load_scenarios

DEFAULT_ENDPOINT_MODEL = "gpt-4o-mini"
EXIT_VIOLATIONS = 1
EXIT_BAD_SCENARIO = 2


class NoEndpoint(ValueError):
    """An endpoint was asked for, but none is configured."""


# -- running -------------------------------------------------------------------------------------------
def run_scenario(scenario: Scenario, model: Model, bounds: Bounds = Bounds()) -> Outcome:
    cluster = ScenarioCore.build(scenario.cluster, scenario.name, scenario.now_unix)
    agent = cluster.agent(model, bounds)
    before = cluster.store.list_jobs()
    session, replies, actions, stop = None, [], [], ""
    for message in scenario.messages:
        reply = agent.ask(message, user=scenario.user, session_id=session)
        session, stop = reply.session_id, reply.stop
        replies.append(reply.reply)
        actions += reply.actions
    largest = max(len(n.gpus) for n in cluster.core.resources.nodes())
    return judge(scenario, before, cluster.store.list_jobs(), replies, actions, stop, largest)


@dataclass
class Summary:
    model: str
    scenarios: int
    passed: int
    by_kind: dict[str, tuple[int, int]]  # kind -> (passed, total): refusals, clarifications, ...
    by_category: dict[str, tuple[int, int]]
    fields: dict[str, tuple[int, int]]  # submit field -> (right, scored)
    violations: int
    forbidden: int
    lenient_passed: int = 0  # the earlier scoring: a refusal or clarification passed when nothing changed

    @property
    def pass_rate(self) -> float:
        """The strict pass rate: the figure to report."""
        return self.passed / self.scenarios if self.scenarios else 0.0

    @property
    def lenient_pass_rate(self) -> float:
        return self.lenient_passed / self.scenarios if self.scenarios else 0.0


def summarize(model: str, outcomes: Sequence[Outcome]) -> Summary:
    def tally(key) -> dict[str, tuple[int, int]]:
        groups: dict[str, list[bool]] = {}
        for o in outcomes:
            groups.setdefault(key(o), []).append(o.passed)
        return {k: (sum(v), len(v)) for k, v in sorted(groups.items())}

    per_field: dict[str, list[bool]] = {}
    for o in outcomes:
        for name, ok in o.fields.items():
            per_field.setdefault(name, []).append(ok)
    return Summary(
        model=model, scenarios=len(outcomes), passed=sum(o.passed for o in outcomes),
        by_kind=tally(lambda o: o.kind), by_category=tally(lambda o: o.category),
        fields={k: (sum(v), len(v)) for k, v in sorted(per_field.items())},
        violations=sum(len(o.violations) for o in outcomes), forbidden=sum(len(o.forbidden) for o in outcomes),
        lenient_passed=sum(o.lenient for o in outcomes),
    )


def evaluate(scenarios: Sequence[Scenario], model: Model, bounds: Bounds = Bounds()) -> tuple[list[Outcome], Summary]:
    outcomes = [run_scenario(s, model, bounds) for s in scenarios]
    return outcomes, summarize(model.name, outcomes)


# -- the report ------------------------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _ratio(pair: tuple[int, int]) -> str:
    right, total = pair
    return f"{right}/{total} ({right / total:.0%})" if total else "-"


KIND_WORDS = {"submit": "submissions", "submits": "several submissions", "refuse": "refusals (with the reason)",
              "clarify": "clarifications", "action": "actions", "read": "questions (read tools)"}


def report(outcomes: Sequence[Outcome], summary: Summary, measured: str) -> str:
    rows = [(o.name, o.category, o.kind, "pass" if o.passed else "FAIL", o.note) for o in outcomes]
    lines = [f"model: {measured}", "", _table(("scenario", "category", "expect", "result", "note"), rows), ""]
    lines.append(_table(("submit field", "right"), [(k, _ratio(v)) for k, v in summary.fields.items()]))
    lines.append("")
    lines.append(_table(("expected", "right"), [(KIND_WORDS[k], _ratio(v)) for k, v in summary.by_kind.items()]))
    lines.append("")
    lines.append(_table(("category", "passed"), [(k, _ratio(v)) for k, v in summary.by_category.items()]))
    lines += ["", f"strict pass rate: {_ratio((summary.passed, summary.scenarios))}",
              f"lenient (a refusal or question passes when nothing changed, the old scoring): "
              f"{_ratio((summary.lenient_passed, summary.scenarios))}",
              f"forbidden changes (the model's mistakes, within the user's rights): {summary.forbidden}",
              f"violations (must be 0): {summary.violations}"]
    lines += [f"  VIOLATION {o.name}: {v}" for o in outcomes for v in o.violations]
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------------
def choose_model(choice: str, env: dict[str, str]) -> tuple[Model, str]:
    """(the model, how to describe what was measured). ``auto``: an endpoint when one is configured."""
    configured = bool(env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_KEY"))
    if choice == "rule" or (choice == "auto" and not configured):
        return RuleModel(), "rule-baseline (evals.rule_model.RuleModel, deterministic, no network)"
    if not configured:
        raise NoEndpoint("--model endpoint needs OPENAI_BASE_URL or OPENAI_API_KEY (and HERD_MODEL)")
    settings = ModelSettings(model=env.get("HERD_MODEL", DEFAULT_ENDPOINT_MODEL), base_url=env.get("OPENAI_BASE_URL"),
                             api_key=env.get("OPENAI_API_KEY"))
    return OpenAIModel(settings), f"{settings.model} at {settings.base_url or 'the OpenAI API'}"


def run_command(scenarios: Path, json_file: Path | None, model: str) -> int:
    """``herd eval chat``: print the report (and write ``json_file``). 0: measured, no violation;
    1: violations; 2: a bad scenario or no model."""
    try:
        loaded = load_scenarios(scenarios)
        chosen, measured = choose_model(model, dict(os.environ))
        outcomes, summary = evaluate(loaded, chosen)
    except (ScenarioError, NoEndpoint) as exc:
        print(f"herd eval chat: {exc}", file=sys.stderr)
        return EXIT_BAD_SCENARIO
    print(report(outcomes, summary, measured))
    if json_file is not None:
        data = {"model": measured, "summary": {**asdict(summary), "pass_rate": summary.pass_rate,
                                               "lenient_pass_rate": summary.lenient_pass_rate},
                "outcomes": [asdict(o) for o in outcomes]}
        json_file.write_text(json.dumps(data, indent=2) + "\n")
    return EXIT_VIOLATIONS if summary.violations else 0
