"""``herd`` for a lab's day: arrays, cancelling many, the submitter's environment, whole logs, accounting,
and Slurm's habits (durations, short flags, filters, --format, --noheader, exit codes, closed pipes)."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.cli.export import exported
from agent.cli.output import index_ranges, table
from agent.cli.params import JOB_REF, STATES
from tests.herd_server import HerdServer
from tools.models import MAX_ENV_BYTES, MAX_ENV_VARS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    srv = HerdServer(root / "herd", "--gpus", "4").start()
    yield srv
    srv.close()


def submitted(out: str) -> int:
    return int(re.match(r"Submitted (?:job|array) (\d+)", out)[1])


def wait_all(server, ids, *statuses, timeout_s=20.0):
    return [server.wait_for(i, *statuses, timeout_s=timeout_s) for i in ids]


# -- pure ------------------------------------------------------------------------------------------
def test_cells_are_one_line_and_safe_and_tables_fit():
    text = table(["ID", "COMMAND"], [[1, "echo a\necho b\x1b[2J"]])
    assert text.splitlines() == ["ID  COMMAND", "1   echo a↵echo b?[2J"]
    wide = table(["ID", "WHY"], [[1, "x" * 300]], width=80).splitlines()
    assert max(len(line) for line in wide) == 80 and wide[1].endswith("…")
    assert table(["A"], [["b"]], header=False) == "b"


def test_index_ranges_and_states_and_job_references():
    assert index_ranges([9, 0, 1, 2, 3, 7, 10]) == "0-3,7,9-10"
    assert STATES.convert("PD,R,to,completed", None, None) == ["queued", "running", "timeout", "completed"]
    assert JOB_REF.convert("12_3", None, None) == "12_3" and JOB_REF.convert("12", None, None) == "12"
    for bad in ("12_x", "x", "0_1"):
        with pytest.raises(Exception):
            JOB_REF.convert(bad, None, None)


def test_export_all_sends_the_shell_but_never_the_servers_variables():
    env = {"PATH": "/venv/bin:/usr/bin", "VIRTUAL_ENV": "/venv", "USER": "ana", "HERD_TOKEN": "secret",
           "HERD_URL": "http://x", "CUDA_VISIBLE_DEVICES": "3", "PWD": "/home/ana", "BASH_FUNC_f%%": "() { :; }",
           "WANDB_MODE": "offline"}
    sent, warning = exported("ALL", env, {"EXTRA": "1"})
    assert sent == {"PATH": "/venv/bin:/usr/bin", "VIRTUAL_ENV": "/venv", "USER": "ana", "WANDB_MODE": "offline",
                    "EXTRA": "1"}
    assert warning.startswith("--export: not sent to the job: BASH_FUNC_f%% (not a variable's name)")
    assert exported("NONE", env, {"A": "1"}) == ({"A": "1"}, None)
    assert exported("PATH,VIRTUAL_ENV,NOPE,B=2", env, {}) == ({"PATH": "/venv/bin:/usr/bin", "VIRTUAL_ENV": "/venv",
                                                               "B": "2"}, None)


def test_export_all_of_a_huge_environment_drops_the_largest_with_a_warning():
    env = {f"VAR_{i}": "v" * 10 for i in range(200)} | {"PATH": "/usr/bin", "BIG": "x" * 40_000,
                                                         "LS_COLORS": "y" * 30_000}
    sent, warning = exported("ALL", env, {})
    assert "PATH" in sent and "BIG" not in sent and "LS_COLORS" not in sent
    assert len(sent) <= MAX_ENV_VARS and sum(len(k) + 1 + len(v) for k, v in sent.items()) <= MAX_ENV_BYTES
    assert "BIG (over 32 KiB)" in warning and "to keep within 128 variables and 128 KiB in all" in warning
    assert "--env KEY=VALUE" in warning


def test_a_closed_pipe_is_no_traceback(capsys, monkeypatch):
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    monkeypatch.setattr("agent.cli._quiet_stdout", lambda: None)
    assert main(["completion", "bash"]) == 141


def test_usage_errors_and_the_version(capsys):
    assert main(["submit", "--gpus", "two", "--", "true"]) == 2
    assert "Invalid value for '-g' / '--gpus'" in capsys.readouterr().err
    assert main(["cancel", "--url", "http://127.0.0.1:9"]) == 2
    assert "say which jobs" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert re.fullmatch(r"herd \S+\n", capsys.readouterr().out)


# -- against a server ------------------------------------------------------------------------------
@pytest.mark.tmux
def test_an_array_is_one_submission_one_line_and_one_cancel(herd, server):
    code, out, _ = herd("submit", "-g", "1", "-t", "2:00:00", "-n", "sweep", "--array", "0-5%2", "--", "sleep 30")
    assert code == 0 and re.match(r"Submitted array (\d+): 6 task\(s\), jobs \1-(\d+) \(queued", out)
    first = submitted(out)
    wait_all(server, [first, first + 1], "running")
    code, out, _ = herd("queue", "--name", "sweep")
    lines = out.split("\n\n")[0].splitlines()
    ids = [line.split()[0] for line in lines[1:] if line and line[0].isdigit()]
    assert ids == [f"{first}_0", f"{first}_1", f"{first}_[2-5%2]"]
    assert "4 tasks: #" in next(line for line in lines if line.startswith(f"{first}_[")) and "JobArrayTaskLimit" in out
    code, out, _ = herd("queue", "--name", "sweep", "-r", "--format", "id,jobid,state", "--noheader")
    assert out.split("\n\n")[0].splitlines()[0].split() == [f"{first}_0", str(first), "running"]
    assert len([line for line in out.splitlines() if line.startswith(f"{first}_")]) == 6
    code, out, _ = herd("show", f"{first}_4")
    assert re.search(rf"^array +task 4 of array {first} \(6 tasks, at most 2 at once\)$", out, re.M)
    code, out, _ = herd("cancel", str(first))
    assert code == 0
    assert f"Cancelled jobs {first + 2}, {first + 3}, {first + 4}, {first + 5}." in out
    assert f"Stopping jobs {first}, {first + 1}" in out
    wait_all(server, range(first, first + 6), "cancelled")


@pytest.mark.tmux
def test_array_tasks_see_their_ids_and_logs_take_task_references(herd, server):
    code, out, _ = herd("submit", "-a", "0-2", "--", "echo task $HERD_ARRAY_TASK_ID of $HERD_ARRAY_JOB_ID "
                        "count $HERD_ARRAY_TASK_COUNT")
    first = submitted(out)
    wait_all(server, range(first, first + 3), "completed")
    code, out, _ = herd("logs", f"{first}_2")
    assert (code, out) == (0, f"task 2 of {first} count 3\n")
    code, out, _ = herd("jobs", "--array", str(first), "--format", "id,state", "-h")
    assert out.split() == [f"{first}_2", "completed", f"{first}_1", "completed", f"{first}_0", "completed"]


@pytest.mark.tmux
def test_cancel_many_by_id_and_by_filters(herd, server):
    blocker = server.submit(command="sleep 30", gpu_count=4, priority=10)["job_id"]
    server.wait_for(blocker, "running")
    ids = [submitted(herd("submit", "-g", "4", "-p", "1", "-n", "many", "--", "sleep 30")[1]) for _ in range(4)]
    try:
        code, out, _ = herd("cancel", str(ids[0]), str(ids[1]))
        assert (code, out) == (0, f"Cancelled jobs {ids[0]}, {ids[1]}.\n")
        code, out, err = herd("cancel", "--name", "many", "--state", "PD")
        assert (code, out) == (0, f"Cancelled jobs {ids[2]}, {ids[3]}.\n")
        code, out, err = herd("cancel", str(ids[0]))
        assert code == 1 and f"job {ids[0]} is cancelled; there is nothing to cancel" in err
        code, out, _ = herd("cancel", "--name", "many")
        assert (code, out) == (0, "No job matched; nothing was cancelled.\n")
    finally:
        herd("cancel", str(blocker))
    wait_all(server, [*ids, blocker], "cancelled")


@pytest.mark.tmux
def test_the_job_gets_the_submitters_environment(herd, server, monkeypatch, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\necho venv python\n")
    python.chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    monkeypatch.setenv("WANDB_PROJECT", "sweep-7")
    monkeypatch.setenv("HERD_SECRET", "never-sent")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    script = "command -v python; echo $VIRTUAL_ENV $WANDB_PROJECT secret=${HERD_SECRET:-none} cuda=$CUDA_VISIBLE_DEVICES job=$HERD_JOB_ID"
    code, out, err = herd("submit", "--", script)
    assert code == 0, err
    job_id = submitted(out)
    server.wait_for(job_id, "completed")
    log = herd("logs", str(job_id))[1].splitlines()
    assert log[0] == str(python)
    assert re.fullmatch(rf"{venv} sweep-7 secret=none cuda=\d job={job_id}", log[1])
    assert "WANDB_PROJECT" in server.job(job_id)["env"] and "HERD_SECRET" not in server.job(job_id)["env"]
    none = submitted(herd("submit", "--export", "NONE", "-e", "ONLY=1", "--", "echo ${WANDB_PROJECT:-unset} $ONLY")[1])
    server.wait_for(none, "completed")
    assert herd("logs", str(none))[1] == "unset 1\n"


@pytest.mark.tmux
def test_a_time_limit_end_is_timeout_and_jobs_show_run_time_and_gpu_hours(herd, server):
    code, out, _ = herd("submit", "-g", "2", "-t", "0:02", "-n", "slow", "--", "sleep 60")
    job_id = submitted(out)
    job = server.wait_for(job_id, "failed", timeout_s=30)
    assert job["end_reason"] == "timeout"
    code, out, _ = herd("jobs", "--state", "timeout", "--format", "id,state,exit,elapsed,gpuh", "--noheader")
    row = next(line.split() for line in out.splitlines() if line.split()[0] == str(job_id))
    assert row[:3] == [str(job_id), "timeout", "143"] and re.fullmatch(r"\d+s", row[3])
    assert re.fullmatch(r"\d+\.\d\d", row[4])
    code, out, _ = herd("jobs", "--name", "slow")
    assert out.splitlines()[0].split() == ["ID", "NAME", "USER", "GPUS", "STATE", "EXIT", "SUBMITTED", "ELAPSED",
                                           "GPU-H", "COMMAND"]
    code, out, _ = herd("show", str(job_id))
    assert re.search(r"^status +failed \(timeout: stopped at its time limit\)$", out, re.M)
    assert re.search(r"^ran +\d+s, \d+\.\d\d GPU-hours$", out, re.M)


@pytest.mark.tmux
def test_report_per_user_as_a_table_csv_and_json(herd, server):
    job_id = submitted(herd("submit", "-g", "2", "--", "sleep 0.5")[1])
    server.wait_for(job_id, "completed")
    code, out, _ = herd("report", "--since", "1h")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["USER", "JOBS", "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "RUNNING", "WAITING",
                                "GPU-HOURS", "MEAN", "WAIT", "GPU", "UTIL", "PEAK", "MEM"]
    assert any(line.split()[0] == "total" for line in lines)
    code, out, _ = herd("report", "--since", "1h", "--by", "node", "--csv")
    assert out.splitlines()[0] == "node,jobs,completed,failed,timeout,cancelled,running,waiting,gpu_hours,mean_wait,gpu_util,peak_mem"
    code, out, _ = herd("report", "--json")
    assert json.loads(out)["by"] == "user"


@pytest.mark.tmux
def test_logs_say_when_they_show_a_part_and_all_pages_through(herd, server):
    job_id = submitted(herd("submit", "--", "for i in $(seq 1 30000); do printf 'line %05d %s\\n' $i "
                            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done")[1])
    server.wait_for(job_id, "completed")
    size = Path(server.job(job_id)["log_path"]).stat().st_size
    assert size > 1 << 20
    code, out, err = herd("logs", str(job_id))
    assert out.startswith("line ") and out.endswith("line 30000 " + "x" * 36 + "\n")
    assert err.strip() == (f"herd: that was the last {len(out.encode()) / 1024 / 1024:.1f} MiB of "
                           f"{size / 1024 / 1024:.1f} MiB of job {job_id}'s log; --all for everything")
    code, out, err = herd("logs", str(job_id), "--all")
    assert len(out.encode()) == size and out.startswith("line 00001 ") and err == ""


@pytest.mark.tmux
def test_queue_for_me_and_a_command_of_many_lines(herd, server):
    other = server.submit(command="sleep 30", gpu_count=4, priority=9)["job_id"]  # a label: user tester
    server.wait_for(other, "running")
    mine = submitted(herd("submit", "-g", "4", "-p", "1", "--", "echo one\necho two")[1])
    try:
        code, out, _ = herd("queue", "--me", "--format", "id,user,command")
        ids = [line.split()[0] for line in out.splitlines()[1:] if line[:1].isdigit()]
        assert str(mine) in ids and str(other) not in ids
        row = next(line for line in out.splitlines() if line.startswith(f"{mine} "))
        assert row.endswith("echo one↵echo two")
        code, out, _ = herd("show", str(mine))
        assert re.search(r"^command +echo one\n +echo two$", out, re.M)
    finally:
        herd("cancel", str(mine), str(other))


@pytest.mark.tmux
def test_queue_watch_shows_it_again_until_ctrl_c(herd, monkeypatch):
    shown = []

    def sleep(seconds):
        shown.append(seconds)
        if len(shown) % 2 == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr("agent.cli.listing.time.sleep", sleep)
    monkeypatch.setattr("agent.cli.listing.click.clear", lambda: None)
    code, out, _ = herd("queue", "--watch", "0.5", "--format", "id,state")
    assert code == 0 and shown == [0.5, 0.5]
    assert out.count("herd queue, every 0.5 s (Ctrl-C to stop)") == 2
    code, out, _ = herd("queue", "-i")  # the default interval
    assert code == 0 and "every 2 s" in out and shown[2:] == [2.0, 2.0]
