"""``herd token``: a bearer token for using the server over TCP (from a laptop, a notebook server)."""

from __future__ import annotations

import click

from agent.cli.client import TOKEN_FILE, Client, server_command
from agent.cli.output import print_json, stamp, table


@click.group("token", invoke_without_command=True, short_help="mint a token for TCP use; list or revoke tokens",
             help="Mint a token for you, over the server's socket (run it on the server). It is printed once; "
                  f"keep it in $HERD_TOKEN or {TOKEN_FILE}, e.g. (umask 077; herd token > {TOKEN_FILE}).")
@click.option("--note", default="", help="what the token is for")
@click.option("--url", envvar="HERD_URL", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="print the server's JSON")
@click.pass_context
def token(ctx: click.Context, note: str, url: str | None, as_json: bool) -> None:
    if ctx.invoked_subcommand is not None:
        return
    with Client.connect(url) as client:
        minted = client.call("POST", "/tokens", json={"note": note})
    if as_json:
        print_json(minted)
        return
    click.echo(minted["token"])
    click.echo(f"token {minted['info']['id']} for {minted['info']['user']}; it is not shown again. Over TCP, send it as "
               f"HERD_TOKEN or keep it in {TOKEN_FILE}; `herd token revoke {minted['info']['id']}` ends it.", err=True)


@server_command("list", "your tokens (--all: everyone's, for administrators)")
@click.option("--all", "everyone", is_flag=True, help="every user's tokens (administrators)")
def list_tokens(client: Client, as_json: bool, everyone: bool) -> None:
    tokens = client.call("GET", "/tokens", params={"everyone": everyone})
    if as_json:
        print_json(tokens)
        return
    click.echo(table(["ID", "USER", "CREATED", "NOTE"], [[t["id"], t["user"], stamp(t["created"]), t["note"]]
                                                       for t in tokens]))


@server_command("revoke", "revoke a token: requests carrying it get 401")
@click.argument("token_id", type=int)
def revoke(client: Client, as_json: bool, token_id: int) -> None:
    info = client.call("DELETE", f"/tokens/{token_id}")
    if as_json:
        print_json(info)
        return
    click.echo(f"Revoked token {info['id']} of {info['user']}.")


token.add_command(list_tokens)
token.add_command(revoke)

COMMANDS = (token,)
