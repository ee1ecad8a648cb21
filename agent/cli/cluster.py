"""The cluster: GPUs, the scheduler (status, policy, start, stop), quotas and reservations."""

from __future__ import annotations

import click

from agent.cli.client import Client, server_command
from agent.cli.output import print_json, stamp, table
from agent.cli.params import GPU_IDS
from agent.settings import POLICY_NAMES


@server_command("gpus", "nodes and GPUs: free, allocated, drained; live readings")
def gpus(client: Client, as_json: bool) -> None:
    status = client.call("GET", "/gpu/status")
    if as_json:
        print_json(status)
        return
    rows = []
    for node in status["nodes"]:
        for gpu in node["gpus"]:
            memory = f"{gpu['memory_total_mib'] // 1024} GiB" if gpu["memory_total_mib"] else "-"
            used = f"{gpu['memory_used_mib']} MiB" if gpu["memory_used_mib"] is not None else "-"
            util = f"{gpu['utilization_pct']}%" if gpu["utilization_pct"] is not None else "-"
            note = ", ".join(gpu.get("in_use_by") or []) or gpu.get("reason") or ""
            rows.append([node["name"], gpu["index"], gpu["model"] or "-", memory, gpu["state"],
                         gpu["job_id"], gpu["user"], util, used, note])
    click.echo(table(["NODE", "GPU", "MODEL", "MEMORY", "STATE", "JOB", "USER", "UTIL", "MEM USED", "NOTE"], rows))
    click.echo(f"\n{status['free_gpus']} of {status['total_gpus']} GPU(s) free, {status['drained_gpus']} drained.")
    if not status["detected"]:
        click.echo("These GPUs are declared, not detected: nothing about them is measured.")
        click.echo(f"  {status['notice']}")
    if status.get("metrics_error"):
        click.echo(f"Live readings unavailable: {status['metrics_error']}")


def _gpu_ref(ref: str) -> tuple[str, int]:
    node, sep, index = ref.rpartition(":")
    if not sep or not node or not index.isdigit():
        raise click.BadParameter(f"{ref!r}: write NODE:INDEX, e.g. gpu01:3", param_hint="GPU")
    return node, int(index)


def _drain_command(name: str, help: str) -> click.Command:
    @server_command(name, help)
    @click.option("-r", "--reason", default="", help="why, for the event log and the dashboard")
    @click.argument("gpu", metavar="NODE:INDEX")
    def command(client: Client, as_json: bool, gpu: str, reason: str) -> None:
        node, index = _gpu_ref(gpu)
        answer = client.call("POST", f"/gpu/{node}/{index}/{name}", json={"reason": reason})
        if as_json:
            print_json(answer)
            return
        click.echo(f"GPU {node}:{index} {name}ed" + (f": {reason}" if reason else "."))

    return command


drain = _drain_command("drain", "start no new job on a GPU (administrators): herd drain gpu01:3 -r 'fan noise'")
undrain = _drain_command("undrain", "let jobs on a drained GPU again (administrators): herd undrain gpu01:3")


def _show_status(status: dict, as_json: bool) -> None:
    if as_json:
        print_json(status)
        return
    tick = status["last_tick"]
    counts = ", ".join(f"{n} {s}" for s, n in status["counts"].items() if n)
    click.echo(f"scheduler  {status['state']}")
    click.echo(f"policy     {status['policy']}  (choices: {', '.join(status['policies'])})")
    if tick:
        click.echo(f"last pass  {stamp(tick['time'])}, took {tick['duration_s'] * 1000:.1f} ms")
    click.echo(f"jobs       {counts or 'none'}")
    if status.get("last_error"):
        click.echo(f"error      {status['last_error']}")


def _status_command(name: str, help: str, method: str, path: str) -> click.Command:
    @server_command(name, help)
    def command(client: Client, as_json: bool) -> None:
        _show_status(client.call(method, path), as_json)

    return command


status = _status_command("status", "the scheduler's state and counts", "GET", "/orchestrator/status")
start = _status_command("start", "let queued jobs start", "POST", "/orchestrator/start")
stop = _status_command("stop", "start no new jobs (running jobs go on)", "POST", "/orchestrator/stop")


