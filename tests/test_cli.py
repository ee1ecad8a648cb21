"""``herd`` against a running ``herd serve``: tables, ``--json``, exit codes and messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import click
import pytest

from agent.cli import main
from agent.cli.output import format_duration, table, when
from agent.cli.params import DURATION
from tests.builders import DURATIONS
from tests.helpers import free_port, herd_command
from tests.herd_server import HerdServer



CONFIG = """\
groups:
  lab: [ana, ben]
user_quotas: {ana: 1}
group_quotas: {lab: 2}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (a start costs a second or two); tests make their own jobs."""
    root = tmp_path_factory.mktemp("cli")
    (root / "herd.yaml").write_text(CONFIG)
    srv = HerdServer(root / "herd", "--gpus", "2", "--config", str(root / "herd.yaml")).start()
    yield srv
    srv.close()


# -- pure helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, want_s", DURATIONS)
def test_parse_duration(text, want_s):
    assert DURATION.convert(text, None, None) == want_s


@pytest.mark.parametrize("text", ["h", "2x", "1h 30m", "", "0s", "-1h", "1:60"])
def test_parse_duration_refuses(text):
    with pytest.raises(click.BadParameter):
        DURATION.convert(text, None, None)


@pytest.mark.parametrize("seconds, want", [(5, "5s"), (75, "1m15s"), (3660, "1h01m"), (90000, "1d01h"), (None, "-")])
def test_format_duration(seconds, want):
    assert format_duration(seconds) == want


NOON = time.mktime((2026, 11, 29, 12, 0, 0, 0, 0, -1))


@pytest.mark.parametrize("t, want", [
    (None, "-"), (NOON - 60, "now"), (NOON, "now"), (NOON + 3600, "13:00"),
    (time.mktime((2026, 11, 30, 9, 5, 0, 0, 0, -1)), "11-30 09:05"),
])
def test_when_a_job_starts(t, want):
    assert when(t, NOON) == want


def test_table_aligns_columns():
    lines = table(["ID", "NAME", "X"], [[1, "long-name", "a"], [22, None, "b"]]).splitlines()
    assert lines == ["ID  NAME       X", "1   long-name  a", "22  -          b"]


# -- against a server ------------------------------------------------------------------------------
@pytest.mark.tmux
def test_submit_show_logs_and_queue(herd, server, tmp_path):
    code, out, _ = herd(
        "submit", "--gpus", "1", "--priority", "7", "--name", "exp1", "--time", "2h", "--estimate", "90m",
        "--cwd", str(tmp_path), "--env", "GREETING=hello", "--", "sh", "-c", "echo $GREETING from $(pwd); echo done",
    )
    assert code == 0 and out.startswith("Submitted job ")
    job_id = int(out.split()[2])
    job = server.wait_for(job_id, "completed")
    assert job["name"] == "exp1" and job["priority"] == 7 and job["time_limit_s"] == 7200
    assert job["est_duration_s"] == 5400 and job["cwd"] == str(tmp_path) and job["user"] == os.environ.get("USER", job["user"])
    assert job["command"] == "sh -c 'echo $GREETING from $(pwd); echo done'"

    code, out, _ = herd("logs", str(job_id))
    assert (code, out) == (0, f"hello from {tmp_path}\ndone\n")
    code, out, _ = herd("logs", str(job_id), "--tail", "1")
    assert out == "done\n"

    code, out, _ = herd("show", str(job_id))
    assert code == 0
    assert re.search(r"^status +completed$", out, re.M) and re.search(r"^exit code +0$", out, re.M)
    assert "events:" in out and "submitted exp1" in out
    assert re.search(r"^estimate +1h30m \(given with the job\)$", out, re.M)

    code, out, _ = herd("show", str(job_id), "--json")
    assert json.loads(out)["job"]["exit_code"] == 0


@pytest.mark.tmux
def test_queue_table_and_json(herd, server):
    blocker = server.submit(command="sleep 30", gpu_count=2, run_id="blocker")["job_id"]
    server.wait_for(blocker, "running")
    waiting = server.submit(command="true", gpu_count=2, priority=3)["job_id"]
    try:
        code, out, _ = herd("queue")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["ID", "NAME", "USER", "GPUS", "PRIO", "STATE", "FOR", "START", "WHERE", "/", "WHY", "WAITING"]
        row = next(line for line in lines if line.startswith(f"{waiting} "))
        assert "queued" in row and "#1" in row and "Resources" in row
        planned = server.job(waiting)["estimated_start"]  # when the blocker's default hour is up
        # Columns are two spaces apart; a start on another day ("12-01 00:50") holds one.
        assert planned > time.time() and when(planned, time.time()) in re.split(r" {2,}", row)
        assert "local:0,1" in next(line for line in lines if line.startswith(f"{blocker} "))

        code, out, _ = herd("queue", "--json")
        view = json.loads(out)
        assert [e["job"]["id"] for e in view["jobs"]][:2] == [blocker, waiting]
        assert view["stats"]["counts"]["queued"] >= 1

        code, out, _ = herd("gpus")
        assert code == 0 and "allocated" in out and "declared, not detected" in out
        code, out, _ = herd("priority", str(waiting), "8")
        assert (code, out.strip()) == (0, f"Job {waiting} now has priority 8.")
    finally:
        assert herd("cancel", str(waiting))[0] == 0
        code, out, _ = herd("cancel", str(blocker))
    assert code == 0 and "Stopping job" in out
    assert server.wait_for(blocker, "cancelled")["exit_code"] == 143


@pytest.mark.tmux
def test_logs_follow_prints_until_the_job_ends(herd, server):
    job_id = server.submit(command="for i in 1 2 3; do echo line $i; sleep 0.3; done")["job_id"]
    code, out, _ = herd("logs", str(job_id), "-f")
    assert code == 0 and out == "line 1\nline 2\nline 3\n"
    assert server.job(job_id)["status"] == "completed"


@pytest.mark.tmux
def test_policy_stop_and_start(herd, server):
    code, out, _ = herd("policy", "sjf")
    assert code == 0 and "policy     sjf" in out
    code, out, _ = herd("stop")
    assert "scheduler  stopped" in out
    job_id = server.submit(command="true")["job_id"]
    code, out, _ = herd("status", "--json")
    assert json.loads(out)["state"] == "stopped"
    code, out, _ = herd("start")
    assert "scheduler  running" in out
    assert server.wait_for(job_id, "completed")
    code, out, _ = herd("policy", "priority")
    assert code == 0


@pytest.mark.tmux
@pytest.mark.parametrize(
    "args, want_message",
    [
        (("cancel", "999999"), "no job 999999"),
        (("priority", "999999", "5"), "no job 999999 (HTTP 404)"),
        (("submit", "--gpus", "3", "--", "true"), "asks for 3 GPUs but the largest node has 2 (HTTP 422)"),
        (("submit", "--priority", "11", "--", "true"), "priority: Input should be less than or equal to 10"),
        (("submit", "--cwd", "/no/such/dir", "--", "true"), "cwd /no/such/dir is not an existing directory on this server (HTTP 422)"),
        (("submit",), "no command given; e.g. herd submit --gpus 2 -- python train.py"),
        (("policy", "random"), "unknown policy 'random'; choose one of: priority, fcfs, sjf, fair_share, backfill, multifactor (HTTP 422)"),
        (("submit", "--begin", "soon", "--", "true"),
         "begin_at: 'soon' is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now (HTTP 422)"),
        (("submit", "--after", "999999", "--", "true"), "runs after job 999999, which does not exist (HTTP 422)"),
        (("submit", "--user", "ana", "--gpus", "2", "--", "true"), "asks for 2 GPUs but user ana's quota is 1 GPUs at once (HTTP 422)"),
        (("explain", "999999"), "no job 999999 (HTTP 404)"),
        (("reserve", "--gpus", "1", "--group", "physics", "--end", "+1h"),
         "there is no group 'physics'; the groups are: lab (HTTP 422)"),
        (("reserve", "--gpus", "1", "--user", "ana", "--end", "+1"),
         "end: '+1' is not a time from now: '1' is not a duration; write e.g. 2h, 90m, 30s or 1h30m (HTTP 422)"),
        (("unreserve", "999999"), "no reservation 999999 (HTTP 404)"),
    ],
    ids=["cancel-unknown", "priority-unknown", "too-many-gpus", "bad-priority", "bad-cwd", "no-command", "bad-policy",
         "bad-begin", "unknown-after", "over-quota", "explain-unknown", "unknown-group", "bad-end", "unreserve-unknown"],
)
def test_failures_exit_non_zero_with_the_servers_message(herd, args, want_message):
    code, out, err = herd(*args)
    assert code == 1 and out == ""
    assert err.strip() == f"herd: {want_message}"


@pytest.mark.tmux
def test_cancel_a_finished_job_is_a_conflict(herd, server):
    job_id = server.submit(command="true")["job_id"]
    server.wait_for(job_id, "completed")
    code, _, err = herd("cancel", str(job_id))
    assert code == 1 and f"job {job_id} is completed; there is nothing to cancel" in err


@pytest.mark.tmux
def test_submit_deferred_dependent_preemptible_and_show_it(herd, server):
    done, other = server.submit(command="true")["job_id"], server.submit(command="false", max_retries=0)["job_id"]
    server.wait_for(done, "completed")
    server.wait_for(other, "failed")
    code, out, _ = herd("submit", "--begin", "+2h", "--after", str(done), "--after-any", f"{other},{other}",
                        "--preemptible", "--", "true")
    assert code == 0 and out.startswith("Submitted job ")
    job_id = int(out.split()[2])
    try:
        job = server.job(job_id)
        assert (job["after"], job["after_any"], job["preemptible"]) == ([done], [other, other], True)
        assert 2 * 3600 - 60 < job["begin_at"] - time.time() <= 2 * 3600
        server_said = server.wait_for(job_id, "queued")
        code, out, _ = herd("show", str(job_id))
        assert code == 0
        assert re.search(rf"^after +{done} \(completed\)$", out, re.M)
        assert re.search(r"^preemptible +yes \(preempted 0 time\(s\)\)$", out, re.M)
        assert re.search(r"^not before +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", out, re.M)
        assert re.search(r"^starts +.* \(estimated\)$", out, re.M) and server_said["position"] is not None
        code, out, _ = herd("queue")
        row = next(line for line in out.splitlines() if line.startswith(f"{job_id} "))
        assert when(job["begin_at"], time.time()) in re.split(r" {2,}", row) and "BeginTime" in row
    finally:
        herd("cancel", str(job_id))


@pytest.mark.tmux
def test_explain_a_waiting_and_a_running_job(herd, server):
    assert herd("policy", "multifactor")[0] == 0  # another test may have changed it
    blocker = server.submit(command="sleep 30", gpu_count=2)["job_id"]
    server.wait_for(blocker, "running")
    waiting = server.submit(command="true", user="ben", priority=7)["job_id"]
    try:
        deadline = time.time() + 10
        while server.job(waiting)["pending_reason"] != "Resources" and time.time() < deadline:
            time.sleep(0.05)
        code, out, _ = herd("explain", str(waiting))
        assert code == 0
        lines = out.splitlines()
        assert lines[0] == f"job {waiting} (ben, 1 GPU(s)): queued, #1 in line; policy multifactor"
        assert re.search(r"^waiting +Resources: needs 1 free GPU", out, re.M)
        assert re.search(r"^starts +\d{4}-.* \(estimated\)$", out, re.M)
        assert re.search(r"^quota +user ben holds 0 GPU\(s\) \(no limit\); group lab holds 0 GPU\(s\) of 2$", out, re.M)
        header = next(i for i, line in enumerate(lines) if line.startswith("FACTOR"))
        assert lines[header].split() == ["FACTOR", "VALUE", "WEIGHT", "POINTS", "DETAIL"]
        assert [line.split()[0] for line in lines[header + 1:]] == ["priority", "age", "fair_share", "size", "total"]
        assert lines[header + 1].split()[:4] == ["priority", "0.667", "1000", "666.7"]

        code, out, _ = herd("explain", str(blocker))
        assert out.strip() == f"job {blocker} (tester, 2 GPU(s)): running; running on local GPU(s) 0,1"
        code, out, _ = herd("explain", str(waiting), "--json")
        assert json.loads(out)["group_quota"] == {"name": "lab", "quota": 2, "in_use": 0}
    finally:
        herd("cancel", str(waiting))
        herd("cancel", str(blocker))
        server.wait_for(blocker, "cancelled")


@pytest.mark.tmux
def test_quotas(herd):
    code, out, _ = herd("quotas")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["USER", "GROUP", "QUOTA", "IN", "USE", "WAITING"]
    assert lines[1].split() == ["ana", "lab", "1", "0", "0"]
    group = lines.index("") + 1
    assert lines[group].split() == ["GROUP", "MEMBERS", "QUOTA", "IN", "USE", "WAITING"]
    assert lines[group + 1].split() == ["lab", "ana,ben", "2", "0", "0"]
    assert lines[-1] == "Quotas are GPUs held at once; - is no limit. Users without a quota of their own: no limit."


@pytest.mark.tmux
def test_reserve_list_and_unreserve(herd):
    code, out, _ = herd("reserve", "--gpus", "1", "--user", "ana", "--start", "+1h", "--end", "+2h", "--note", "demo")
    assert code == 0
    match = re.fullmatch(r"Reserved local GPU\(s\) 0 for user ana from (\S+ \S+) to (\S+ \S+) \(reservation (\d+)\)\.\n", out)
    assert match
    start, end, reservation = match.groups()
    code, out, _ = herd("reserve", "--gpu-ids", "0,1", "--node", "local", "--group", "lab", "--start", "+3h", "--end", "+1h")
    assert code == 0 and "local GPU(s) 0,1 for group lab" in out
    second = re.search(r"\(reservation (\d+)\)", out)[1]
    code, out, _ = herd("reservations")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NODE", "GPUS", "FOR", "FROM", "TO", "NOTE"]
    assert lines[1].split() == [reservation, "local", "0", "user", "ana", *start.split(), *end.split(), "demo"]
    assert lines[2].split()[:5] == [second, "local", "0,1", "group", "lab"]
    code, _, err = herd("reserve", "--gpus", "2", "--user", "ben", "--start", "+90m", "--end", "+10m")
    assert code == 1 and "no node has 2 usable GPU(s) free of other reservations" in err
    code, out, _ = herd("unreserve", reservation)
    assert (code, out) == (0, f"Removed reservation {reservation} (local GPU(s) 0 for user ana from {start} to {end}).\n")
    assert herd("unreserve", second)[0] == 0
    assert herd("reservations")[1] == "No reservations.\n"


def test_serve_refuses_a_bad_config_file(tmp_path, capsys):
    config = tmp_path / "herd.yaml"
    config.write_text("user_quota: {ana: 1}\n")
    assert main(["serve", "--config", str(config), "--workdir", str(tmp_path / "never-created")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"herd: config file {config}: unknown key 'user_quota' (did you mean 'user_quotas'?)")
    assert not (tmp_path / "never-created").exists()


@pytest.mark.parametrize("flags, message", [
    (("--preempt-priority-gap", "0"), "preempt_priority_gap: Input should be greater than or equal to 1"),
    (("--default-user-quota", "-1"), "default_user_quota: Input should be greater than or equal to 0"),
])
def test_serve_refuses_bad_rule_flags(tmp_path, capsys, flags, message):
    assert main(["serve", *flags, "--workdir", str(tmp_path / "never-created")]) == 1
    assert capsys.readouterr().err.strip() == f"herd: {message}"


def test_serve_refuses_bad_settings_before_starting(capsys):
    assert main(["serve", "--policy", "lottery", "--workdir", "/nonexistent/never-created"]) == 1
    assert capsys.readouterr().err.strip() == (
        "herd: policy: unknown policy 'lottery'; choose one of: priority, fcfs, sjf, fair_share, backfill, multifactor, agent"
    )


def test_no_server_is_one_clear_line_from_the_real_command():
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*herd_command(), "queue"], env={**os.environ, "HERD_URL": url}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"herd: cannot reach the gpuherd server at {url} (ConnectError); start it with `herd serve`, or point HERD_URL (or HERD_SOCKET) at it"
    ]
