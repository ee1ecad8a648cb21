"""TmuxExecutor against a real tmux: each test on its own private server, killed afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from uuid import uuid4

import pytest

from tools.executor import JobExit, StartError
from tools.models import Allocation, Job
from tools.tmux_executor import TmuxExecutor, _plain_words

from tests.helpers import tmux_executors, wait_until

pytestmark = pytest.mark.tmux

ALLOC = Allocation(node="local", gpus=(1, 3))
BASH_ADDS = {"PWD", "SHLVL", "_", "OLDPWD"}  # variables bash itself sets in every shell


def job(id: int = 1, command: str = "true", **kw) -> Job:
    return Job(id=id, user="u", command=command, gpu_count=2, submit_time=0.0, **kw)


@pytest.fixture
def socket_name() -> str:
    return f"herd-test-{uuid4().hex[:8]}"


@pytest.fixture
def make_executor(tmp_path: Path, socket_name: str):
    """Build executors on this test's socket and workdir; the server is killed at the end."""
    with tmux_executors(tmp_path / "work", socket_name) as make:
        yield make


@pytest.fixture
def ex(make_executor) -> TmuxExecutor:
    return make_executor()


def wait_exit(ex: TmuxExecutor, job_id: int, timeout_s: float = 10.0) -> JobExit:
    return wait_until(lambda: next((e for e in ex.poll(time.time()) if e.job_id == job_id), None), timeout_s, 0.05,
                      what=f"job {job_id} to end")


def wait_file(path: Path, timeout_s: float = 10.0) -> str:
    return wait_until(lambda: path.exists() and path.read_text().endswith("\n") and path.read_text(), timeout_s, 0.02,
                      what=f"{path} to be written")