def _complete_policy(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [name for name in POLICY_NAMES if name.startswith(incomplete)]


# Not a click.Choice: the server checks the name, and its refusal lists the policies it can run.
@server_command("policy", "show the scheduling policy, or set it: herd policy fair_share")
@click.argument("name", required=False, metavar=f"[{'|'.join(POLICY_NAMES)}]", shell_complete=_complete_policy)
def policy(client: Client, as_json: bool, name: str | None) -> None:
    if name:
        status = client.call("PUT", "/orchestrator/policy", json={"policy": name})
    else:
        status = client.call("GET", "/orchestrator/status")
    _show_status(status, as_json)


@server_command("quotas", "GPU quotas per user and group: quota, GPUs in use, GPUs waiting")
def quotas(client: Client, as_json: bool) -> None:
    data = client.call("GET", "/quotas")
    if as_json:
        print_json(data)
        return
    users = [[u["user"], u["group"], u["quota"], u["in_use"], u["waiting_gpus"]] for u in data["users"]]
    click.echo(table(["USER", "GROUP", "QUOTA", "IN USE", "WAITING"], users) if users else "No user holds or waits for GPUs.")
    groups = [[g["group"], ",".join(g["members"]) or "-", g["quota"], g["in_use"], g["waiting_gpus"]] for g in data["groups"]]
    if groups:
        click.echo()
        click.echo(table(["GROUP", "MEMBERS", "QUOTA", "IN USE", "WAITING"], groups))
    default = data["default_user_quota"]
    click.echo(f"\nQuotas are GPUs held at once; - is no limit. Users without a quota of their own: "
               f"{'no limit' if default is None else f'{default} GPU(s)'}.")


def _describe_reservation(r: dict) -> str:
    holder = f"user {r['user']}" if r["user"] else f"group {r['group']}"
    return (f"{r['node']} GPU(s) {','.join(map(str, r['gpus']))} for {holder} "
            f"from {stamp(r['start'], seconds=False)} to {stamp(r['end'], seconds=False)}")


@server_command("reserve", "keep GPUs for a user or group: herd reserve --gpus 2 --user ana --start 22:00 --end +8h")
@click.option("--gpus", type=int, help="how many GPUs (on --node, or the first node with room)")
@click.option("--node", help="the node (default: the first with room)")
@click.option("--gpu-ids", type=GPU_IDS, help="exactly these GPUs of --node")
@click.option("--user", help="keep them for this user")
@click.option("--group", help="keep them for this group")
@click.option("--start", default="now", help="22:00, '2026-11-30 22:00', +1h or now (default)")
@click.option("--end", required=True, help="as --start; +8h and 06:00 count from the start")
@click.option("--note", help="why, for the people who see it")
def reserve(client: Client, as_json: bool, gpus: int | None, node: str | None, gpu_ids: list[int] | None,
            user: str | None, group: str | None, start: str, end: str, note: str | None) -> None:
    if (user is None) == (group is None):
        raise click.UsageError("say who the GPUs are for: --user or --group, one of them", click.get_current_context())
    body = {"user": user, "group": group, "start": start, "end": end, "node": node, "gpus": gpu_ids,
            "gpu_count": gpus, "note": note}
    reservation = client.call("POST", "/reservations", json={k: v for k, v in body.items() if v is not None})
    if as_json:
        print_json(reservation)
    else:
        click.echo(f"Reserved {_describe_reservation(reservation)} (reservation {reservation['id']}).")


@server_command("reservations", "GPU reservations not over yet")
def reservations(client: Client, as_json: bool) -> None:
    found = client.call("GET", "/reservations")
    if as_json:
        print_json(found)
        return
    rows = [[r["id"], r["node"], ",".join(map(str, r["gpus"])), f"user {r['user']}" if r["user"] else f"group {r['group']}",
             stamp(r["start"], seconds=False), stamp(r["end"], seconds=False), r["note"] or "-"] for r in found]
    click.echo(table(["ID", "NODE", "GPUS", "FOR", "FROM", "TO", "NOTE"], rows) if rows else "No reservations.")


@server_command("unreserve", "remove a reservation")
@click.argument("reservation_id", type=int, metavar="RESERVATION")
def unreserve(client: Client, as_json: bool, reservation_id: int) -> None:
    reservation = client.call("DELETE", f"/reservations/{reservation_id}")
    if as_json:
        print_json(reservation)
    else:
        click.echo(f"Removed reservation {reservation['id']} ({_describe_reservation(reservation)}).")


COMMANDS = (gpus, drain, undrain, status, start, stop, policy, quotas, reserve, reservations, unreserve)
