"""The README's examples work when pasted into a fresh clone: its REST block, run line by line with curl
against a server as `make run` starts one (single-user, 8 declared GPUs), answers 2xx throughout; the
example config file is a valid config."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agent.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def rest_block() -> list[str]:
    """The shell commands of the README's REST block, continuation lines joined, comment lines dropped."""
    start = README.index("```sh\ncurl -s -X POST localhost:10000/queue/submit")
    block = README[start + len("```sh\n"):README.index("```", start + 5)]
    commands, current = [], ""
    for line in block.splitlines():
        if line.strip().startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return [c for c in commands if c]


@pytest.mark.tmux
@pytest.mark.slow
def test_every_rest_example_answers_2xx(herd_server, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    server = herd_server("--gpus", "8").start()
    commands = rest_block()
    assert len(commands) > 20
    for command in commands:
        text = command.replace("localhost:10000", f"localhost:{server.port}").replace("'\"$PWD\"'", str(tmp_path))
        args = shlex.split(text, comments=True)
        assert args[0] == "curl"
        done = subprocess.run([*args, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30,
                              cwd=tmp_path)
        body, _, status = done.stdout.rpartition("\n")
        assert status.startswith("2"), f"{command}\n-> {status} {body}"
    server.stop(signal.SIGTERM)


def test_the_example_config_is_a_valid_config(monkeypatch):
    example = ROOT / "herd.yaml.example"
    for name in [n for n in __import__("os").environ if n.startswith(("HERD_", "RESEARCH_AGENT_"))]:
        monkeypatch.delenv(name)
    settings = Settings(config=example)
    assert settings.groups and settings.max_queued_per_user and settings.admins


def test_the_readme_points_at_nothing_a_clone_lacks():
    assert "../shared" not in README
    for path in re.findall(r"`((?:docs|tests|tools|agent|policies|evals)/[\w./-]+)`", README):
        assert (ROOT / path).exists(), path
    assert (ROOT / "herd.yaml.example").exists() and (ROOT / "docs" / "gpuherd.service").exists()
