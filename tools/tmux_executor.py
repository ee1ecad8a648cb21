"""Run jobs as windows of a private tmux server (``tmux -L <socket_name>``).

Why tmux: jobs outlive the service (a restart of gpuherd must not kill a week-long training run), and a
person can ``tmux -L gpuherd attach`` to watch one. tmux itself is only the parent and the display; the
truth about a job lives in files, because tmux's own exit status (``pane_dead_status``) is often empty.

Files, per job (``<workdir>/jobs/<id>/``) and per log (``<workdir>/logs/job-<id>.log``)::

    command      the user's command, verbatim; run with bash as a script, so nothing is re-quoted
    env          the job's whole environment, NUL-separated ``KEY=VALUE`` entries
    wrapper.sh   generated; the window's only process (see below)
    wrapper.pid  the wrapper's pid and start time (``/proc/<pid>/stat`` field 22), written by the server
    wrapper.err  the wrapper's own stderr (diagnostics; keeps the pane clean)
    pgid         the job's process group id and its leader's start time, written once the job has started
    exit_code    the job's exit code, then `` lost`` if the wrapper itself was sent SIGHUP or SIGTERM (its
                 window or the tmux server went away); written by one write ending in a newline once it has
                 ended (a file without that newline is not written yet)

The wrapper protocol, in the order the wrapper does it:

1. ``cd`` to the job's cwd; if that fails, a message goes to the log and exit code 1 is recorded.
2. With job control on (``set -m``) it starts, in the background, a child that un-exports what the
   wrapper inherited, exports the variables in ``env`` and execs ``bash command``, so the job gets its own
   process group and exactly the environment in ``env`` (nothing from tmux or the service); where bash
   cannot export them verbatim, the child execs ``env -i <env file> bash command`` instead; as its owner,
   ``env -i setpriv ... -- env -i <env file> bash command``, so that the job's environment (which may hold
   LD_PRELOAD) reaches no process that runs as root. A plain command (words bash would only split and
   run, the first a program on the job's PATH, not a builtin) is exec'd itself, without a bash in
   between. stdin is /dev/null; stdout and stderr are appended to the
   log. ``$!`` goes to ``pgid``. The pane shows the log (a ``tail``) only from when someone asks to
   watch the job (``window``, which ``herd attach`` calls, sends the wrapper USR1).
3. It waits for the job. The wrapper is not in the job's group, so the SIGTERM/SIGKILL that ``stop`` sends
   to the group does not touch it, and it records 143 / 137. A HUP or TERM sent to the wrapper itself (the
   window is killed) is passed on to the job as SIGTERM and marks the end as ``lost``; ctrl-C typed in the
   window (INT) is not a way to cancel a job and reaches no process of it. An interactive job (``herd run``)
   instead runs in the foreground of the window's terminal (``fg``), with no log shown there: what its
   owner types reaches it, ctrl-C too, and tmux copies the window to the log (``pipe-pane``).
4. Processes the command left behind in its group are stopped (TERM, up to 5 s, KILL) before the job counts
   as ended, so a job never "ends" while a child of it still holds the GPUs.
5. It writes ``exit_code`` and exits; the window closes with it. The executor's control client (see
   below) is told (``%window-close``), which wakes ``wait`` at once. Without one (control mode off, or
   it could not be opened when the job started), the wrapper runs ``tmux wait-for -S <channel>``
   instead, on which a ``tmux wait-for`` client of the executor waits.

tmux is driven through one persistent client in control mode (``tools.tmux_control``), not a ``tmux``
process per command; if that client cannot be opened, through a process per command (said once in
the log). It is opened again after it or the server went away.

A job has ended when its ``exit_code`` file exists. A job whose window is gone without such a file (the
tmux server was killed, the wrapper was SIGKILLed) is *lost*, and its end is reported only once nothing
of it lives: its group gets SIGTERM, then SIGKILL after ``lost_grace_s``, and the end is reported (with
``lost=True``, so the orchestrator requeues it without using a retry) once neither the wrapper nor any
process of the group is left. So a job is never started again while its previous attempt still runs.
Every end is reported on each ``poll`` until the orchestrator ``forget``s it (it has stored it).

Jobs as their owners (``run_as_owner=True``, for a server that runs as root and serves several people):
the wrapper runs as root and only the job's command runs as its owner (``setpriv --reuid --regid
--init-groups``, with the owner's ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL``, in their home directory
(``/`` if they have none) unless the job names a cwd, which is entered as the owner). ``jobs/``, ``logs/`` and each job's directory
are root's, mode 0711: the owner can neither write nor list them, so the files the server trusts (exit
code, pgid, env, wrapper) are out of every job's reach. The command file is the owner's (0400) and
reaches their bash as an open descriptor (``/dev/fd/3``), so no directory above it needs to be open to
them; the log is made by the server before the start (``tools.logs.create_log``), owned by the owner,
0600, and opened for appending by the root wrapper. An owner unknown to this node is a ``StartError``.

Deadlines (the SIGKILL after a stop's grace, the lost-job grace, the window checks) are kept on the
monotonic clock, so a step of the system clock does not move them.

One module, over 400 lines, because the wrapper script, start, stop, poll and recovery are one
protocol over the same files and socket.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from tools.clock import Clock, RealClock
from tools.executor import JobExit, StartError
from tools.logs import create_log
from tools.tmux_control import LOST, ControlClient, Pending
from tools.models import Allocation, Job

log = logging.getLogger(__name__)

# What a job inherits from the service when no base_env is given; nothing else crosses over.
DEFAULT_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG")
FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"
PLACEHOLDER_WINDOW = "herd"  # keeps the session alive when no job runs
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # safe inside tmux targets ("=name:") and file names
_TMUX_TIMEOUT_S = 10.0  # a wedged tmux server must not hang the service loop forever
# tmux's words for "there is no server / no such session" (or one still shutting down after a
# kill-server): nothing runs there, which is not an error.
_GONE = ("no server running", "error connecting to", "can't find session", "server exited unexpectedly", "lost server",
         LOST)
_SHARED_DIR_MODE = 0o711  # jobs/, logs/, jobs/<id>/ when jobs run as their owners: enter, never list or write

# How the wrapper's child becomes the job (the last thing it does is exec it): as the server's user, or as
# the job's owner (see the module's doc); {program} is bash reading the command file, or, for a plain
# command (``_plain_words``), its own words.
_RUN_AS_SERVER = r'''exec env -i "${{job_env[@]}}" {program}'''
# The same without a process for env: bash un-exports what it inherited (tmux's environment, and what
# bash exports of its own) and exports the job's variables, then execs the program, which so gets
# exactly the job's environment. Only where every name is one bash exports as given: the job's are
# checked by the server (``_bash_exports_verbatim``), the inherited ones here (a name that is no shell
# identifier cannot be un-exported: then env). The program's words are literal, so that a job's variable
# named like one of the wrapper's (``job_dir``) changes nothing.
_RUN_AS_SERVER_BY_BASH = r'''mapfile -d '' -t inherited < "/proc/$$/environ"
  inherited=("${{inherited[@]%%=*}}")
  printf -v names '%s=' "${{inherited[@]}}"  # no name holds a '='
  [[ $names =~ ^([A-Za-z_][A-Za-z0-9_]*=)*$ ]] || exec env -i "${{job_env[@]}}" {env_program}
  declare +x -- "${{inherited[@]}}" SHLVL PWD OLDPWD
  set -- "${{job_env[@]}}"{pwd}
  unset -v job_env inherited names  # arrays cannot be exported: a job's variable may bear their names
  declare -x -- "$@"
  exec {program}'''
# The job's environment is the owner's to choose (LD_PRELOAD, LD_LIBRARY_PATH, ...), so it is given only
# after setpriv has dropped root: setpriv itself runs with an empty one.
_RUN_AS_OWNER = (
    r'''exec {env_bin} -i {setpriv} --reuid={uid} --regid={gid} --init-groups -- '''
    r'''{env_bin} -i -C {user_cwd} "${{job_env[@]}}" {program}'''
)
_BASH_READS_COMMAND = r'''"$BASH" --noprofile --norc "$job_dir/command"'''
_BASH_READS_FILE = "{bash} --noprofile --norc {command}"  # the same with literal paths
# As the owner, the command file reaches bash as an open descriptor (no directory above it is theirs).
_BASH_READS_COMMAND_AS_OWNER = r'''"$BASH" --noprofile --norc /dev/fd/3 3< "$job_dir/command"'''

# A command bash would only split into words and run: no quotes, no expansion, no redirection, one line.
_PLAIN = re.compile(r"[ \t]*[A-Za-z0-9_@%+=:,./-]+(?:[ \t]+[A-Za-z0-9_@%+=:,./-]+)*[ \t\n]*")
# Bash's builtins and keywords: a command that starts with one runs in bash, where it means what the user
# wrote (``exit 3``, ``time``, ``cd``), except those whose program on PATH does the same.
_BASH_WORDS = frozenset(
    ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue declare dirs disown "
    "echo enable eval exec exit export false fc fg getopts hash help history jobs kill let local logout mapfile "
    "popd printf pushd pwd read readarray readonly return set shift shopt source suspend test times trap true "
    "type typeset ulimit umask unalias unset wait if then else elif fi case esac for select while until do done "
    "in function time { } ! [[ ]] coproc".split()) - {"true", "false"}

_WRAPPER = r"""#!/bin/bash
# Generated by gpuherd (tools/tmux_executor.py) for job {job_id}; the protocol is described there.
PATH={path}
job_dir={job_dir}
log={log}
exec 2>>"$job_dir/wrapper.err"

