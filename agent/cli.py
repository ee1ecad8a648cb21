"""``herd``: the command line. ``herd serve`` runs the server; every other command talks to it over REST.

The server is found at ``--url`` or ``$HERD_URL`` (default ``http://127.0.0.1:10000``). Output is a table
for people, or the server's JSON with ``--json``. A failed command exits non-zero with the server's
message on one line; a server that is not running is one line too, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shlex
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import httpx

from agent.settings import POLICY_NAMES
from tools import timespec

DEFAULT_URL = "http://127.0.0.1:10000"
TERMINAL = ("completed", "failed", "cancelled")
FOLLOW_POLL_S = 0.5
EXIT_FAILED = 1  # the server refused or the command failed
EXIT_UNREACHABLE = 2  # no server answered


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- durations -----------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """``2h``, ``90m``, ``30s``, ``1h30m``, ``1.5h`` -> seconds. A unit is required: ``90`` is ambiguous."""
    try:
        return timespec.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


# -- output --------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


# -- the client ----------------------------------------------------------------------------------


class Client:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the gpuherd server at {self.url} ({type(exc).__name__}); "
                "start it with `herd serve` or point HERD_URL at it",
                EXIT_UNREACHABLE,
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = None
            raise CliError(f"{detail or response.text.strip() or response.reason_phrase} (HTTP {response.status_code})")
        return response.json()

    def close(self) -> None:
        self._http.close()


# -- commands ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, client: Client | None) -> int:
    import uvicorn

    from pydantic import ValidationError

    from agent.api import create_app
    from agent.api.errors import describe_errors
    from agent.settings import ConfigError, Settings

    given = {
        key: getattr(args, key)
        for key in ("host", "port", "workdir", "gpus", "policy", "max_queue_size", "config", "default_user_quota",
                    "default_runtime_s", "preempt_priority_gap", "preempt_grace_s")
        if getattr(args, key) is not None
    }
    if args.stopped:
        given["orchestration_enabled"] = False
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise CliError(describe_errors(exc.errors())) from None
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if shutil.which("tmux") is None:
        raise CliError("gpuherd runs every job in tmux, which is not installed: e.g. sudo apt-get install tmux")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(
        f"gpuherd: serving http://{settings.host}:{settings.port} from {settings.workdir.resolve()}; "
        f"jobs run in `tmux -L {settings.tmux_socket} attach`",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise CliError("no command given; e.g. herd submit --gpus 2 -- python train.py")
    # One word is a shell command line as typed ("a && b"); several are argv, quoted for the shell.
    command = words[0] if len(words) == 1 else shlex.join(words)
    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env wants KEY=VALUE, not {item!r}")
        env[key] = value
    body = {
        "run_id": args.name, "user": args.user, "command": command, "gpu_count": args.gpus,
        "priority": args.priority, "cwd": os.path.abspath(args.cwd), "env": env or None,
        "est_duration_s": args.estimate, "time_limit_s": args.time, "max_retries": args.retries,
        "begin_at": args.begin, "after": _flatten(args.after), "after_any": _flatten(args.after_any),
        "preemptible": args.preemptible or None,
    }
    result = client.call("POST", "/queue/submit", json={k: v for k, v in body.items() if v is not None})
    if args.json:
        print_json(result)
    else:
        where = f", position {result['position']} in the queue" if result.get("position") else ""
        print(f"Submitted job {result['job_id']} ({result['status']}{where})")
    return 0


def _where_or_why(job: dict, position: int | None) -> str:
    if job["allocation"]:
        alloc = job["allocation"]
        text = f"{alloc['node']}:{','.join(str(g) for g in alloc['gpus'])}"
        return text + (f" (stopping: {job['stop_reason']})" if job.get("stop_reason") else "")
    reason = job.get("pending_reason") or ""
    message = job.get("pending_message") or ""
    return f"#{position} {reason}: {message}" if position else f"{reason}: {message}"


def clock(t: float, now: float) -> str:
    """``22:00`` on the day of ``now``, ``11-30 22:00`` on another day."""
    at = time.localtime(t)
    return time.strftime("%H:%M" if at[:3] == time.localtime(now)[:3] else "%m-%d %H:%M", at)


def when(t: float | None, now: float) -> str:
    """An estimated start in a table: ``now``, a clock time, or ``-`` when it cannot be planned."""
    if t is None:
        return "-"
    return "now" if t <= now else clock(t, now)


def cmd_queue(args: argparse.Namespace, client: Client) -> int:
    view = client.call("GET", "/queue", params={"user": args.user} if args.user else None)
    if args.json:
        print_json(view)
        return 0
    now = time.time()
    rows = []
    for entry in view["jobs"]:
        job = entry["job"]
        running = job["status"] == "running" and job["start_time"]
        since = job["start_time"] if running else job["submit_time"]
        # Running: when it started; waiting: when the plan expects it to start.
        start = clock(job["start_time"], now) if running else when(entry["estimated_start"], now)
        rows.append([
            job["id"], job["name"] or "-", job["user"], job["gpu_count"], job["priority"], job["status"],
            format_duration(now - since), start, _where_or_why(job, entry["position"]),
        ])
    if rows:
        print(table(["ID", "NAME", "USER", "GPUS", "PRIO", "STATE", "FOR", "START", "WHERE / WHY WAITING"], rows))
    else:
        print("The queue is empty.")
    stats = view["stats"]
    counts = stats["counts"]
    running = counts.get("running", 0) + counts.get("scheduled", 0)
    print(
        f"\n{running} running on {stats['running_gpus']} GPU(s); {counts.get('queued', 0)} waiting for "
        f"{stats['queued_gpus']} GPU(s) (limit {stats['max_queued']}); policy {view['policy']}"
    )
    return 0


def cmd_gpus(args: argparse.Namespace, client: Client) -> int:
    status = client.call("GET", "/gpu/status")
    if args.json:
        print_json(status)
        return 0
    rows = []
    for node in status["nodes"]:
        for gpu in node["gpus"]:
            memory = f"{gpu['memory_total_mib'] // 1024} GiB" if gpu["memory_total_mib"] else "-"
            used = f"{gpu['memory_used_mib']} MiB" if gpu["memory_used_mib"] is not None else "-"
            util = f"{gpu['utilization_pct']}%" if gpu["utilization_pct"] is not None else "-"
            rows.append([node["name"], gpu["index"], gpu["model"] or "-", memory, gpu["state"],
                         gpu["job_id"], gpu["user"], util, used])
    print(table(["NODE", "GPU", "MODEL", "MEMORY", "STATE", "JOB", "USER", "UTIL", "MEM USED"], rows))
    print(f"\n{status['free_gpus']} of {status['total_gpus']} GPU(s) free, {status['drained_gpus']} drained.")
    if not status["detected"]:
        print("These GPUs are declared, not detected: nothing about them is measured.")
        print(f"  {status['notice']}")
    if status.get("metrics_error"):
        print(f"Live readings unavailable: {status['metrics_error']}")
    return 0


def _ts(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    job = client.call("GET", f"/jobs/{args.job}")
    events = client.call("GET", f"/jobs/{args.job}/events")
    if args.json:
        print_json({"job": job, "events": events})
        return 0
    alloc = job["allocation"]
    fields = [
        ("job", f"{job['id']} {job['name'] or ''}".strip()),
        ("user", job["user"]),
        ("status", job["status"] + (f" (stopping: {job['stop_reason']})" if job.get("stop_reason") else "")),
        ("waiting", f"{job['pending_reason']}: {job['pending_message']}" if job["pending_reason"] else None),
        ("position", job["position"]),
        ("starts", _ts(job["estimated_start"]) + " (estimated)" if job["estimated_start"] else None),
        ("not before", _ts(job["begin_at"]) if job["begin_at"] else None),
        ("after", ", ".join(map(str, job["after"])) + " (completed)" if job["after"] else None),
        ("after any", ", ".join(map(str, job["after_any"])) + " (ended)" if job["after_any"] else None),
        ("preemptible", f"yes (preempted {job['preemptions']} time(s))" if job["preemptible"] else None),
        ("command", job["command"]),
        ("cwd", job["cwd"]),
        ("gpus", f"{job['gpu_count']}" + (f" on {alloc['node']}:{','.join(map(str, alloc['gpus']))}" if alloc else "")),
        ("priority", job["priority"]),
        ("exit code", job["exit_code"]),
        ("attempts", f"{job['attempts']} (retries allowed: {job['max_retries']})"),
        ("submitted", _ts(job["submit_time"])),
        ("started", _ts(job["start_time"])),
        ("ended", _ts(job["end_time"])),
        ("time limit", format_duration(job["time_limit_s"]) if job["time_limit_s"] else None),
        ("estimate", format_duration(job["est_duration_s"]) if job["est_duration_s"] else None),
        ("log", job["log_path"]),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        if value not in (None, ""):
            print(f"{key.ljust(width)}  {value}")
    if events:
        print("\nevents:")
        for event in events:
            print(f"  {_ts(event['time'])}  {event['kind']:<10}  {event['message']}")
    return 0


def cmd_logs(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, int] = {"tail": args.tail} if args.tail is not None else {}
    chunk = client.call("GET", f"/jobs/{args.job}/logs", params=params)
    if args.json and not args.follow:
        print_json(chunk)
        return 0
    sys.stdout.write(chunk["text"])
    sys.stdout.flush()
    if not args.follow:
        return 0
    offset = chunk["next_offset"]
    try:
        while True:
            done = chunk["status"] in TERMINAL
            time.sleep(FOLLOW_POLL_S if not done else 0)
            chunk = client.call("GET", f"/jobs/{args.job}/logs", params={"offset": offset})
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()
            offset = chunk["next_offset"]
            if done and not chunk["text"]:  # ended, and everything it wrote is shown
                return 0
    except KeyboardInterrupt:
        return 130


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    job = client.call("DELETE", f"/queue/{args.job}")
    if args.json:
        print_json(job)
    elif job["status"] == "cancelled":
        print(f"Cancelled job {job['id']}.")
    else:
        print(f"Stopping job {job['id']}: SIGTERM now, SIGKILL after the grace period; its GPUs are freed when it ends.")
    return 0


def cmd_priority(args: argparse.Namespace, client: Client) -> int:
    job = client.call("PATCH", f"/queue/{args.job}/priority", json={"priority": args.priority})
    if args.json:
        print_json(job)
    else:
        print(f"Job {job['id']} now has priority {job['priority']}.")
    return 0


def _show_status(status: dict, *, as_json: bool) -> None:
    if as_json:
        print_json(status)
        return
    tick = status["last_tick"]
    counts = ", ".join(f"{n} {s}" for s, n in status["counts"].items() if n)
    print(f"scheduler  {status['state']}")
    print(f"policy     {status['policy']}  (choices: {', '.join(status['policies'])})")
    if tick:
        print(f"last pass  {_ts(tick['time'])}, took {tick['duration_s'] * 1000:.1f} ms")
    print(f"jobs       {counts or 'none'}")
    if status.get("last_error"):
        print(f"error      {status['last_error']}")


def _status_command(method: str, path: str) -> Callable[[argparse.Namespace, Client], int]:
    def run(args: argparse.Namespace, client: Client) -> int:
        status = client.call(method, path)
        _show_status(status, as_json=args.json)
        return 0

    return run


def cmd_policy(args: argparse.Namespace, client: Client) -> int:
    if args.name:
        status = client.call("PUT", "/orchestrator/policy", json={"policy": args.name})
    else:
        status = client.call("GET", "/orchestrator/status")
    _show_status(status, as_json=args.json)
    return 0


def cmd_jobs(args: argparse.Namespace, client: Client) -> int:
    params = {k: v for k, v in (("status", args.status), ("user", args.user), ("limit", args.limit)) if v}
    jobs = client.call("GET", "/jobs", params=params)
    if args.json:
        print_json(jobs)
        return 0
    rows = [
        [j["id"], j["name"] or "-", j["user"], j["gpu_count"], j["priority"], j["status"], j["exit_code"],
         _ts(j["submit_time"]), j["command"][:60]]
        for j in jobs
    ]
    print(table(["ID", "NAME", "USER", "GPUS", "PRIO", "STATE", "EXIT", "SUBMITTED", "COMMAND"], rows) if rows else "No jobs.")
    return 0


def cmd_explain(args: argparse.Namespace, client: Client) -> int:
    data = client.call("GET", f"/jobs/{args.job}/explain")
    if args.json:
        print_json(data)
        return 0
    head = f"job {data['job_id']} ({data['user']}, {data['gpu_count']} GPU(s)): {data['status']}"
    if data["status"] != "queued":
        print(f"{head}; {data['message']}")
        return 0
    place = f", #{data['position']} in line" if data["position"] else ""
    print(f"{head}{place}; policy {data['policy']}")
    quota = _quota_use("user", data["user_quota"])
    if data["group_quota"]:
        quota += "; " + _quota_use("group", data["group_quota"])
    fields = [
        ("waiting", f"{data['reason']}: {data['message']}" if data["reason"] else data["message"]),
        ("starts", _ts(data["estimated_start"]) + " (estimated)" if data["estimated_start"] else "- (cannot plan it yet)"),
        ("quota", quota),
        ("note", data["note"]),
    ]
    for key, value in fields:
        if value:
            print(f"{key.ljust(8)}  {value}")
    rows = [[f["name"], f"{f['value']:.3f}", f"{f['weight']:g}", f"{f['points']:.1f}", f["detail"]] for f in data["factors"]]
    rows.append(["total", "", "", f"{data['total']:.1f}", "higher starts first"])
    print()
    print(table(["FACTOR", "VALUE", "WEIGHT", "POINTS", "DETAIL"], rows))
    return 0


def _quota_use(kind: str, use: dict) -> str:
    limit = f"of {use['quota']}" if use["quota"] is not None else "(no limit)"
    return f"{kind} {use['name']} holds {use['in_use']} GPU(s) {limit}"


def cmd_quotas(args: argparse.Namespace, client: Client) -> int:
    data = client.call("GET", "/quotas")
    if args.json:
        print_json(data)
        return 0
    users = [[u["user"], u["group"], u["quota"], u["in_use"], u["waiting_gpus"]] for u in data["users"]]
    print(table(["USER", "GROUP", "QUOTA", "IN USE", "WAITING"], users) if users else "No user holds or waits for GPUs.")
    groups = [[g["group"], ",".join(g["members"]) or "-", g["quota"], g["in_use"], g["waiting_gpus"]] for g in data["groups"]]
    if groups:
        print()
        print(table(["GROUP", "MEMBERS", "QUOTA", "IN USE", "WAITING"], groups))
    default = data["default_user_quota"]
    print(f"\nQuotas are GPUs held at once; - is no limit. Users without a quota of their own: "
          f"{'no limit' if default is None else f'{default} GPU(s)'}.")
    return 0


def _describe_reservation(r: dict) -> str:
    holder = f"user {r['user']}" if r["user"] else f"group {r['group']}"
    return f"{r['node']} GPU(s) {','.join(map(str, r['gpus']))} for {holder} from {_minute(r['start'])} to {_minute(r['end'])}"


def _minute(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cmd_reserve(args: argparse.Namespace, client: Client) -> int:
    body = {
        "user": args.user, "group": args.group, "start": args.start, "end": args.end, "node": args.node,
        "gpus": args.gpu_ids, "gpu_count": args.gpus, "note": args.note,
    }
    reservation = client.call("POST", "/reservations", json={k: v for k, v in body.items() if v is not None})
    if args.json:
        print_json(reservation)
    else:
        print(f"Reserved {_describe_reservation(reservation)} (reservation {reservation['id']}).")
    return 0


def cmd_reservations(args: argparse.Namespace, client: Client) -> int:
    reservations = client.call("GET", "/reservations")
    if args.json:
        print_json(reservations)
        return 0
    rows = [[r["id"], r["node"], ",".join(map(str, r["gpus"])), f"user {r['user']}" if r["user"] else f"group {r['group']}",
             _minute(r["start"]), _minute(r["end"]), r["note"] or "-"] for r in reservations]
    print(table(["ID", "NODE", "GPUS", "FOR", "FROM", "TO", "NOTE"], rows) if rows else "No reservations.")
    return 0


def cmd_unreserve(args: argparse.Namespace, client: Client) -> int:
    reservation = client.call("DELETE", f"/reservations/{args.reservation}")
    if args.json:
        print_json(reservation)
    else:
        print(f"Removed reservation {reservation['id']} ({_describe_reservation(reservation)}).")
    return 0


# -- the parser ----------------------------------------------------------------------------------


def cmd_ask(args: argparse.Namespace, client: Client) -> int:
    body = {"message": " ".join(args.message), "user": args.user, "session_id": args.session}
    data = client.call("POST", "/chat", json=body)
    if args.json:
        print_json(data)
        return 0
    print(data["reply"])
    if data["actions"]:
        print()
        rows = [(a["tool"], json.dumps(a["arguments"], ensure_ascii=False)[:60], a["verdict"], a["detail"][:60])
                for a in data["actions"]]
        print(table(("TOOL", "ARGUMENTS", "VERDICT", "DETAIL"), rows))
    print(f"\n(session {data['session_id']}: continue with --session {data['session_id']})")
    return 0


def run_eval(argv: Sequence[str]) -> int:
    """``herd eval ...``; parsed on its own so that ``herd eval replay --help`` reaches the harness."""
    # Imported here: the harness pulls in the agent and plotting, which other commands do not need.
    from evals import chat_eval
    from evals import cli as eval_cli

    parser = argparse.ArgumentParser(prog="herd eval", description="Evals run offline, on a simulated clock.")
    evals = parser.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    eval_cli.build_parser(evals)
    chat_eval.build_parser(evals)
    parsed = parser.parse_args(argv)
    return parsed.eval_run(parsed)


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a number, as `herd queue` shows)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("job ids start at 1")
    return value


def _job_ids(text: str) -> list[int]:
    """``3`` or ``3,4``: job ids (the option may also be repeated)."""
    return [_job_id(part) for part in text.split(",")]


def _flatten(lists: list[list[int]] | None) -> list[int] | None:
    return [item for part in lists for item in part] if lists else None


def _gpu_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU indices; write e.g. 0,1") from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("HERD_URL", DEFAULT_URL),
                        help=f"the server (default: $HERD_URL or {DEFAULT_URL})")
    common.add_argument("--json", action="store_true", help="print the server's JSON instead of a table")

    parser = argparse.ArgumentParser(prog="herd", description="gpuherd: share GPUs, queue jobs, watch them run.")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def add(name: str, run, help: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help, **kw)
        p.set_defaults(run=run)
        return p

    p = sub.add_parser("serve", help="run the server (REST API and scheduler)",
                       description="Run the server. Unset flags come from HERD_* variables, then defaults.")
    p.set_defaults(run=cmd_serve)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 10000)")
    p.add_argument("--workdir", help="database, logs and exit-code files (default ./.herd)")
    p.add_argument("--gpus", type=int, help="declare N GPUs on node 'local' when none are detected")
    p.add_argument("--policy", help=" | ".join(POLICY_NAMES))
    p.add_argument("--max-queue-size", type=int, dest="max_queue_size", help="most waiting jobs (default 100)")
    p.add_argument("--stopped", action="store_true", help="start with the scheduler stopped (no job starts)")
    p.add_argument("--config", help="a YAML file of settings: quotas, groups, weights, ... ($HERD_CONFIG)")
    p.add_argument("--default-user-quota", type=int, dest="default_user_quota",
                   help="GPUs at once for users without a quota of their own (default: no limit)")
    p.add_argument("--default-runtime", type=parse_duration, dest="default_runtime_s",
                   help="expected run time of a job with no time limit or estimate (default 1h)")
    p.add_argument("--preempt-priority-gap", dest="preempt_priority_gap", metavar="N|off",
                   help="a job preempts preemptible jobs N priority levels lower (default 2); off: never")
    p.add_argument("--preempt-grace", type=parse_duration, dest="preempt_grace_s",
                   help="SIGTERM to SIGKILL for a preempted job (default 30s)")

    p = add("submit", cmd_submit, "queue a job: herd submit --gpus 2 -- python train.py --lr 3e-4")
    p.add_argument("--gpus", type=int, default=1, help="whole GPUs on one node (default 1)")
    p.add_argument("--priority", type=int, help="1 (lowest) to 10 (highest); default 5")
    p.add_argument("--name", help="a label for the job")
    p.add_argument("--time", type=parse_duration, help="time limit, e.g. 2h, 90m, 1h30m")
    p.add_argument("--estimate", type=parse_duration, help="your estimate of the run time (sjf uses it)")
    p.add_argument("--user", default=os.environ.get("USER") or getpass.getuser(), help="owner (default $USER)")
    p.add_argument("--cwd", default=os.getcwd(), help="working directory on the server (default: here)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment variable (repeat)")
    p.add_argument("--retries", type=int, help="retries after a failure (default 1)")
    p.add_argument("--begin", help="not before: 22:00, '2026-11-30 22:00', +3h")
    p.add_argument("--after", type=_job_ids, action="append", metavar="JOB[,JOB]",
                   help="start only after these jobs completed successfully (repeat or comma-separate)")
    p.add_argument("--after-any", type=_job_ids, action="append", dest="after_any", metavar="JOB[,JOB]",
                   help="start only after these jobs ended, however they ended")
    p.add_argument("--preemptible", action="store_true",
                   help="may be stopped (SIGTERM, grace, SIGKILL) and requeued for a job of higher priority")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")

    p = add("queue", cmd_queue, "running and waiting jobs in scheduling order, with reasons")
    p.add_argument("--user", help="only this user's jobs")
    add("gpus", cmd_gpus, "nodes and GPUs: free, allocated, drained; live readings")
    p = add("show", cmd_show, "one job's record and events")
    p.add_argument("job", type=_job_id)
    p = add("logs", cmd_logs, "a job's output")
    p.add_argument("job", type=_job_id)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p = add("cancel", cmd_cancel, "cancel a queued job or stop a running one")
    p.add_argument("job", type=_job_id)
    p = add("priority", cmd_priority, "change a queued job's priority")
    p.add_argument("job", type=_job_id)
    p.add_argument("priority", type=int)
    p = add("jobs", cmd_jobs, "all jobs, finished ones too")
    p.add_argument("--status", help="e.g. running or completed,failed")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, help="only the newest N")
    p = add("explain", cmd_explain, "why a job waits: pending reason, place, estimated start, priority factors, quotas")
    p.add_argument("job", type=_job_id)
    add("quotas", cmd_quotas, "GPU quotas per user and group: quota, GPUs in use, GPUs waiting")
    p = add("reserve", cmd_reserve, "keep GPUs for a user or group: herd reserve --gpus 2 --user ana --start 22:00 --end +8h")
    p.add_argument("--gpus", type=int, help="how many GPUs (on --node, or the first node with room)")
    p.add_argument("--node", help="the node (default: the first with room)")
    p.add_argument("--gpu-ids", type=_gpu_ids, dest="gpu_ids", metavar="0,1", help="exactly these GPUs of --node")
    holder = p.add_mutually_exclusive_group(required=True)
    holder.add_argument("--user", help="keep them for this user")
    holder.add_argument("--group", help="keep them for this group")
    p.add_argument("--start", default="now", help="22:00, '2026-11-30 22:00', +1h or now (default)")
    p.add_argument("--end", required=True, help="as --start; +8h and 06:00 count from the start")
    p.add_argument("--note", help="why, for the people who see it")
    add("reservations", cmd_reservations, "GPU reservations not over yet")
    p = add("unreserve", cmd_unreserve, "remove a reservation")
    p.add_argument("reservation", type=int)
    p = add("policy", cmd_policy, "show the scheduling policy, or set it: herd policy fair_share")
    p.add_argument("name", nargs="?", help=" | ".join(POLICY_NAMES))
    p = add("ask", cmd_ask, 'ask the agent in plain language: herd ask "4 GPUs for 3 hours -- python ft.py"')
    p.add_argument("message", nargs="+", help="the request")
    p.add_argument("--user", default=os.environ.get("USER") or getpass.getuser(), help="who asks (default $USER)")
    p.add_argument("--session", help="continue an earlier conversation")
    sub.add_parser("eval", help="offline evals: herd eval replay | generate | chat (see herd eval --help)")
    add("status", _status_command("GET", "/orchestrator/status"), "the scheduler's state and counts")
    add("start", _status_command("POST", "/orchestrator/start"), "let queued jobs start")
    add("stop", _status_command("POST", "/orchestrator/stop"), "start no new jobs (running jobs go on)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        return run_eval(argv[1:])
    args = build_parser().parse_args(argv)
    client = None if args.run is cmd_serve else Client(args.url)
    try:
        return args.run(args, client)
    except CliError as exc:
        print(f"herd: {exc}", file=sys.stderr)
        return exc.code
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
