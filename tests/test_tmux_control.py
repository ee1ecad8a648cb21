"""The tmux control client (``tmux -C``) under the executor: its answers, notifications, and what the
executor does when the client or the server goes away, or when control mode cannot be had."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tools.tmux_control import ControlClient, quote

from tests.helpers import tmux_executors, wait_until
from tests.test_tmux_executor import ALLOC, job, pid_alive, wait_exit, wait_file

# A stand-in for `tmux -C`: answers each command line with a block of its own (flags 1), and writes
# notifications and a block of another client's (flags 0) between them, as a real server may.
FAKE_TMUX = r'''
import sys
print("%begin 1 1 0", flush=True)   # the attach's own block: not an answer to a command
print("%end 1 1 0", flush=True)
n = 10
for line in sys.stdin:
    n += 1
    print("%window-close @7", flush=True)
    print("%sessions-changed", flush=True)
    words = line.rstrip("\n")
    if words.startswith("'fail'"):
        print(f"%begin 2 {n} 1\nno such thing\n%error 2 {n} 1", flush=True)
    elif words.startswith("'hang'"):
        continue
    elif words == "'display-message' '-p' 'ok'":  # how the client checks that it is answered
        print(f"%begin 2 {n} 1\nok\n%end 2 {n} 1", flush=True)
    else:
        print(f"%begin 2 {n} 1\n{words}\n%end 2 {n} 1", flush=True)
'''


@pytest.fixture
def fake_client(tmp_path: Path):
    script = tmp_path / "fake_tmux.py"
    script.write_text(FAKE_TMUX)
    closed: list[float] = []
    client = ControlClient([sys.executable, str(script)], dict(os.environ), "herd", lambda: closed.append(time.time()))
    assert client.open(5.0)
    yield client, closed
    client.close()


def test_answers_are_matched_to_commands_past_notifications_and_other_clients_blocks(fake_client):
    client, closed = fake_client
    answer = client.run(["display-message", "-p", "it's $HOME; #{x} ~"], 5.0)
    assert answer.returncode == 0
    # The line as tmux read it: each word single-quoted, a quote inside closed, escaped and reopened.
    assert answer.stdout.splitlines()[0] == "'display-message' '-p' 'it'\\''s $HOME; #{x} ~'"
    failed = client.run(["fail"], 5.0)
    assert (failed.returncode, failed.stderr.strip()) == (1, "no such thing")
    assert closed, "a %window-close notification wakes the executor"


def test_an_argument_that_cannot_go_on_one_line_is_not_sent(fake_client):
    client, _ = fake_client
    assert client.run(["display-message", "two\nlines"], 5.0) is None
    assert client.run(["display-message", "ok"], 5.0).returncode == 0  # the client is still in step


def test_an_unanswered_command_times_out_and_ends_the_client(fake_client):
    client, _ = fake_client
    answer = client.run(["hang"], 0.3)
    assert answer.returncode == 124 and not client.alive
    assert client.run(["display-message", "ok"], 1.0) is None  # closed: the caller forks instead


def test_a_client_that_dies_answers_what_is_pending_as_lost(fake_client):
    client, _ = fake_client
    os.kill(client._proc.pid, signal.SIGKILL)
    wait_until(lambda: not client.alive, 5, what="the client's end to be seen")
    assert client.run(["display-message", "ok"], 1.0) is None


def test_quote_keeps_every_character_literal():
    assert quote("a b") == "'a b'"
    assert quote("it's") == "'it'\\''s'"


# -- under the executor, against a real tmux ----------------------------------------------------------


@pytest.fixture
def make_executor(tmp_path: Path):
    with tmux_executors(tmp_path / "work") as make:
        yield make


@pytest.mark.tmux
def test_jobs_start_through_one_control_client_and_their_wrapper_forks_no_tmux(make_executor):
    ex = make_executor()
    ex.start(job(1), ALLOC, time.time())
    client = ex._control._proc
    assert ex._control.alive and client is not None
    ex.start(job(2), ALLOC, time.time())
    assert ex._control._proc is client, "the same client serves every command"
    assert "wait-for" not in (ex.job_dir(2) / "wrapper.sh").read_text()
    began = time.monotonic()
    ex.wait(10.0)  # the first window to close wakes it, not the timeout
    assert time.monotonic() - began < 5.0
    assert {wait_exit(ex, 1).exit_code, wait_exit(ex, 2).exit_code} == {0}


@pytest.mark.tmux
def test_a_killed_control_client_is_opened_again(make_executor):
    ex = make_executor()
    ex.start(job(1, "sleep 30"), ALLOC, time.time())
    old = ex._control._proc
    os.kill(old.pid, signal.SIGKILL)
    wait_until(lambda: not ex._control.alive, 5, what="the client's end to be seen")
    ex.start(job(2), ALLOC, time.time())
    assert ex._control.alive and ex._control._proc is not old
    assert wait_exit(ex, 2).exit_code == 0
    assert ex.window(1) is not None, "the running job kept its window"


@pytest.mark.tmux
def test_after_the_server_is_killed_a_new_server_and_client_run_the_next_job(make_executor):
    ex = make_executor(lost_grace_s=0.5)
    ex.start(job(1, "sleep 30"), ALLOC, time.time())
    pgid = int(wait_file(ex.job_dir(1) / "pgid").split()[0])
    ex._tmux("kill-server")
    end = wait_exit(ex, 1)
    assert end.lost and not pid_alive(pgid)
    ex.forget(1)
    ex.start(job(2), ALLOC, time.time())
    assert ex._control.alive
    assert wait_exit(ex, 2).exit_code == 0


@pytest.mark.tmux
def test_without_control_mode_the_wrapper_wakes_the_service_itself(make_executor):
    ex = make_executor(control_mode=False)
    ex.start(job(1), ALLOC, time.time())
    assert not ex._control.alive
    assert "wait-for" in (ex.job_dir(1) / "wrapper.sh").read_text()
    began = time.monotonic()
    wait_until(lambda: next((e for e in ex.poll(time.time()) if e.job_id == 1), None), 10, 0.01,
               what="job 1 to end", pause=ex.wait)
    assert time.monotonic() - began < 5.0


@pytest.mark.tmux
def test_control_mode_that_cannot_be_opened_falls_back_to_a_process_per_command_and_says_so_once(
        make_executor, monkeypatch, caplog):
    monkeypatch.setattr(ControlClient, "open", lambda self, timeout_s: False)
    ex = make_executor()
    with caplog.at_level(logging.WARNING, logger="tools.tmux_executor"):
        for job_id in (1, 2, 3):
            ex.start(job(job_id), ALLOC, time.time())
            ex._control_retry_at = float("-inf")  # try (and fail) again at every command
    warnings = [r for r in caplog.records if "control client" in r.getMessage()]
    assert len(warnings) == 1
    assert [wait_exit(ex, j).exit_code for j in (1, 2, 3)] == [0, 0, 0]


@pytest.mark.tmux
def test_wait_returns_when_a_stops_sigkill_is_due_so_the_kill_is_not_late(make_executor):
    ex = make_executor()
    ex.start(job(1, "trap '' TERM; echo ready; sleep 30"), ALLOC, time.time())
    wait_until(lambda: "ready" in Path(ex.log_path(1)).read_text(), 10, 0.02, what="the trap to be set")
    ex.stop(1, time.time(), grace_s=0.5)
    asked = time.monotonic()
    end = None
    while end is None and time.monotonic() - asked < 10:
        ex.wait(5.0)  # returns at the SIGKILL's deadline, then at the window's close
        end = next((e for e in ex.poll(time.time()) if e.job_id == 1), None)
    assert end is not None and end.exit_code == 137
    assert time.monotonic() - asked < 3.0, "the kill came at its deadline, not at the wait's timeout"

