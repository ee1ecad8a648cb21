"""Windows people look into: ctrl-C typed in a batch job's window does not stop it; an interactive job
(``herd run``) runs in the foreground of its window's terminal, where what its owner types reaches it;
``herd attach`` shows a window read-only, or follows the job's output where it cannot; who may."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from uuid import uuid4

import pytest

from agent.cli import main
from tests.cores import make_core
from tests.helpers import herd_command, wait_until
from tests.herd_server import HerdServer
from tools.door.context import Actor, ToolContext
from tools.door.jobs import queue_job
from tools.models import Allocation, Job, JobRequest, JobStatus
from tools.tmux_executor import TmuxExecutor

ALLOC = Allocation(node="local", gpus=(0,))


def job(id: int, command: str, **kw) -> Job:
    return Job(id=id, user="u", command=command, gpu_count=1, submit_time=0.0, **kw)


@pytest.fixture
def executor(tmp_path: Path):
    ex = TmuxExecutor(tmp_path / "work", socket_name=f"herd-test-{uuid4().hex[:8]}")
    yield ex
    ex.close()
    ex.shutdown_server()


def keys(ex: TmuxExecutor, job_id: int, *typed: str) -> None:
    subprocess.run(["tmux", "-L", ex.socket_name, "send-keys", "-t", f"=herd:=job-{job_id}", *typed], check=True)


def prompt(ex: TmuxExecutor, job_id: int) -> None:
    """Wait until the job's window shows a shell's prompt on its last line."""
    def shown() -> bool:
        screen = subprocess.run(["tmux", "-L", ex.socket_name, "capture-pane", "-p", "-t", f"=herd:=job-{job_id}"],
                                capture_output=True, text=True).stdout.rstrip()
        return screen.endswith(("#", "$"))
    wait_until(shown, 10, 0.05, what="a prompt in the window")


def wait_exit(ex: TmuxExecutor, job_id: int, timeout_s: float = 10.0):
    return wait_until(lambda: next((e for e in ex.poll(time.time()) if e.job_id == job_id), None), timeout_s, 0.05,
                      what=f"job {job_id} to end")


# -- the executor ----------------------------------------------------------------------------------
@pytest.mark.tmux
def test_ctrl_c_in_a_batch_jobs_window_does_not_stop_it(executor):
    log = Path(executor.start(job(1, "sleep 1.5; echo done"), ALLOC, time.time()))
    wait_until(lambda: (executor.job_dir(1) / "pgid").exists(), 5, 0.02)
    time.sleep(0.2)
    keys(executor, 1, "C-c")
    end = wait_exit(executor, 1)
    assert (end.exit_code, end.lost) == (0, False) and log.read_text() == "done\n"


@pytest.mark.tmux
def test_an_interactive_job_is_the_terminal_of_its_window(executor):
    executor.start(job(2, "bash --noprofile --norc -i", interactive=True), ALLOC, time.time())
    window = executor.window(2)
    assert window is not None and window[1:] == ("herd", "job-2") and os.path.exists(window[0])
    prompt(executor, 2)  # as a person would, type once it asks
    keys(executor, 2, "echo typed-$((6*7)) $TERM", "Enter")
    keys(executor, 2, "sleep 30", "Enter")
    time.sleep(0.5)
    keys(executor, 2, "C-c")  # reaches the job's own foreground command, not the wrapper
    prompt(executor, 2)
    keys(executor, 2, "exit 7", "Enter")
    end = wait_exit(executor, 2)
    assert (end.exit_code, end.lost) == (7, False)
    log = Path(executor.log_path(2)).read_text()
    assert "typed-42 screen-256color" in log  # the window, copied to the log
    executor.forget(2)
    wait_until(lambda: executor.window(2) is None, 5, 0.05, what="the window to close")


# -- the rules of interactive jobs -----------------------------------------------------------------
def test_an_interactive_job_is_never_retried_and_its_lost_window_ends_it():
    core = make_core(nodes={"n1": 1})
    ctx = ToolContext(core, Actor(user="ana", via="socket"))
    first = queue_job(ctx, JobRequest(command="bash", gpu_count=1, interactive=True, max_retries=3))
    assert first.max_retries == 0
    core.orchestrator.tick()
    running = core.queue.get(first.id)
    ended = core.queue.finish(running, 129, now=1.0, lost=True)
    assert ended.status == JobStatus.FAILED


def test_interactive_jobs_are_refused_where_nobody_could_attach():
    core = make_core(nodes={"n1": 1})
    with pytest.raises(ValueError, match="a terminal session is started with `herd run`"):
        queue_job(ToolContext(core, Actor(user="ana", via="chat")), JobRequest(command="bash", gpu_count=1,
                                                                              interactive=True))
    core.owners_must_exist = True  # a shared server: its tmux is root's
    with pytest.raises(ValueError, match="on a shared server is root's"):
        queue_job(ToolContext(core, Actor(user="root", via="socket")),  # root, but not acting as an administrator
                  JobRequest(command="bash", gpu_count=1, interactive=True))
    with pytest.raises(ValueError, match="an interactive job is one terminal session, not an array"):
        JobRequest(command="bash", gpu_count=1, interactive=True, array="0-3")


# -- herd run and herd attach ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HerdServer(tmp_path_factory.mktemp("interactive") / "herd", "--gpus", "2").start()
    yield srv
    srv.close()


def in_a_terminal(server, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    """``herd ARGS`` in a pseudo-terminal (``script``), as a person runs it; its exit code is herd's."""
    if shutil.which("script") is None:
        pytest.skip("needs script (util-linux) for a pseudo-terminal")
    command = " ".join(map(repr, [*herd_command(), *args]))
    env = {**server.env, "HERD_URL": server.url, "TERM": "xterm"}
    return subprocess.run(["script", "-qec", command, "/dev/null"], env=env, capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.mark.tmux
def test_herd_run_waits_attaches_and_ends_with_the_jobs_exit_code(server):
    done = in_a_terminal(server, "run", "-g", "1", "-t", "10m", "--", "bash -c 'sleep 2; echo hi from the job; exit 3'")
    assert done.returncode == 3, done.stdout
    # (what herd says just before tmux starts may be flushed away by tmux taking the terminal)
    assert "is waiting for GPUs" in done.stdout and "[exited]" in done.stdout  # its window closed: the view ended
    assert re.search(r"herd: job (\d+) failed \(exit code 3\)", done.stdout)


@pytest.mark.tmux
def test_herd_attach_shows_a_window_read_only(server):
    job_id = server.submit(command="sleep 2; echo bye")["job_id"]
    server.wait_for(job_id, "running")
    seen = in_a_terminal(server, "attach", str(job_id))
    assert seen.returncode == 0, seen.stdout
    assert "[exited]" in seen.stdout  # the job's window closed, and with it the viewer's session
    assert server.wait_for(job_id, "completed")["exit_code"] == 0


@pytest.mark.tmux
def test_herd_attach_without_a_terminal_follows_the_output_instead(server, capsys):
    job_id = server.submit(command="echo one; sleep 1; echo two")["job_id"]
    server.wait_for(job_id, "running")
    assert main(["attach", "--url", server.url, str(job_id)]) == 0
    out, err = capsys.readouterr()
    assert out == "one\ntwo\n" and "this is not a terminal; following its output instead" in err
    code = main(["attach", "--url", server.url, str(job_id)])
    assert code == 1 and "it has a window only while it runs" in capsys.readouterr().err
