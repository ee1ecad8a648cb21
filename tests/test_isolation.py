"""Isolation of jobs from the server and from each other.

With ``TmuxExecutor(run_as_owner=True)`` (a shared server, running as root) a job runs as its owner: a
real second Unix user is made for these tests. Its job sees its own uid, groups and home; it cannot
write the files the server trusts (another job's exit code, its own), cannot list them, cannot read the
server's environment, and cannot swap its log for a link.

Whoever runs a job, the server reads a log only if it is still the file it made: a job that replaces
its log with a symbolic link (or a hard link, a FIFO, another file) to a root-only file gets
``UnsafeLog`` from ``read_log``, never the target's contents.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import pytest

from tools.executor import JobExit, StartError
from tools.logs import UnsafeLog, read_log
from tools.models import Allocation, Job
from tools.tmux_executor import TmuxExecutor

from tests.helpers import tmux_executors, wait_until

pytestmark = pytest.mark.tmux

ALLOC = Allocation(node="local", gpus=(0,))
ROOT = os.geteuid() == 0


def job(id: int, command: str, user: str = "root", **kw) -> Job:
    return Job(id=id, user=user, command=command, gpu_count=1, submit_time=0.0, **kw)


def wait_exit(ex: TmuxExecutor, job_id: int, timeout_s: float = 10.0) -> JobExit:
    end = wait_until(lambda: next((e for e in ex.poll(time.time()) if e.job_id == job_id), None), timeout_s, 0.05,
                     what=f"job {job_id} to end")
    ex.forget(job_id)
    return end


@pytest.fixture
def workdir():
    """A work directory that other users may enter (pytest's own tmp_path is root's, 0700), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="herd-isolation-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_executor(workdir: Path):
    with tmux_executors(workdir / "work") as make:
        yield make


@pytest.fixture
def other_user():
    """A real Unix user (and a supplementary group of theirs) made for the test and removed after it."""
    if not ROOT:
        pytest.skip("running jobs as their owners needs root (CI runs as root)")
    if not (shutil.which("useradd") and shutil.which("setpriv")):
        pytest.skip("needs useradd and setpriv")
    name = f"herdtest-{uuid4().hex[:8]}"
    group = f"{name}-g"
    subprocess.run(["groupadd", "--system", group], check=True, capture_output=True)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/bash", "-G", group, name],
                   check=True, capture_output=True)
    uid = pwd.getpwnam(name).pw_uid
    try:
        yield pwd.getpwnam(name), group
    finally:
        # Its jobs are over by now (each test waits for them and kills its tmux server); end any left.
        left = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _uid_of(e.path) == uid]
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if left:
            time.sleep(0.1)
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def _uid_of(proc: str) -> int | None:
    try:
        return os.stat(proc).st_uid
    except OSError:
        return None


# -- jobs as their owners ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_job_runs_as_its_owner_and_cannot_touch_what_the_server_trusts(make_executor, other_user, workdir,
                                                                          monkeypatch):
    user, group = other_user
    monkeypatch.setenv("HERD_SERVER_SECRET", "s3cret-of-the-server")
    ex = make_executor(run_as_owner=True)
    jobs = ex.workdir / "jobs"

    # Job 1, the victim, ends with 7 after a moment; job 2 tries everything against it while it runs.
    ex.start(job(1, "sleep 1; exit 7", user=user.pw_name, cwd="/tmp"), ALLOC, time.time())
    attack = "; ".join([
        "id -u; id -un; id -G",
        "echo HOME=$HOME USER=$USER LOGNAME=$LOGNAME",
        f"echo 0 > {jobs}/1/exit_code && echo WROTE-OTHER",
        f"echo 0 > {jobs}/2/exit_code && echo WROTE-OWN",
        f"rm -f {jobs}/1/pgid && echo REMOVED-PGID",
        f"mkdir {jobs}/99 && echo MADE-DIR",
        f"ls {jobs} && echo LISTED",
        f"cat {jobs}/1/env && echo READ-ENV",
        f"ln -sf /etc/shadow {ex.log_path(2)} && echo SWAPPED-LOG",
        f"cat /proc/{os.getpid()}/environ && echo READ-SERVER-ENV",
        "pwd",
        "exit 5",
    ])
    log = Path(ex.start(job(2, attack, user=user.pw_name), ALLOC, time.time()))
    assert wait_exit(ex, 2).exit_code == 5
    assert wait_exit(ex, 1).exit_code == 7  # what job 1 did, not what job 2 wrote

    text = read_log(log).text  # still the log the server made
    lines = text.splitlines()
    assert lines[0] == str(user.pw_uid) and lines[1] == user.pw_name
    gid_of_group = subprocess.run(["getent", "group", group], capture_output=True, text=True).stdout.split(":")[2]
    assert gid_of_group in lines[2].split() and str(user.pw_gid) in lines[2].split()  # supplementary groups too
    assert lines[3] == f"HOME={user.pw_dir} USER={user.pw_name} LOGNAME={user.pw_name}"
    for done in ("WROTE-OTHER", "WROTE-OWN", "REMOVED-PGID", "MADE-DIR", "LISTED", "READ-ENV", "SWAPPED-LOG",
                 "READ-SERVER-ENV"):
        assert done not in text, f"the job could: {done}\n{text}"
    assert "s3cret-of-the-server" not in text
    assert "Permission denied" in text
    assert lines[-1] == "/"  # its home does not exist: it starts in /

    st = os.stat(log)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o600)  # theirs to append to, nobody else's
    for d in (jobs, jobs / "2", ex.log_path(2).parent):
        st = os.stat(d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711), d
    for name in ("exit_code", "pgid", "env", "wrapper.sh", "wrapper.pid"):
        assert os.stat(jobs / "2" / name).st_uid == 0, name


