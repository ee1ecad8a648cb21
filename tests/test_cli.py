"""``herd`` against a running ``herd serve``: tables, ``--json``, exit codes and messages."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from agent.cli import format_duration, main, parse_duration, table
from tests.herd_server import HerdServer, free_port, herd_command

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (a start costs a second or two); tests make their own jobs."""
    srv = HerdServer(tmp_path_factory.mktemp("cli") / "herd", "--gpus", "2").start()
    yield srv
    srv.stop(signal.SIGKILL)
    srv.http.close()
    srv.kill_tmux()


@pytest.fixture
def herd(server, capsys):
    """Run ``herd ARGS`` in-process against the server: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([args[0], "--url", server.url, *args[1:]])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- pure helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, want_s",
    [("30s", 30), ("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("1.5h", 5400), ("2H", 7200)],
)
def test_parse_duration(text, want_s):
    assert parse_duration(text) == want_s


@pytest.mark.parametrize("text", ["90", "h", "2x", "1h 30m", "", "0s", "-1h"])
def test_parse_duration_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.parametrize("seconds, want", [(5, "5s"), (75, "1m15s"), (3660, "1h01m"), (90000, "1d01h"), (None, "-")])
def test_format_duration(seconds, want):
    assert format_duration(seconds) == want


def test_table_aligns_columns():
    lines = table(["ID", "NAME", "X"], [[1, "long-name", "a"], [22, None, "b"]]).splitlines()
    assert lines == ["ID  NAME       X", "1   long-name  a", "22  -          b"]


# -- against a server ------------------------------------------------------------------------------
@needs_tmux
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

    code, out, _ = herd("show", str(job_id), "--json")
    assert json.loads(out)["job"]["exit_code"] == 0


@needs_tmux
def test_queue_table_and_json(herd, server):
    blocker = server.submit(command="sleep 30", gpu_count=2, run_id="blocker")["job_id"]
    server.wait_for(blocker, "running")
    waiting = server.submit(command="true", gpu_count=2, priority=3)["job_id"]
    try:
        code, out, _ = herd("queue")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["ID", "NAME", "USER", "GPUS", "PRIO", "STATE", "FOR", "WHERE", "/", "WHY", "WAITING"]
        row = next(line for line in lines if line.startswith(f"{waiting} "))
        assert "queued" in row and "#1" in row and "Resources" in row
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


@needs_tmux
def test_logs_follow_prints_until_the_job_ends(herd, server):
    job_id = server.submit(command="for i in 1 2 3; do echo line $i; sleep 0.3; done")["job_id"]
    code, out, _ = herd("logs", str(job_id), "-f")
    assert code == 0 and out == "line 1\nline 2\nline 3\n"
    assert server.job(job_id)["status"] == "completed"


@needs_tmux
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


@needs_tmux
@pytest.mark.parametrize(
    "args, want_message",
    [
        (("cancel", "999999"), "no job 999999 (HTTP 404)"),
        (("priority", "999999", "5"), "no job 999999 (HTTP 404)"),
        (("submit", "--gpus", "3", "--", "true"), "asks for 3 GPUs but the largest node has 2 (HTTP 422)"),
        (("submit", "--priority", "11", "--", "true"), "priority: Input should be less than or equal to 10 (HTTP 422)"),
        (("submit", "--cwd", "/no/such/dir", "--", "true"), "cwd /no/such/dir is not an existing directory on this server (HTTP 422)"),
        (("submit",), "no command given; e.g. herd submit --gpus 2 -- python train.py"),
        (("policy", "random"), "unknown policy 'random'; choose one of: priority, fcfs, sjf, fair_share (HTTP 422)"),
    ],
    ids=["cancel-unknown", "priority-unknown", "too-many-gpus", "bad-priority", "bad-cwd", "no-command", "bad-policy"],
)
def test_failures_exit_non_zero_with_the_servers_message(herd, args, want_message):
    code, out, err = herd(*args)
    assert code == 1 and out == ""
    assert err.strip() == f"herd: {want_message}"


@needs_tmux
def test_cancel_a_finished_job_is_a_conflict(herd, server):
    job_id = server.submit(command="true")["job_id"]
    server.wait_for(job_id, "completed")
    code, _, err = herd("cancel", str(job_id))
    assert code == 1 and f"job {job_id} is completed; there is nothing to cancel (HTTP 409)" in err


def test_serve_refuses_bad_settings_before_starting(capsys):
    assert main(["serve", "--policy", "lottery", "--workdir", "/nonexistent/never-created"]) == 1
    assert capsys.readouterr().err.strip() == (
        "herd: policy: unknown policy 'lottery'; choose one of: priority, fcfs, sjf, fair_share, agent"
    )


def test_no_server_is_one_clear_line_from_the_real_command():
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*herd_command(), "queue"], env={**os.environ, "HERD_URL": url}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"herd: cannot reach the gpuherd server at {url} (ConnectError); start it with `herd serve` or point HERD_URL at it"
    ]
