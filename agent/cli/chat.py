"""``herd ask``: a request in plain language, answered by the agent on the server."""

from __future__ import annotations

import json

import click

from agent.cli.client import Client, server_command
from agent.cli.output import print_json, table


@server_command("ask", 'ask the agent in plain language: herd ask "4 GPUs for 3 hours -- python ft.py"')
@click.argument("message", nargs=-1, required=True)
@click.option("--user", help="who the agent acts for (default: you; another user: administrators only)")
@click.option("--session", help="continue an earlier conversation")
def ask(client: Client, as_json: bool, message: tuple[str, ...], user: str | None, session: str | None) -> None:
    data = client.call("POST", "/chat", json={"message": " ".join(message), "user": user, "session_id": session})
    if as_json:
        print_json(data)
        return
    click.echo(data["reply"])
    if data["actions"]:
        rows = [(a["tool"], json.dumps(a["arguments"], ensure_ascii=False)[:60], a["verdict"], a["detail"][:60])
                for a in data["actions"]]
        click.echo()
        click.echo(table(("TOOL", "ARGUMENTS", "VERDICT", "DETAIL"), rows))
    click.echo(f"\n(session {data['session_id']}: continue with --session {data['session_id']})")


COMMANDS = (ask,)