def test_a_job_of_a_user_unknown_here_does_not_start(make_executor, other_user):
    ex = make_executor(run_as_owner=True)
    with pytest.raises(StartError, match="its owner 'nobody-here-x' is not a user on this node"):
        ex.start(job(1, "true", user="nobody-here-x"), ALLOC, time.time())


def test_run_as_owner_is_off_unless_asked(make_executor):
    ex = make_executor()
    assert ex.run_as_owner is False
    log = ex.start(job(1, "id -u", user="someone-not-here"), ALLOC, time.time())  # runs as the server's user
    assert wait_exit(ex, 1).exit_code == 0
    assert Path(log).read_text().strip() == str(os.geteuid())


# -- logs the server will not read ------------------------------------------------------------------
SWAPS = {
    "symlink": "ln -sf {secret} {log}",
    "hardlink": "ln -f {secret} {log}",
    "other-file": "rm -f {log}; echo planted > {log}",
    "fifo": "rm -f {log}; mkfifo {log}",
}


@pytest.mark.parametrize("swap", SWAPS, ids=list(SWAPS))
def test_a_log_replaced_by_the_job_is_not_read(make_executor, workdir, swap):
    secret = workdir / "root-only"
    secret.write_text("TOPSECRET\n")
    secret.chmod(0o600)
    ex = make_executor()  # the job runs as the server's user, so it can reach its log's directory
    log = ex.log_path(1)
    ex.start(job(1, "echo hello; " + SWAPS[swap].format(secret=secret, log=log)), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0

    with pytest.raises(UnsafeLog, match="it is not read"):
        read_log(log)
    with pytest.raises(UnsafeLog):
        read_log(log, tail=5)

    # The next attempt gets a fresh log; what the link points to is left alone.
    ex.start(job(1, "echo attempt 2"), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0
    assert read_log(log).text == "attempt 2\n"
    assert secret.read_text() == "TOPSECRET\n"


def test_a_log_made_by_the_server_is_read_and_survives_a_restart(make_executor):
    a = make_executor()
    log = a.start(job(1, "echo one"), ALLOC, time.time())
    assert wait_exit(a, 1).exit_code == 0
    b = make_executor()
    b.start(job(1, "echo two"), ALLOC, time.time())  # a new executor (a restart) keeps the log
    assert wait_exit(b, 1).exit_code == 0
    assert read_log(Path(log)).text == "one\ntwo\n"


@pytest.mark.slow
def test_a_jobs_environment_reaches_no_process_that_runs_as_root(make_executor, other_user, workdir):
    """A job's environment is its owner's to choose, LD_PRELOAD included (``herd submit`` sends the whole
    environment of the shell): it must not be in force while ``setpriv`` still runs as root."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the preloaded library")
    user, _ = other_user
    seen = workdir / "seen"
    seen.mkdir(mode=0o777)
    seen.chmod(0o777)
    source = workdir / "spy.c"
    source.write_text(f"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void spy(void) {{
    char path[256];
    snprintf(path, sizeof path, "{seen}/uid-%d", (int) geteuid());
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}}
""")
    library = workdir / "spy.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, capture_output=True)
    library.chmod(0o755)
    ex = make_executor(run_as_owner=True)
    ex.start(job(1, "true", user=user.pw_name, cwd="/tmp", env={"LD_PRELOAD": str(library)}), ALLOC, time.time())
    assert wait_exit(ex, 1).exit_code == 0
    loaded_as = sorted(p.name for p in seen.iterdir())
    assert loaded_as == [f"uid-{user.pw_uid}"]  # the owner's processes loaded it; no root process did
