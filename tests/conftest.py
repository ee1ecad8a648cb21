"""Fixtures every test module may use, and the markers' meaning.

Markers (registered in pyproject.toml; ``--strict-markers`` refuses any other):

- ``tmux``: runs real processes under a real tmux server; skipped here when tmux is not installed.
- ``slow``: takes seconds, not milliseconds; ``pytest -m "not slow"`` is the quick run (under 30 s on
  a 2-core machine), ``make test`` runs everything.

Plain helpers (no fixtures) live in ``tests/helpers.py`` (polling, ports, the ``herd`` command),
``tests/builders.py`` (jobs, nodes, snapshots, specs), ``tests/cores.py`` (the core through
``agent.build.build_core``) and ``tests/rest.py`` (the REST app's test client).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.cli import main
from agent.service import Service
from agent.settings import Settings
from tests.herd_server import HerdServer
from tests.rest import T0, Api
from tools.clock import SimClock
from tools.nvml import UnavailableProbe
from tools.sim_executor import SimExecutor


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden snapshot files")


def pytest_collection_modifyitems(config, items):
    """A ``tmux`` test needs the real thing: skip it, saying so, where tmux is not installed."""
    if shutil.which("tmux") is not None:
        return
    skip = pytest.mark.skip(reason="needs tmux")
    for item in items:
        if item.get_closest_marker("tmux"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_model_endpoint(monkeypatch):
    """No test may reach a real model: forget any endpoint a developer has configured."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HERD_MODEL"):
        monkeypatch.delenv(name, raising=False)


# -- the REST app on a simulated core ---------------------------------------------------------------
@pytest.fixture
def make_api(tmp_path, monkeypatch):
    """``make(durations=..., codes=..., probe=..., executor=..., model=..., run_loop=..., **settings)``: the
    app over a ``Service`` with 4 declared GPUs, a simulated clock at ``T0`` and a simulated executor
    (``durations``/``codes``: job id -> run time / exit code). The settings are read as the server
    reads them (so a test may set a variable), minus the variables a developer's shell may have set."""
    for name in ("HERD_POLICY", "RESEARCH_AGENT_SCHEDULING_POLICY", "RESEARCH_AGENT_MAX_QUEUE_SIZE",
                 "RESEARCH_AGENT_GPU_ORCHESTRATION_ENABLED", "HERD_ORCHESTRATION_ENABLED", "HERD_GPUS", "HERD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    opened: list[TestClient] = []

    def make(*, durations=None, codes=None, probe=None, executor=None, model=None, run_loop=False, **settings) -> Api:
        # Single-user, as `make run` serves: a loopback request acts as the server's user (identity's own
        # tests turn it off).
        settings = Settings(**{"workdir": tmp_path / "herd", "gpus": 4, "single_user": True, **settings})
        clock = SimClock(T0)
        sim = executor or SimExecutor(
            duration_of=lambda job: (durations or {}).get(job.id),
            exit_code_of=lambda job: (codes or {}).get(job.id, 0),
        )
        service = Service(settings, clock=clock, executor=sim, probe=probe or UnavailableProbe("no NVML in tests"),
                          model=model, run_loop=run_loop)
        http = TestClient(create_app(service), base_url="http://localhost", client=("127.0.0.1", 50000))
        http.__enter__()
        opened.append(http)
        return Api(http, service, clock, sim)

    yield make
    for http in opened:
        http.__exit__(None, None, None)


@pytest.fixture
def api(make_api) -> Api:
    return make_api()


# -- ``herd serve`` as a real process -----------------------------------------------------------------
@pytest.fixture
def herd_server(tmp_path: Path):
    """``make(*args, env=..., workdir=...)`` builds a (not yet started) server on a fresh work directory;
    every server it made, and its tmux server (so every job), is killed at the end."""
    made: list[HerdServer] = []

    def make(*args: str, env: dict[str, str] | None = None, workdir: Path | None = None,
             single_user: bool = True) -> HerdServer:
        server = HerdServer(workdir or tmp_path / f"herd-{len(made)}", *args, env=env, single_user=single_user)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def herd(server, capsys):
    """Run ``herd ARGS`` in-process against the module's ``server`` fixture: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([args[0], "--url", server.url, *args[1:]])
        out, err = capsys.readouterr()
        return code, out, err

    return run
