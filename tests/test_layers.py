"""The floors of the house, bottom to top: a module imports only from its own floor or below.

The core's parts (domain types, clock, store, queue, inventory, executors) at the bottom; the pure
policies above them; the orchestrator, which turns decisions into effects; the typed tools (the one
door every front end goes through); the service, REST, CLI and LLM agent; the evals on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The longest matching prefix decides a module's floor.
FLOORS = {
    "tools": 0,
    "policies": 1,
    "tools.orchestrator": 2,
    "tools.door": 3,
    "agent": 4,
    "evals": 5,
}


def floor_of(module: str) -> int | None:
    matches = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    return FLOORS[max(matches, key=len)] if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def upward_imports() -> list[str]:
    wrong = []
    for package in ("tools", "policies", "agent", "evals"):
        for path in sorted((ROOT / package).rglob("*.py")):
            here = module_name(path)
            for target in imports(path):
                there = floor_of(target)
                if there is not None and there > floor_of(here):
                    wrong.append(f"{here} (floor {floor_of(here)}) imports {target} (floor {there})")
    return wrong


def test_no_module_imports_from_a_floor_above_its_own():
    assert upward_imports() == []


def test_the_contract_is_checked():
    # ``from tools.door import jobs`` is seen as tools.door.jobs, not just tools (floor 0).
    assert floor_of("tools.door.jobs") == 3 and floor_of("tools.doorman") == 0
    assert floor_of("tools.orchestrator") == 2 and floor_of("tools.store") == 0 and floor_of("pydantic") is None
