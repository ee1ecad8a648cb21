"""Start-up of the ``herd`` command line: this tree against another checkout, one fresh process per call.

    git worktree add /tmp/herd-old <commit>
    flock /tmp/gpuherd-cpu.lock .venv/bin/python bench/bench_cli.py --compare /tmp/herd-old [--runs 20]

One ``herd serve`` of this tree (``bench_service.busy_server``: 8 long jobs hold its 8 GPUs, so every new
job waits in the queue) answers both sides. Each command runs as ``python -m agent.cli`` with its tree
first on the path, the two trees taking turns call by call, so that both see the same machine load.
Commands: ``--version``, ``--help``, ``submit --url URL -g 1 -D /tmp -- true``, ``show --url URL 1``,
``queue --url URL``. Reported: the median wall time of each, per tree, and the ratio other / this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_service, next to this file
import bench_service  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def commands(url: str) -> dict[str, list[str]]:
    return {
        "herd --version": ["--version"],
        "herd --help": ["--help"],
        "herd submit": ["submit", "--url", url, "-g", "1", "-D", "/tmp", "--", "true"],
        "herd show": ["show", "--url", url, "1"],
        "herd queue": ["queue", "--url", url],
    }


def run_once(tree: Path, args: list[str]) -> float:
    """Seconds from spawning ``python -m agent.cli ARGS`` of ``tree`` to its exit; it must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERD_", "RESEARCH_AGENT_"))}
    env["PYTHONPATH"] = str(tree)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=tree, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: herd {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, required=True, metavar="TREE",
                        help="the other checkout of gpuherd (git worktree add TREE <commit>)")
    parser.add_argument("--runs", type=int, default=20, help="fresh processes per command and tree (default 20)")
    args = parser.parse_args()
    trees = {"this": REPO, "other": args.compare.resolve()}
    with bench_service.busy_server() as server:
        timings = {name: {side: [] for side in trees} for name in commands(server.url)}
        for name, argv in commands(server.url).items():
            for turn in range(args.runs):
                order = list(trees.items()) if turn % 2 == 0 else list(reversed(trees.items()))
                for side, tree in order:
                    timings[name][side].append(run_once(tree, argv))
    print(f"herd start-up, median of {args.runs} fresh processes each (ms); this = {REPO}, other = {trees['other']}")
    print("| command | other | this | other / this |\n|---|---:|---:|---:|")
    for name, by_side in timings.items():
        other, this = (statistics.median(by_side[s]) * 1000 for s in ("other", "this"))
        print(f"| `{name}` | {other:.0f} | {this:.0f} | {other / this:.1f}x |")


if __name__ == "__main__":
    main()