lost=
# The files the server reads (pgid, exit_code) are written by one printf each, a single write ending
# in a newline: the server takes one without its newline for not written yet. (A rename would make
# them atomic too, but mv is a process, and two of them cost more than the rest of this script.)
finish() {{  # record the exit code, wake the service, and end the window
  printf '%s%s\n' "$1" "${{lost:+ lost}}" > "$job_dir/exit_code"
  {signal_end}
  exit 0
}}

if ! cd -- {cwd}; then
  printf 'gpuherd: job %s cannot start: its working directory %s does not exist or is not accessible\n' \
    {job_id} {cwd} >> "$log"
  finish 1
fi

{show}
# Set before the job starts, so that no hangup can come between its start and the trap (the job does
# not inherit them: a trapped signal is reset in a child). The window's end (HUP) or a TERM sent to the
# wrapper is not the job's doing: its end is marked lost. Closing the window must not orphan it, and
# ctrl-C typed in the window is not a way to cancel it (`herd cancel` is): the wrapper lets it pass.
pgid=
trap 'lost=1; [[ -n $pgid ]] && kill -TERM -- "-$pgid" 2>/dev/null' HUP TERM
trap ':' INT

set -m  # job control: the job below gets a process group of its own
mapfile -d '' -t job_env < "$job_dir/env"
{launch}
pgid=$!
# The leader's start time tells this group from a later one that reuses the number. The fields after
# "pid (comm) " (comm may hold spaces) are split by an array assignment (numbers and a state letter: no
# glob), not `read <<<`, which reads its here-string from a pipe one byte per system call.
start=
{{ read -r line < "/proc/$pgid/stat"; }} 2>/dev/null && {{ stat=(${{line##*) }}); start=${{stat[19]}}; }}
printf '%s %s\n' "$pgid" "$start" > "$job_dir/pgid"
{wait_job}

# True while a live process remains in the job's group. Zombies do not count: where PID 1 does not
# reap orphans (containers), killed children stay zombies for ever.
group_alive() {{
  kill -0 -- "-$pgid" 2>/dev/null || return 1
  local stat line fields
  for stat in /proc/[0-9]*/stat; do
    {{ read -r line < "$stat"; }} 2>/dev/null || continue  # the process may be gone by now
    fields=(${{line##*) }})  # state, ppid, pgrp, ...: split as the start time above
    [[ ${{fields[2]}} == "$pgid" && ${{fields[0]}} != Z ]] && return 0
  done
  return 1
}}

if group_alive; then
  printf 'gpuherd: the command of job %s ended; stopping the processes it left running\n' {job_id} >> "$log"
  kill -TERM -- "-$pgid" 2>/dev/null
  for (( i = 0; i < 50; i++ )); do group_alive || break; sleep 0.1; done
  kill -KILL -- "-$pgid" 2>/dev/null
  for (( i = 0; i < 50; i++ )); do group_alive || break; sleep 0.1; done
fi

[[ -n $tail_pid ]] && kill "$tail_pid" 2>/dev/null
finish "$code"
"""


# A batch job: its output goes to the log, which the window shows once someone watches it (ctrl-C there
# stops only this view).
_SHOW_LOG = r"""# The pane shows this attempt's output from when someone asks to watch it (`herd attach`: the server
# sends USR1), not before: a tail process per job that nobody watches costs every job. It starts where
# the log ended when the server wrote this script (earlier attempts' output is not shown again) and
# ends with the wrapper.
tail_pid=
show_log() {{
  [[ -n $tail_pid ]] || {{ ( trap '' INT; exec tail -c +{offset} --pid=$$ -f -- "$log" ) & tail_pid=$!; }}
}}
trap show_log USR1"""
_SHOWS_ON_USR1 = "trap show_log USR1"  # how the server tells a wrapper that shows the log on USR1
_LAUNCH_BATCH = r"""(
  {run}
) < /dev/null >> "$log" 2>&1 &"""
_AWAIT_BATCH = r"""# `wait` also returns when a trapped signal comes or the job is stopped (SIGSTOP): look again until
# the job has really ended and been reaped.
while :; do
  wait "$pgid"
  code=$?
  kill -0 "$pgid" 2>/dev/null || break
  sleep 0.1
done"""
# An interactive job (`herd run`): the window is its terminal. It runs in the foreground of the window's
# terminal (job control's fg), so that what its owner types (ctrl-C too) reaches it; tmux copies the
# window to the log (pipe-pane).
# It stops itself before it starts, so that it starts only once fg has given it the terminal (started in
# the background, it would stop on its first touch of the terminal, and fg would not know to wake it).
_LAUNCH_INTERACTIVE = r"""tail_pid=
trap ':' USR1  # the window is already the job's own terminal: nothing to show
# stdout is the window's terminal; stderr too (the wrapper's own goes to wrapper.err)
(
  kill -STOP "$BASHPID"
  {run}
) 2>&1 &"""
_AWAIT_INTERACTIVE = r"""code=
while kill -0 "$pgid" 2>/dev/null; do  # fg returns when the job ends, or is stopped (then it goes on)
  fg %1 > /dev/null 2>/dev/tty  # bash gives the terminal through stderr: the window's, not wrapper.err
  code=$?
done
wait "$pgid" 2>/dev/null; status=$?
[[ $status != 127 ]] && code=$status  # it ended before fg: its own status"""


def _plain_words(command: str, env: dict[str, str], cwd: str) -> list[str] | None:
    """The words of ``command`` when bash would do nothing with it but run them (no quoting, expansion,
    redirection or builtin), so that the wrapper can exec the program itself instead of a bash to read the
    command: one process fewer per job. None where bash is needed: also where the program is not an
    executable on the job's PATH (bash says "command not found" its own way), or is neither a binary nor a
    script with ``#!`` (bash would run it as a script of its own, ``execvp`` with ``sh``)."""
    if not _PLAIN.fullmatch(command):
        return None
    words = command.split()
    first = words[0]
    if first in _BASH_WORDS or "=" in first:  # a builtin, or an assignment
        return None
    if "/" in first:
        found = os.path.join(cwd, first)
        if not os.access(found, os.X_OK) or os.path.isdir(found):
            return None
    else:
        # Searched here as env will search it in the job's cwd: only where no entry is relative.
        path = env.get("PATH")
        if not path or not all(os.path.isabs(entry) for entry in path.split(os.pathsep)):
            return None
        found = shutil.which(first, path=path)
        if found is None:
            return None
    try:
        with open(found, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return words if head.startswith((b"#!", b"\x7fELF")) else None


# Variables bash itself gives a meaning (read-only, changing by themselves, or changing how bash reads
# and runs what follows): set by a ``declare -x``, they would not reach the job as given.
_BASH_OWN_VARIABLES = frozenset(
    "SHELLOPTS EUID UID PPID GROUPS FUNCNAME RANDOM SRANDOM SECONDS LINENO HISTCMD EPOCHREALTIME EPOCHSECONDS "
    "DIRSTACK PIPESTATUS COMP_WORDBREAKS OPTIND OPTARG IFS POSIXLY_CORRECT _".split())
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _bash_exports_verbatim(env: dict[str, str]) -> bool:
    """Whether bash can give a program exactly ``env`` (``declare -x`` of each variable): every name a shell
    identifier that bash gives no meaning of its own."""
    return all(_SHELL_NAME.fullmatch(name) and not name.startswith("BASH") and name not in _BASH_OWN_VARIABLES
               for name in env)


def _server_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(os.geteuid())
    except KeyError:  # a uid with no name (a container's)
        return None


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks since boot) of a process, or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[-1].split()  # skip "pid (comm) ": comm may hold spaces and parentheses
    try:
        return fields[0].decode(), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, and the same one if its ``start`` is known."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X") and (start is None or st[2] == start)


def _group_members(pgid: int, leader_start: int | None) -> list[int]:
    """The live processes of process group ``pgid``. The number is not reused while any process of the
    group lives, so a leader with another start time means the group is long gone."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = _proc_stat(pid)
        if st is None:
            continue
        state, pgrp, start = st
        if pid == pgid and leader_start is not None and start != leader_start:
            return []
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(pid)
    return members


class _Window(NamedTuple):
    """A start whose files are written: the ``new-window`` that opens the job's window, and where it lives."""

    command: tuple[str, ...]
    job_dir: Path
    log_file: Path


@dataclass
class _Running:
    """What the executor remembers about a job it started or adopted, until it is forgotten."""

    wrapper: tuple[int, int | None] | None = None  # the wrapper's pid and start time, when known
    kill_at: float | None = None  # SIGKILL deadline (monotonic) set by stop(), or by losing the window
    term_pending: bool = False  # stop() came before the job's pgid file existed
    kill_sent: bool = False
    vanished: bool = False  # its window went away without an exit code: finishing off what is left
    end: JobExit | None = None  # reported on every poll until forget()


class TmuxExecutor:
    """The ``Executor`` for one node's local jobs, each one a window of a private tmux server.

    ``run_as_owner``: run each job's command as its owner (uid, gid, supplementary groups, home), for a
    server that runs as root; see the module's doc. ``lost_grace_s``: SIGTERM to SIGKILL for what is left
    of a job whose window vanished. ``clock``: its ``monotonic()`` times the deadlines. ``control_mode``:
    send tmux commands through one persistent control client (``tools.tmux_control``) rather than a
    ``tmux`` process per command; False, or a client that cannot be opened, forks one per command."""

    def __init__(
        self,
        workdir: Path,
        socket_name: str = "gpuherd",
        session_name: str = "herd",
        base_env: dict[str, str] | None = None,
        window_check_s: float = 2.0,
        *,
        run_as_owner: bool = False,
        lost_grace_s: float = 10.0,
        clock: Clock | None = None,
        control_mode: bool = True,
    ) -> None:
        for what, name in (("socket_name", socket_name), ("session_name", session_name)):
            if not _NAME.match(name):
                raise ValueError(f"{what} {name!r} may only hold letters, digits, '_' and '-'")
        self.workdir = Path(workdir).resolve()
        self.socket_name = socket_name
        self.session_name = session_name
        if base_env is None:
            base_env = {k: os.environ[k] for k in DEFAULT_ENV_KEYS if k in os.environ}
        self.base_env = dict(base_env)
        # Listing windows costs a fork; exit files are checked on every poll, vanished windows less often.
        self.window_check_s = window_check_s
        self.lost_grace_s = lost_grace_s
        self.clock: Clock = clock or RealClock()
        self.channel = f"{session_name}-job-ended"
        self.run_as_owner = run_as_owner
        self._server_user = _server_user()  # who runs a job where jobs do not run as their owners

        tmux, env_bin, bash = shutil.which("tmux"), shutil.which("env"), shutil.which("bash")
        if not (tmux and env_bin and bash):
            raise RuntimeError("TmuxExecutor needs tmux, env and bash on PATH")
        self._tmux_bin, self._env_bin, self._bash = tmux, env_bin, bash
        self._setpriv: str | None = None
        if run_as_owner:
            if os.geteuid() != 0:
                raise RuntimeError("running jobs as their owners needs the server to run as root")
            self._setpriv = shutil.which("setpriv")
            if self._setpriv is None:
                raise RuntimeError("running jobs as their owners needs setpriv (util-linux) on PATH")
        # Every tmux client we run, and so the server the first one starts, sees only this; the server's
        # global environment is copied from the client that started it.
        path = self.base_env.get("PATH") or os.environ.get("PATH") or FALLBACK_PATH
        self._tmux_env = {"PATH": path, "HOME": self.base_env.get("HOME", "/"), "LANG": "C.UTF-8"}
        if "TMUX_TMPDIR" in os.environ:  # where the socket lives; `tmux -L` attach must find it
            self._tmux_env["TMUX_TMPDIR"] = os.environ["TMUX_TMPDIR"]

        self._socket_path: str | None = None
        self._session_seen = False
        self._jobs: dict[int, _Running] = {}
        self._next_window_check = float("-inf")
        self._woken = threading.Event()
        self._closing = threading.Event()
        self._tmux_prefix = [tmux, "-L", socket_name, "-f", "/dev/null"]
        self._control = ControlClient(self._tmux_prefix, self._tmux_env, session_name, on_window_close=self._woken.set)
        self._use_control = control_mode
        self._control_retry_at = float("-inf")
        self._control_warned = False
        self._waiter: threading.Thread | None = None
        self._waiter_proc: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------------------

    def job_dir(self, job_id: int) -> Path:
        return self.workdir / "jobs" / str(job_id)

    def log_path(self, job_id: int) -> Path:
        return self.workdir / "logs" / f"job-{job_id}.log"

    @staticmethod
    def window_name(job_id: int) -> str:
        return f"job-{job_id}"

    # -- Executor ----------------------------------------------------------------------------------

    def start(self, job: Job, allocation: Allocation, now: float) -> str:
        window = self._prepare(job, allocation)
        return self._opened(job, window, self._tmux(*window.command))

    def start_many(self, starts: Sequence[tuple[Job, Allocation]], now: float) -> list[str | StartError]:
        """``start`` of each job, in order: its log, or the ``StartError`` that kept it from starting (each
        succeeds or fails on its own). The windows are opened back to back: each job's files are written
        and its ``new-window`` sent to the control client before the answers are read, so that the
        next job's files are written while tmux opens the last one's window (a pass starts up to a
        node's worth of jobs at once, and each window costs tmux milliseconds, spent in series)."""
        sent: list[tuple[Job, _Window | StartError, Pending | None]] = []
        batch: set[int] = set()
        for job, allocation in starts:
            try:
                if job.id in batch:  # (its first start is not opened yet, so ``_prepare`` cannot tell)
                    raise StartError(f"job {job.id} is already being started")
                batch.add(job.id)
                window = self._prepare(job, allocation)
            except StartError as e:
                sent.append((job, e, None))
                continue
            sent.append((job, window, self._control.send(list(window.command)) if self._control_ready() else None))
        results: list[str | StartError] = []
        for job, window, pending in sent:
            if isinstance(window, StartError):
                results.append(window)
                continue
            try:
                answer = (self._control.answer(pending, _TMUX_TIMEOUT_S) if pending is not None
                          else self._tmux(*window.command))  # not sent: the single way
                results.append(self._opened(job, window, answer))
            except StartError as e:
                results.append(e)
        return results

    def _prepare(self, job: Job, allocation: Allocation) -> _Window:
        """Everything of a start before its window opens: the checks, and the job's files."""
        if allocation.more:
            raise StartError(f"job {job.id} spans nodes ({allocation.describe()}); tmux runs jobs on one node")
        known = self._jobs.get(job.id)
        if known is not None and known.end is None:
            raise StartError(f"job {job.id} is already running")
        owner = self._owner(job) if self.run_as_owner else None
        self._ensure_session()
        job_dir, log_file = self.job_dir(job.id), self.log_path(job.id)
        # Only a job that ran here before (its directory is there) can have a window: a first attempt
        # costs no listing of the windows.
        attempted = job_dir.exists()
        if attempted:
            windows = self._live_windows()
            if windows is None:
                raise StartError(f"cannot list the windows of tmux session {self.session_name!r}")
            if self.window_name(job.id) in windows:
                if self._read_exit(job.id) is None:
                    raise StartError(f"job {job.id} already has a live tmux window ({self.window_name(job.id)})")
                self._close_ended_window(job.id)  # the last attempt's wrapper, between its exit file and its end

        env = {**self.base_env, **job.env}
        if owner is not None:
            env |= {"HOME": owner.pw_dir, "USER": owner.pw_name, "LOGNAME": owner.pw_name,
                    "SHELL": owner.pw_shell or "/bin/sh"}
        else:  # it runs as the server's user: who that is, where the service was started without it (systemd)
            me = self._server_user
            if me is not None:
                for key, value in (("USER", me.pw_name), ("LOGNAME", me.pw_name), ("HOME", me.pw_dir)):
                    env.setdefault(key, value)
        # NVML numbers GPUs by PCI bus; CUDA's default order is fastest-first. Make them agree.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = allocation.cuda_visible_devices()
        env["HERD_JOB_ID"] = str(job.id)
        if job.interactive:  # its terminal is a tmux window
            env["TERM"] = "screen-256color"
        env["HERD_NODE"] = allocation.node  # where it runs: a gang job's parts each get their own node
        if job.array_id is not None:  # a task of an array: Slurm's SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID
            env["HERD_ARRAY_JOB_ID"] = str(job.array_id)
            env["HERD_ARRAY_TASK_ID"] = str(job.array_index)
            env["HERD_ARRAY_TASK_COUNT"] = str(job.array_size)
        for key, value in env.items():
            if "\0" in key or "=" in key or "\0" in value:
                raise StartError(f"job {job.id}: environment variable {key!r} cannot be passed on")

        ids = (owner.pw_uid, owner.pw_gid) if owner is not None else None
        try:
            for d in (job_dir.parent, job_dir, log_file.parent):
                d.mkdir(parents=True, exist_ok=True)
                if owner is not None:
                    os.chmod(d, _SHARED_DIR_MODE)
            # The previous attempt's results must not be mistaken for this one's.
            for name in ("exit_code", "exit_code.tmp", "pgid", "pgid.tmp", "wrapper.pid") if attempted else ():
                (job_dir / name).unlink(missing_ok=True)
            _write(job_dir / "command", job.command.encode(), 0o400 if ids else 0o644, ids)
            _write(job_dir / "env", b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()), 0o600)
            create_log(log_file, owner=ids)
            wrapper = job_dir / "wrapper.sh"
            script = self._wrapper(job, job_dir, log_file, owner, env, log_offset=log_file.stat().st_size,
                                   signal_end=not self._control.alive)
            _write(wrapper, script.encode(), 0o700)
        except (OSError, UnicodeError) as e:
            raise StartError(f"job {job.id}: cannot write its files under {job_dir}: {e}") from e

        # The window runs the wrapper with tmux's environment (TMUX, TERM, the server's...), which reaches
        # no job (the wrapper gives it exactly its own); bash's -p keeps that environment from changing
        # the wrapper itself (no BASH_ENV, SHELLOPTS or functions read from it), and the wrapper sets its
        # PATH itself. Given as separate words, the command is run by tmux directly, without a shell (or
        # an env) in between. The wrapper runs in the C locale: its bash then loads no locale files (a
        # third of a millisecond of CPU per job). LC_ALL, not LANG, or the child would load the job's
        # LANG as it exports it; the child un-exports LC_ALL like the rest, so the job never sees it.
        # The wrapper only moves bytes and ASCII names, the same in any locale.
        new_window = (
            "new-window", "-d", "-P", "-F", "#{pane_pid}", "-t", f"={self.session_name}:",
            "-n", self.window_name(job.id), "-c", str(self.workdir), "-e", "LC_ALL=C",
            self._bash, "--noprofile", "--norc", "-p", str(wrapper),
        )
        return _Window(new_window, job_dir, log_file)

    def _opened(self, job: Job, window: _Window, result: subprocess.CompletedProcess[str]) -> str:
        """The rest of a start once tmux answered its ``new-window`` (``result``): the job's log path."""
        new_window, job_dir, log_file = window
        if result.returncode != 0 and any(g in result.stderr for g in _GONE):
            # The server (or the control client) went away since we last looked. A control client
            # that ended mid-command may have opened the window: then it is this job's, not a second.
            pane = self._tmux("display-message", "-p", "-t", f"={self.session_name}:={self.window_name(job.id)}",
                              "#{pane_pid}")
            if pane.returncode == 0 and pane.stdout.strip():
                result = pane
            else:
                self._session_seen = False  # start the server again
                self._ensure_session()
                result = self._tmux(*new_window)
        if result.returncode != 0:
            raise StartError(f"job {job.id}: tmux new-window failed: {result.stderr.strip()}")
        if job.interactive:  # the window is its terminal: copy what it shows to the log
            self._tmux("pipe-pane", "-o", "-t", f"={self.session_name}:={self.window_name(job.id)}",
                       f"exec cat >> {shlex.quote(str(log_file))}")
        running = _Running()
        try:
            pid = int(result.stdout.strip())
            st = _proc_stat(pid)
            running.wrapper = (pid, st[2] if st is not None else None)
            _write(job_dir / "wrapper.pid", f"{pid} {running.wrapper[1] or ''}\n".encode(), 0o644)
        except (ValueError, OSError) as e:
            log.warning("job %s: cannot record its wrapper's pid (%s); a lost window is judged by its group alone",
                        job.id, e)
        self._jobs[job.id] = running
        return str(log_file)

    def stop(self, job_id: int, now: float, grace_s: float) -> None:
        running = self._jobs.get(job_id)
        if running is None or running.end is not None or self._read_exit(job_id) is not None:
            return  # unknown or already ended: nothing to stop
        deadline = self.clock.monotonic() + grace_s
        running.kill_at = deadline if running.kill_at is None else min(running.kill_at, deadline)
        # Before the wrapper wrote the pgid there is nothing to signal yet; poll sends it later.
        running.term_pending = not self._signal(job_id, signal.SIGTERM)
        self._woken.set()  # the waiter looks again at when the SIGKILL is due

    def poll(self, now: float) -> list[JobExit]:
        if not self._jobs:
            return []
        mono = self.clock.monotonic()
        windows = None
        if mono >= self._next_window_check and any(r.end is None for r in self._jobs.values()):
            # Windows are listed before exit files are read: a wrapper that ends in between has
            # written its exit file before its window closed, so it is never taken for vanished.
            windows = self._live_windows()
            self._next_window_check = mono + self.window_check_s
        exits: list[JobExit] = []
        for job_id, running in list(self._jobs.items()):
            if running.end is None:
                running.end = self._check(job_id, running, windows, now, mono)
            if running.end is not None:
                exits.append(running.end)
        return exits

    def window(self, job_id: int) -> tuple[str, str, str] | None:
        """(the tmux server's socket, session, window) of a job's live window, for people to attach to
        (``herd attach``); None while it has none (it does not run)."""
        windows = self._live_windows()
        if not windows or self.window_name(job_id) not in windows:
            return None
        socket = self._socket_path or self._query_socket_path()
        if socket is None:
            return None
        self._show_log(job_id)
        return socket, self.session_name, self.window_name(job_id)

    def forget(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)

    def process_groups(self) -> dict[int, frozenset[int]]:
        """Job id -> its process group and its wrapper's pid (the session of the job's processes), for
        each job not yet forgotten: what tells a job's processes on a GPU from anyone else's."""
        groups = {}
        for job_id, running in list(self._jobs.items()):
            ids = set()
            pgid = self._read_ids(self.job_dir(job_id) / "pgid")
            if pgid is not None and pgid[0] > 1:
                ids.add(pgid[0])
            if running.wrapper is not None and running.wrapper[0] > 1:
                ids.add(running.wrapper[0])
            if ids:
                groups[job_id] = frozenset(ids)
        return groups

    def recover(self, job_ids: Iterable[int], now: float) -> list[JobExit]:
        windows = self._live_windows()  # before the exit files, as in poll
        mono = self.clock.monotonic()
        exits: list[JobExit] = []
        for job_id in job_ids:
            running = self._jobs.get(job_id)
            if running is None:
                running = self._jobs[job_id] = _Running(wrapper=self._read_ids(self.job_dir(job_id) / "wrapper.pid"))
                ended = self._read_exit(job_id)
                if ended is not None:
                    code, lost, mtime = ended
                    # It ended while nobody watched; the file's time is when.
                    running.end = JobExit(job_id, code, min(mtime, now), lost=lost)
                elif windows is not None:  # else unknown yet: poll decides
                    running.end = self._check(job_id, running, windows, now, mono)
            if running.end is not None:
                exits.append(running.end)
        return exits

    def wait(self, timeout_s: float) -> None:
        """Until a job's window closes (seen by the control client) or its wrapper signals (without
        one), or a stop's SIGKILL is due, so that the poll that sends it comes on time. A ``stop``
        wakes it too, so that the next call waits for the deadline it set."""
        if (self._waiter is None and not self._closing.is_set() and not self._control_ready()
                and (not self._use_control or self._control_warned)):
            self._waiter = threading.Thread(target=self._wait_loop, name="tmux-wait-for", daemon=True)
            self._waiter.start()
        due = self._next_kill_in()
        self._woken.wait(timeout_s if due is None else min(timeout_s, due))
        # Clearing after the wake is safe: a wrapper writes its exit file before its window closes
        # (or it signals), so the poll that follows this call sees every job this clear swallows.
        self._woken.clear()

    def _next_kill_in(self) -> float | None:
        """Seconds until the earliest SIGKILL that a stop made due and that is not sent yet."""
        dues = [r.kill_at for r in list(self._jobs.values())
                if r.kill_at is not None and not r.kill_sent and not r.vanished and r.end is None]
        return max(0.0, min(dues) - self.clock.monotonic()) if dues else None

    def close(self) -> None:
        self._closing.set()
        waiter, proc = self._waiter, self._waiter_proc
        if waiter is None:
            self._control.close()
            return
        # Wake our own `wait-for` client rather than kill it, so tmux does not keep a dead waiter.
        self._tmux("wait-for", "-S", self.channel)
        waiter.join(timeout=2.0)
        if waiter.is_alive() and proc is not None:
            proc.kill()
            waiter.join(timeout=2.0)
        self._waiter = None
        self._control.close()

    def side_window(self, name: str, command: str) -> None:
        """Run ``command`` (a shell command line) in a window ``name`` beside the jobs, replacing one of
        that name: a node agent's watchdog (``tools.node_agent``). Not part of ``Executor``."""
        if not _NAME.match(name) or name.startswith("job-"):
            raise ValueError(f"window name {name!r}: letters, digits, '_' and '-', not job-*")
        self._ensure_session()
        self._tmux("kill-window", "-t", f"={self.session_name}:={name}")
        result = self._tmux("new-window", "-d", "-t", f"={self.session_name}:", "-n", name, f"exec {command}")
        if result.returncode != 0:
            raise StartError(f"tmux new-window {name} failed: {result.stderr.strip()}")

    def shutdown_server(self) -> None:
        """Kill the tmux server and every job in it (tests' cleanup; not part of ``Executor``)."""
        self.close()
        socket_path = self._socket_path or self._query_socket_path()
        self._tmux("kill-server")
        self._session_seen = False
        if socket_path:  # tmux leaves its socket file behind
            Path(socket_path).unlink(missing_ok=True)

    # -- internals ---------------------------------------------------------------------------------

    def _check(self, job_id: int, running: _Running, windows: set[str] | None, now: float,
               mono: float) -> JobExit | None:
        """The job's end if it has ended (and, if lost, nothing of it is left), else None; sends what
        signals are due."""
        if not running.vanished:
            ended = self._read_exit(job_id)
            if ended is not None:
                return JobExit(job_id, ended[0], now, lost=ended[1])
            if windows is None or self.window_name(job_id) in windows:
                if running.term_pending:
                    running.term_pending = not self._signal(job_id, signal.SIGTERM)
                if running.kill_at is not None and mono >= running.kill_at and not running.kill_sent:
                    running.kill_sent = self._signal(job_id, signal.SIGKILL)
                return None
            # Its window is gone and it left no exit code: the tmux server or the wrapper was killed.
            # Its processes may live on; finish them off before the job counts as ended.
            log.warning("job %s lost its tmux window without an exit code; stopping what is left of it "
                        "(SIGTERM, SIGKILL after %g s)", job_id, self.lost_grace_s)
            running.vanished = True
            deadline = mono + self.lost_grace_s
            running.kill_at = deadline if running.kill_at is None else min(running.kill_at, deadline)
            self._signal(job_id, signal.SIGTERM)
        group = self._group(job_id)
        wrapper = running.wrapper is not None and _alive(*running.wrapper)
        if not group and not wrapper:
            ended = self._read_exit(job_id)  # the wrapper may have recorded it before it went
            return JobExit(job_id, ended[0] if ended else None, now, lost=True)
        if running.kill_at is not None and mono >= running.kill_at:
            if group:
                self._signal(job_id, signal.SIGKILL)
            elif wrapper and mono >= running.kill_at + self.lost_grace_s:
                # The job is gone but its wrapper neither records it nor ends (stopped?): end it.
                try:
                    os.kill(running.wrapper[0], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return None

    def _show_log(self, job_id: int) -> None:
        """Ask a job's wrapper to show the log in its window (USR1), once it has set its trap for it: it
        has written the job's pgid after the trap, and its script says it has one (a wrapper of an
        older version, adopted after an upgrade, would die of the signal)."""
        running = self._jobs.get(job_id)
        if running is None or running.wrapper is None or not _alive(*running.wrapper):
            return
        job_dir = self.job_dir(job_id)
        try:
            if self._read_ids(job_dir / "pgid") is None or _SHOWS_ON_USR1 not in (job_dir / "wrapper.sh").read_text():
                return
            os.kill(running.wrapper[0], signal.SIGUSR1)
        except (OSError, UnicodeError) as e:
            log.warning("job %s: cannot ask its wrapper to show its log in its window: %s", job_id, e)

    def _close_ended_window(self, job_id: int) -> None:
        """Wait (up to 2 s) for the window of an attempt that has ended to close, then close it: its
        wrapper has written the exit code and has nothing left to do but wake the service."""
        name = self.window_name(job_id)
        for _ in range(100):
            windows = self._live_windows()
            if windows is not None and name not in windows:
                return
            time.sleep(0.02)
        self._tmux("kill-window", "-t", f"={self.session_name}:={name}")

    def _owner(self, job: Job) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(job.user)
        except KeyError:
            raise StartError(f"job {job.id}: its owner {job.user!r} is not a user on this node, so it cannot "
                             "run as them") from None

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        answer = self._through_control(list(args))
        if answer is not None:
            return answer
        cmd = [*self._tmux_prefix, *args]
        try:
            return subprocess.run(
                cmd, env=self._tmux_env, capture_output=True, text=True, timeout=_TMUX_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", f"tmux {args[0]} timed out")

    def _through_control(self, args: list[str]) -> subprocess.CompletedProcess[str] | None:
        """``args`` run by the control client, opened (again) if it is not open; None: fork instead.
        Not before the session exists (the client attaches to it), and after a failed opening not
        again for a second, so that a server that is gone costs one fork per command, not two."""
        return self._control.run(args, _TMUX_TIMEOUT_S) if self._control_ready() else None

    def _control_ready(self) -> bool:
        """Whether the control client is open, opening it if a session is known (one was seen, or jobs
        were adopted) and no opening failed in the last second."""
        if not self._use_control:
            return False
        if self._control.alive:
            return True
        mono = time.monotonic()
        if not (self._session_seen or self._jobs) or mono < self._control_retry_at or self._closing.is_set():
            return False
        if self._control.open(_TMUX_TIMEOUT_S):
            return True
        self._control_retry_at = mono + 1.0
        if self._session_seen and not self._control_warned:
            self._control_warned = True
            log.warning("cannot open a tmux control client (tmux -C) on server %r; running a tmux process "
                        "per command instead", self.socket_name)
        return False

    def _ensure_session(self) -> None:
        # Once seen, the session is assumed to live: asking tmux before every start costs a process
        # per job; a start that finds it gone comes back here.
        if self._session_seen:
            return
        if self._tmux("has-session", "-t", f"={self.session_name}").returncode != 0:
            result = self._tmux(
                "new-session", "-d", "-s", self.session_name, "-n", PLACEHOLDER_WINDOW,
                "echo 'gpuherd: jobs run in the other windows of this session'; exec sleep infinity",
                ";", "set-option", "-g", "remain-on-exit", "off",
                ";", "set-option", "-g", "allow-rename", "off",  # a job's output must not rename its window
            )
            if result.returncode != 0 and "duplicate session" not in result.stderr:
                raise StartError(f"cannot start tmux server {self.socket_name!r}: {result.stderr.strip()}")
            self._control_retry_at = float("-inf")  # a new server: a control client can attach at once
        # The wrapper reaches the server by path: it runs without TMUX_TMPDIR or any environment. A
        # server started again (after it was killed) keeps the same path.
        self._socket_path = self._query_socket_path() or self._socket_path
        if self._socket_path is None:
            raise StartError(f"cannot find the socket of tmux server {self.socket_name!r}")
        self._session_seen = True

    def _query_socket_path(self) -> str | None:
        result = self._tmux("display-message", "-p", "-t", f"={self.session_name}:", "#{socket_path}")
        path = result.stdout.strip()
        return path if result.returncode == 0 and path else None

    def _live_windows(self) -> set[str] | None:
        """Names of the session's windows whose process still runs; None if tmux could not say."""
        fmt = "#{window_name}\t#{pane_dead}"
        result = self._tmux("list-windows", "-t", f"={self.session_name}", "-F", fmt)
        if result.returncode != 0:
            return set() if any(g in result.stderr for g in _GONE) else None
        rows = (line.partition("\t") for line in result.stdout.splitlines())
        return {name for name, _, dead in rows if dead != "1"}

    def _cwd(self, job: Job, owner: pwd.struct_passwd | None) -> str:
        """Where the job starts: its own cwd, else the work directory, or the owner's home (the work
        directory holds the server's database) where jobs run as their owners; an owner's is entered as
        the owner, so that they reach only what they could reach themselves."""
        if job.cwd:
            return job.cwd
        if owner is None:
            return str(self.workdir)
        return owner.pw_dir if owner.pw_dir and os.path.isdir(owner.pw_dir) else "/"

    def _wrapper(self, job: Job, job_dir: Path, log_file: Path, owner: pwd.struct_passwd | None, env: dict[str, str],
                 *, log_offset: int, signal_end: bool) -> str:
        assert self._socket_path is not None
        q = shlex.quote
        cwd = self._cwd(job, owner)
        words = _plain_words(job.command, env, cwd)
        # bash gives the programs it runs PWD; a program run without it gets it here.
        program = (shlex.join([f"PWD={cwd}", *words]) if words is not None
                   else _BASH_READS_COMMAND if owner is None else _BASH_READS_COMMAND_AS_OWNER)
        if owner is None and _bash_exports_verbatim(env):
            run = _RUN_AS_SERVER_BY_BASH.format(
                env_program=program, pwd="" if words is None else " " + q(f"PWD={cwd}"),
                program=(shlex.join(words) if words is not None
                         else _BASH_READS_FILE.format(bash=q(self._bash), command=q(str(job_dir / "command")))))
        elif owner is None:
            run = _RUN_AS_SERVER.format(program=program)
        else:
            run = _RUN_AS_OWNER.format(setpriv=q(self._setpriv or "setpriv"), uid=owner.pw_uid, gid=owner.pw_gid,
                                       env_bin=q(self._env_bin), user_cwd=q(cwd), program=program)
        interactive = job.interactive
        return _WRAPPER.format(
            job_id=job.id, path=q(self._tmux_env["PATH"]), job_dir=q(str(job_dir)), log=q(str(log_file)),
            cwd=q(cwd),
            # Under a control client the window's closing wakes the service; else the wrapper does.
            signal_end=(shlex.join([self._tmux_bin, "-S", self._socket_path, "wait-for", "-S", self.channel])
                        if signal_end else ": the window closing tells the service"),
            show="" if interactive else _SHOW_LOG.format(offset=log_offset + 1),
            launch=(_LAUNCH_INTERACTIVE if interactive else _LAUNCH_BATCH).format(run=run),
            wait_job=_AWAIT_INTERACTIVE if interactive else _AWAIT_BATCH,
        )

    def _read_exit(self, job_id: int) -> tuple[int | None, bool, float] | None:
        """(exit code, lost, file time) once the job has ended, else None. A garbled file reads as code None;
        one without its final newline is still being written (or its writer died at it: then its
        window is gone too, and the job is judged lost)."""
        path = self.job_dir(job_id) / "exit_code"
        try:
            text = path.read_text()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        if not text.endswith("\n"):
            return None
        words = text.split()
        try:
            code = int(words[0])
        except (IndexError, ValueError):
            code = None
        return code, "lost" in words[1:], mtime

    @staticmethod
    def _read_ids(path: Path) -> tuple[int, int | None] | None:
        """A ``<pid> [<start time>]`` file (``pgid``, ``wrapper.pid``), or None if absent, garbled or not
        whole yet (no final newline)."""
        try:
            text = path.read_text()
            if not text.endswith("\n"):
                return None
            words = text.split()
            return int(words[0]), int(words[1]) if len(words) > 1 else None
        except (OSError, ValueError, IndexError):
            return None

    def _group(self, job_id: int) -> list[int]:
        """The job's live processes (its process group's), or [] if it never started or they are gone."""
        ids = self._read_ids(self.job_dir(job_id) / "pgid")
        if ids is None or ids[0] <= 1:
            return []
        return _group_members(*ids)

    def _signal(self, job_id: int, sig: signal.Signals) -> bool:
        """Send ``sig`` to the job's process group; False if its pgid is not known yet."""
        ids = self._read_ids(self.job_dir(job_id) / "pgid")
        if ids is None:
            return False
        pgid, leader_start = ids
        if pgid <= 1:  # never killpg(0) (our own group) or 1
            log.error("job %s: refusing to signal process group %s", job_id, pgid)
            return True
        leader = _proc_stat(pgid)
        if leader is not None and leader_start is not None and leader[2] != leader_start:
            return True  # the number names another process now: the job's group is gone
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass  # the group is gone: the job ended on its own
        except PermissionError as e:
            log.error("job %s: cannot signal process group %s: %s", job_id, pgid, e)
        return True

    def _wait_loop(self) -> None:
        # One `tmux wait-for` client is (nearly) always waiting on the channel, so a wrapper's signal
        # wakes it at once; a signal that comes while none waits marks the channel and is kept for the
        # next one, so none is lost.
        while not self._closing.is_set():
            self._waiter_proc = subprocess.Popen(
                [self._tmux_bin, "-L", self.socket_name, "-f", "/dev/null", "wait-for", self.channel],
                env=self._tmux_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            rc = self._waiter_proc.wait()
            self._woken.set()
            if rc != 0:  # no server (yet, or any more): do not spin
                self._closing.wait(0.5)


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Write a file the server trusts as a new inode (tmp + rename, never through a link), with ``mode``,
    owned by ``owner`` (uid, gid) when given."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # the umask must not narrow (or widen) it
        if owner is not None:
            os.fchown(fd, *owner)
        f.write(data)
    os.replace(tmp, path)