def pid_alive(pid: int) -> bool:
    """A zombie counts as dead: where PID 1 does not reap orphans, killed ones stay zombies."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_job_sees_only_its_own_environment(make_executor, monkeypatch):
    monkeypatch.setenv("HERD_LEAK_SENTINEL", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    ex = make_executor()
    log = ex.start(job(command="env", env={"FOO": "bar baz"}), ALLOC, time.time())

    assert wait_exit(ex, 1).exit_code == 0
    env = dict(line.split("=", 1) for line in Path(log).read_text().splitlines())
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["HERD_JOB_ID"] == "1"
    assert env["HERD_NODE"] == ALLOC.node
    assert env["FOO"] == "bar baz"
    assert "HERD_LEAK_SENTINEL" not in env
    # USER, LOGNAME and HOME say who runs it even where the service was started without them (systemd).
    want_keys = {k for k in ("PATH", "SHELL", "LANG") if k in os.environ} | {"HOME", "USER", "LOGNAME"}
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # so CUDA numbers GPUs as NVML does
    assert set(env) - BASH_ADDS == want_keys | {"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HERD_JOB_ID", "HERD_NODE",
                                                "FOO"}


def _env_of(log: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in Path(log).read_text().splitlines())


def test_a_job_gets_its_variables_as_given_whatever_bash_makes_of_their_names(ex):
    # Names bash gives a meaning of its own (read-only, dynamic, its locale: the wrapper runs in the C
    # one): the job's program gets them verbatim.
    given = {"UID": "12345", "RANDOM": "7", "SHLVL": "9", "BASH_ENV": "/nonexistent", "IFS": "x", "OLDPWD": "/old",
             "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    log = ex.start(job(command="env", env=given), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0
    assert {k: _env_of(log).get(k) for k in given} == given


@pytest.mark.parametrize("command", ["env", "env; true"])  # a plain command, and one bash runs
def test_a_jobs_variable_named_like_one_of_the_wrappers_changes_nothing(ex, command):
    given = {name: "/elsewhere" for name in ("job_dir", "log", "inherited", "job_env", "names", "pgid", "PWD")}
    log = ex.start(job(command=command, env=given, cwd="/tmp"), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0
    env = _env_of(log)
    assert {k: env[k] for k in given if k != "PWD"} == {k: v for k, v in given.items() if k != "PWD"}
    assert env["PWD"] == "/tmp" and env["HERD_JOB_ID"] == "1"


def test_nothing_of_the_tmux_servers_environment_reaches_a_job(ex):
    ex.start(job(command="true"), ALLOC, time.time())  # the server and its session
    wait_exit(ex, 1)
    ex.forget(1)
    # Set by hand on the server: a variable, one whose name is no shell identifier, an exported function.
    for name, value in (("HERD_LEAK_SENTINEL", "1"), ("not-an-identifier", "1"), ("BASH_FUNC_env%%", "() { echo hijacked; }")):
        assert ex._tmux("set-environment", "-g", name, value).returncode == 0
    for job_id, command in ((2, "env"), (3, "env; true")):
        log = ex.start(job(id=job_id, command=command), ALLOC, time.time())
        assert wait_exit(ex, job_id).exit_code == 0
        env = _env_of(log)
        assert not {"HERD_LEAK_SENTINEL", "not-an-identifier", "BASH_FUNC_env%%", "TMUX", "TMUX_PANE", "TERM"} & set(env), env
        assert env["HERD_JOB_ID"] == str(job_id)


def test_stdout_and_stderr_land_in_the_log(ex):
    log = ex.start(job(command="echo to-out; echo to-err >&2"), ALLOC, time.time())
    wait_exit(ex, 1)
    assert Path(log).read_text() == "to-out\nto-err\n"
    assert log == str(ex.log_path(1))


@pytest.mark.parametrize("code", [0, 3], ids=["success", "failure"])
def test_exit_code_is_reported(ex, code):
    ex.start(job(command=f"exit {code}"), ALLOC, time.time())
    e = wait_exit(ex, 1)
    assert e.exit_code == code
    assert ex.poll(time.time()) == [e]  # reported until forgotten
    ex.forget(1)
    assert ex.poll(time.time()) == []


def test_log_is_appended_across_attempts(ex):
    ex.start(job(command="echo attempt"), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0
    ex.forget(1)
    ex.start(job(command="echo attempt; exit 2"), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 2
    assert ex.log_path(1).read_text() == "attempt\nattempt\n"


def test_a_running_job_is_not_started_twice(ex):
    ex.start(job(command="sleep 30"), ALLOC, time.time())
    with pytest.raises(StartError, match="already"):
        ex.start(job(command="sleep 30"), ALLOC, time.time())
    ex.stop(1, time.time(), grace_s=1.0)
    assert wait_exit(ex, 1).exit_code == 143


def test_stop_kills_a_child_that_ignores_sigterm(ex, tmp_path):
    child_pid = tmp_path / "child.pid"
    command = f"(trap '' TERM; echo $BASHPID > {child_pid}; exec sleep 60) & sleep 60"
    ex.start(job(command=command), ALLOC, time.time())
    pid = int(wait_file(child_pid))

    t0 = time.time()
    ex.stop(1, t0, grace_s=0.5)
    e = wait_exit(ex, 1)
    took = time.time() - t0

    assert e.exit_code in (137, 143)
    assert took < 3.0
    assert not pid_alive(pid)
    ex.stop(1, time.time(), grace_s=0.5)  # stopping an ended job is a no-op


def test_stop_sends_sigterm_first(ex):
    ex.start(job(command="sleep 30"), ALLOC, time.time())
    time.sleep(0.2)
    ex.stop(1, time.time(), grace_s=5.0)
    assert wait_exit(ex, 1, timeout_s=3.0).exit_code == 143


@pytest.mark.slow
def test_a_running_job_survives_a_restart_of_the_executor(make_executor, tmp_path):
    a = make_executor()
    a.start(job(1, command="sleep 1.5; exit 4"), ALLOC, time.time())
    a.start(job(2, command=f"echo done > {tmp_path / 'ended'}; exit 5"), ALLOC, time.time())
    a.close()
    wait_file(tmp_path / "ended")  # job 2 ends while no executor watches
    time.sleep(0.3)  # let its wrapper record the exit code

    b = make_executor()
    recovered = b.recover([1, 2, 99], time.time())
    assert {(e.job_id, e.exit_code) for e in recovered} == {(2, 5), (99, None)}
    assert wait_exit(b, 1).exit_code == 4


def test_an_adopted_job_can_be_stopped(make_executor):
    a = make_executor()
    a.start(job(command="sleep 30"), ALLOC, time.time())
    time.sleep(0.2)
    a.close()
    b = make_executor()
    assert b.recover([1], time.time()) == []
    b.stop(1, time.time(), grace_s=1.0)
    assert wait_exit(b, 1).exit_code == 143


def test_command_runs_exactly_as_written(ex):
    command = """echo "héllo 'wörld'"; echo $(echo sub) ; printf '%s\\n' "a;b" 日本"""
    log = ex.start(job(command=command), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0
    assert Path(log).read_text(encoding="utf-8") == "héllo 'wörld'\nsub\na;b\n日本\n"


def test_missing_cwd_fails_with_a_clear_message(ex, tmp_path):
    missing = tmp_path / "no-such-dir"
    log = ex.start(job(command="echo never", cwd=str(missing)), ALLOC, time.time())
    e = wait_exit(ex, 1)
    assert e.exit_code not in (None, 0)
    text = Path(log).read_text()
    assert str(missing) in text and "working directory" in text
    assert "never" not in text


def test_a_killed_window_is_reported_as_lost(ex):
    ex.start(job(command="sleep 30"), ALLOC, time.time())
    time.sleep(0.2)
    ex._tmux("kill-window", "-t", f"={ex.session_name}:={ex.window_name(1)}")
    e = wait_exit(ex, 1, timeout_s=5.0)
    # The job dies of the hangup (129) or of the SIGTERM the wrapper passes on (143), which the wrapper
    # marks lost; or the window is found gone first (None). Either way it is the infrastructure's
    # failure, not the job's.
    assert e.exit_code in (None, 129, 143) and e.lost


def test_a_job_whose_wrapper_died_is_ended_only_once_its_processes_are_gone(make_executor):
    ex = make_executor(window_check_s=0.05, lost_grace_s=0.5)
    ex.start(job(command="trap '' TERM; sleep 30"), ALLOC, time.time())
    pgid = int(wait_file(ex.job_dir(1) / "pgid").split()[0])
    wrapper = int((ex.job_dir(1) / "wrapper.pid").read_text().split()[0])
    os.kill(wrapper, signal.SIGKILL)  # the window goes with it; the job, in its own group, lives on
    t0 = time.time()
    wait_until(lambda: not pid_alive(wrapper), 2.0, what="the wrapper to die")
    while time.time() - t0 < 0.3:
        assert ex.poll(time.time()) == []  # its window is gone, but it runs: not ended
        assert pid_alive(pgid)
        time.sleep(0.05)
    e = wait_exit(ex, 1, timeout_s=5.0)  # SIGKILL after the lost grace
    assert (e.exit_code, e.lost) == (None, True) and not pid_alive(pgid)
    assert time.time() - t0 >= 0.5
    assert ex.poll(time.time()) == [e]  # the same end, again, until it is forgotten
    ex.forget(1)
    assert ex.poll(time.time()) == []


@pytest.mark.slow
def test_end_is_noticed_within_a_second(ex, tmp_path):
    latencies = []
    for i in range(3):
        stamp = tmp_path / f"end-{i}"
        ex.start(job(i, command=f"sleep 0.3; date +%s.%N > {stamp}"), ALLOC, time.time())
        exits = wait_until(lambda: ex.poll(time.time()), 10.0, 1.0, what=f"job {i} to end", pause=ex.wait)
        seen = time.time()
        assert [e.job_id for e in exits] == [i]
        ex.forget(i)
        latencies.append(seen - float(stamp.read_text()))
    print("\nend-detection latency (job end -> poll reports it): "
          + ", ".join(f"{x * 1000:.1f} ms" for x in latencies))
    assert max(latencies) < 1.0


def test_an_attempt_starts_at_once_after_the_last_one_ended(ex):
    for attempt in range(5):  # its window may still be closing when the next attempt starts
        ex.start(job(command=f"echo {attempt}; exit 3"), ALLOC, time.time())
        ends = wait_until(lambda: ex.poll(time.time()), 5, 0.005, what="the end")
        assert [(e.job_id, e.exit_code) for e in ends] == [(1, 3)]
        ex.forget(1)
    assert ex.log_path(1).read_text() == "0\n1\n2\n3\n4\n"


def test_a_start_after_the_tmux_server_died_starts_it_again(ex):
    ex.start(job(1, "true"), Allocation(node="local", gpus=(0,)), now=0.0)
    wait_exit(ex, 1)
    subprocess.run(["tmux", "-L", ex.socket_name, "kill-server"], capture_output=True)
    # Gone for good (a window a dying server still opens dies with it: the job is lost, and requeued).
    wait_until(lambda: not ex._control.alive, 5.0, 0.01, what="the control client to end")
    ex.start(job(2, "echo again"), Allocation(node="local", gpus=(0,)), now=0.0)
    assert wait_exit(ex, 2).exit_code == 0
    assert "again" in ex.log_path(2).read_text()


def test_jobs_started_together_each_run_with_their_own_gpus_and_fail_alone(ex, monkeypatch):
    ex.start(job(1, "sleep 30"), ALLOC, time.time())
    seen = []  # the control client's commands sent and answers read, in order
    send, answer = ex._control.send, ex._control.answer
    monkeypatch.setattr(ex._control, "send", lambda args: seen.append(("send", args[0])) or send(args))
    monkeypatch.setattr(ex._control, "answer", lambda p, t: seen.append(("answer", p.args[0])) or answer(p, t))
    starts = [(job(2, "echo two $CUDA_VISIBLE_DEVICES; exit 2"), Allocation(node="local", gpus=(0,))),
              (job(1, "sleep 30"), ALLOC),  # already running: refused, and the others start all the same
              (job(3, "echo three $CUDA_VISIBLE_DEVICES"), Allocation(node="local", gpus=(2,))),
              (job(4, "true"), Allocation(node="local", gpus=(4,), more=(("other", (0,)),))),  # two nodes
              (job(3, "echo again"), Allocation(node="local", gpus=(5,)))]  # twice in one batch
    two, one, three, four, again = ex.start_many(starts, time.time())
    assert isinstance(again, StartError) and "already being started" in str(again)
    assert isinstance(one, StartError) and "already running" in str(one)
    assert isinstance(four, StartError) and "spans nodes" in str(four)
    assert (two, three) == (str(ex.log_path(2)), str(ex.log_path(3)))
    # Both windows asked for before either answer was read.
    assert seen == [("send", "new-window")] * 2 + [("answer", "new-window")] * 2
    assert (wait_exit(ex, 2).exit_code, wait_exit(ex, 3).exit_code) == (2, 0)
    assert (Path(two).read_text(), Path(three).read_text()) == ("two 0\n", "three 2\n")
    ex.stop(1, time.time(), grace_s=1.0)
    assert wait_exit(ex, 1).exit_code == 143


def test_jobs_started_together_after_the_tmux_server_died_start_it_again(ex):
    ex.start(job(1, "true"), Allocation(node="local", gpus=(0,)), now=0.0)
    wait_exit(ex, 1)
    subprocess.run(["tmux", "-L", ex.socket_name, "kill-server"], capture_output=True)
    # Gone for good (a window a dying server still opens dies with it: the job is lost, and requeued).
    wait_until(lambda: not ex._control.alive, 5.0, 0.01, what="the control client to end")
    logs = ex.start_many([(job(2, "echo again"), Allocation(node="local", gpus=(0,))),
                          (job(3, "echo and again"), Allocation(node="local", gpus=(1,)))], now=0.0)
    assert logs == [str(ex.log_path(2)), str(ex.log_path(3))]
    assert (wait_exit(ex, 2).exit_code, wait_exit(ex, 3).exit_code) == (0, 0)
    assert ex.log_path(3).read_text() == "and again\n"


def test_a_job_knows_who_runs_it_where_the_service_was_started_without_user(make_executor):
    import pwd
    ex = make_executor(base_env={"PATH": os.environ["PATH"]})  # as under systemd: no USER, LOGNAME or HOME
    log = ex.start(job(command="echo $USER $LOGNAME $HOME"), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0
    me = pwd.getpwuid(os.geteuid())
    assert Path(log).read_text() == f"{me.pw_name} {me.pw_name} {me.pw_dir}\n"


# -- a plain command runs without a bash; the pane shows the log once someone watches ------------------
def test_plain_words_only_where_bash_would_do_nothing_else(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("tool", "#!/bin/sh\necho tool\n"), ("no-shebang", "echo hi\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    assert _plain_words("tool --flag=1 a/b.txt\n", env, str(tmp_path)) == ["tool", "--flag=1", "a/b.txt"]
    assert _plain_words("true", env, str(tmp_path)) == ["true"]  # the program does what the builtin does
    assert _plain_words("bin/tool", env, str(tmp_path)) == ["bin/tool"]  # a path, from the job's cwd
    for command in ("exit 3", "cd /tmp", "echo hi", "tool $HOME", "tool 'a b'", "tool | cat", "tool > out",
                    "tool; tool", "tool\ntool", "FOO=1 tool", "tool *", "no-shebang", "missing-program", "bin",
                    "tool # comment", ""):
        assert _plain_words(command, env, str(tmp_path)) is None, command
    assert _plain_words("tool", {}, str(tmp_path)) is None  # no PATH: bash's own default would differ
    assert _plain_words("tool", {"PATH": f"bin:{bin_dir}"}, str(tmp_path)) is None  # searched from the job's cwd


def test_a_plain_command_is_the_job_itself_and_bash_runs_the_rest(ex, tmp_path):
    ex.start(job(command="sleep 30", cwd=str(tmp_path)), ALLOC, time.time())
    pgid = int(wait_file(ex.job_dir(1) / "pgid").split()[0])
    # The group's leader is the wrapper's child until it execs the program; through a bash reading the
    # command, it would stay bash (with sleep its child).
    comm = Path(f"/proc/{pgid}/comm")
    wait_until(lambda: comm.read_text().strip() == "sleep",
               what=lambda: f"the leader to be sleep, not {comm.read_text().strip()}")
    ex.stop(1, time.time(), 5.0)
    assert wait_exit(ex, 1).exit_code == 143
    ex.forget(1)
    log = ex.start(job(id=2, command="printenv PWD", cwd=str(tmp_path)), ALLOC, time.time())
    assert wait_exit(ex, 2).exit_code == 0
    assert Path(log).read_text() == f"{tmp_path}\n"  # as bash would have given it
    ex.start(job(id=3, command="sleep 30; true"), ALLOC, time.time())
    pgid = int(wait_file(ex.job_dir(3) / "pgid").split()[0])
    assert Path(f"/proc/{pgid}/comm").read_text().strip() == "bash"
    ex.stop(3, time.time(), 5.0)
    assert wait_exit(ex, 3).exit_code == 143


def test_the_window_shows_the_log_from_when_someone_asks(ex):
    log = ex.start(job(command="echo hello-from-the-job; sleep 30"), ALLOC, time.time())
    wait_until(lambda: "hello-from-the-job" in Path(log).read_text(), 10, 0.02, what="the job's output")
    wait_file(ex.job_dir(1) / "pgid")

    def pane() -> str:
        return subprocess.run(["tmux", "-L", ex.socket_name, "capture-pane", "-p", "-t", f"={ex.session_name}:=job-1"],
                              capture_output=True, text=True, timeout=10).stdout

    assert "hello-from-the-job" not in pane()  # nobody watched: no tail ran
    assert ex.window(1) is not None
    wait_until(lambda: "hello-from-the-job" in pane(), 10, 0.05, what="the pane to show the log")
    assert ex.window(1) is not None  # asked again: still one view, the job runs on
    ex.stop(1, time.time(), 5.0)
    assert wait_exit(ex, 1).exit_code == 143
