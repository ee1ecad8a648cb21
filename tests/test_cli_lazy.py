"""``herd`` imports a command's module only when that command runs; its listing must still say what the
commands say of themselves."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

from agent.cli import COMMANDS, herd


def test_every_listed_command_exists_under_its_name_with_the_short_help_shown():
    ctx = click.Context(herd)
    for name, (target, short_help) in COMMANDS.items():
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(f"agent.cli.{module}"), attribute)
        assert isinstance(command, click.Command) and command.name == name
        assert command.get_short_help_str(limit=1000) == short_help, name
        assert herd.get_command(ctx, name) is command


def test_every_command_of_a_module_is_listed():
    listed = {target for target, _ in COMMANDS.values()}
    for module in {target.split(":")[0] for target in listed}:
        for command in importlib.import_module(f"agent.cli.{module}").COMMANDS:
            attribute = next(a for a, v in vars(sys.modules[f"agent.cli.{module}"]).items() if v is command)
            assert f"{module}:{attribute}" in listed


def _modules_loaded_by(*argv: str) -> set[str]:
    code = ("import sys\nfrom agent.cli import main\nmain(sys.argv[1:])\n"
            "print('\\n'.join(sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    return set(done.stderr.split())


def test_version_and_help_import_no_command_module_nor_the_http_client():
    for argv in (["--version"], ["--help"]):
        loaded = _modules_loaded_by(*argv)
        assert "agent.cli.errors" in loaded  # the probe sees agent.cli's own imports
        assert not {"httpx", "agent.cli.client", "agent.cli.submit", "agent.cli.jobs", "agent.settings"} & loaded


def test_show_starts_without_the_job_model_or_the_server_settings():
    loaded = _modules_loaded_by("show", "--help")
    assert "agent.cli.jobs" in loaded
    assert not {"tools.models", "agent.settings", "pydantic_settings", "policies"} & loaded
