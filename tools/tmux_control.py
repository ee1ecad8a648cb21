"""One persistent tmux client in control mode (``tmux -C``), through which the tmux executor sends its
commands instead of forking a ``tmux`` process for each.

Why: a fork of ``tmux`` costs milliseconds of CPU (a process, a connection to the server, the
client's start-up); the executor sends several per job (list the windows, open one, ...), and on a
small machine that was most of the time between one job and the next. A control client is one
process, attached to the executor's session, that reads commands from its stdin, one per line, and
answers each with a block on stdout::

    %begin <time> <number> <flags>
    <output lines>
    %end <time> <number> <flags>          (or %error ... when the command failed; the lines say why)

Blocks whose flags have bit 1 set answer this client's own commands, in the order they were sent.
Between blocks tmux writes notifications (``%window-close @3``, ``%exit``, ...): a window that closes
means a job's wrapper ended, so ``on_window_close`` is called from the reader thread (it must only
set a flag). Pane output is not sent at all (``-f no-output``), nor does the client count for the
size of windows (``ignore-size``).

The client dies with the tmux server (``%exit``, then end of file) or when killed; ``run`` then
answers as a forked ``tmux`` would ("server exited unexpectedly"), and the owner opens a new client
when it next needs one. A command not answered within the timeout ends the client too (it cannot be
trusted to answer in order after that), and answers exit status 124.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections import deque
from typing import Callable

log = logging.getLogger(__name__)

# What an answer lost with the client says: one of the executor's words for "the server went away".
LOST = "server exited unexpectedly (the control client ended)"


class Pending:
    """A command sent and not yet answered."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.done = threading.Event()
        self.ok = False
        self.lines: list[str] = []


def quote(arg: str) -> str:
    """``arg`` as one word of tmux's command language: single quotes keep everything literal (no
    ``$``, ``~``, ``#`` or ``;`` meaning), and a quote inside is closed, escaped and reopened."""
    return "'" + arg.replace("'", "'\\''") + "'"


class ControlClient:
    """``tmux <prefix> -C attach-session -t =<session>``, kept open; ``run`` is thread-safe."""

    def __init__(self, prefix: list[str], env: dict[str, str], session: str,
                 on_window_close: Callable[[], None]) -> None:
        self._prefix, self._env, self._session = prefix, env, session
        self._on_window_close = on_window_close
        self._proc: subprocess.Popen[str] | None = None
        self._write_lock = threading.Lock()  # one writer at a time: answers come in the order of the writes
        # Guards the queue of commands awaiting answers and whether the client's output has ended,
        # between the writers and the reader (which must never wait for the write lock).
        self._pending_lock = threading.Lock()
        self._pending: deque[Pending] = deque()
        self._ended = True

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._ended

    def open(self, timeout_s: float) -> bool:
        """Start the client and check it answers; False (and nothing left running) if it cannot."""
        with self._write_lock:
            self._end_locked()
            try:
                proc = subprocess.Popen(
                    [*self._prefix, "-C", "attach-session", "-f", "no-output,ignore-size", "-t", f"={self._session}"],
                    env=self._env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    text=True, encoding="utf-8", errors="replace", bufsize=1, start_new_session=True,
                )
            except OSError as exc:
                log.warning("cannot start a tmux control client: %s", exc)
                return False
            self._proc = proc
            with self._pending_lock:
                self._ended = False
            threading.Thread(target=self._read, args=(proc,), name="tmux-control", daemon=True).start()
        answer = self.run(["display-message", "-p", "ok"], timeout_s)
        if answer is not None and answer.returncode == 0 and answer.stdout.strip() == "ok":
            return True
        self.close()
        return False

    def run(self, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str] | None:
        """Send one command and wait for its answer, as a ``CompletedProcess`` (stdout: the block's
        lines; on %error, stderr). None: the command was not sent (no client, or an argument that
        cannot go on one line), so the caller may run it another way."""
        pending = self.send(args)
        return self.answer(pending, timeout_s) if pending is not None else None

    def send(self, args: list[str]) -> Pending | None:
        """Send one command without waiting for its answer (``answer``): several may be under way, and
        tmux answers them in order. None: not sent, as for ``run``."""
        if any("\n" in a or "\r" in a for a in args):
            return None
        line = " ".join(quote(a) for a in args) + "\n"
        pending = Pending(args)
        with self._write_lock:
            proc = self._proc
            with self._pending_lock:
                if proc is None or self._ended:
                    return None
                self._pending.append(pending)
            try:
                assert proc.stdin is not None
                proc.stdin.write(line)
                proc.stdin.flush()
            except (OSError, ValueError):
                with self._pending_lock:
                    if pending in self._pending:
                        self._pending.remove(pending)
                self._end_locked()
                return None
        return pending

    def answer(self, pending: Pending, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """The answer to a command ``send`` sent, waited for at most ``timeout_s``."""
        args = pending.args
        if not pending.done.wait(timeout_s):
            log.warning("tmux control client: no answer to %s in %g s; closing it", args[0], timeout_s)
            self.close()
            return subprocess.CompletedProcess(args, 124, "", f"tmux {args[0]} timed out")
        text = "\n".join(pending.lines) + ("\n" if pending.lines else "")
        if pending.ok:
            return subprocess.CompletedProcess(args, 0, text, "")
        return subprocess.CompletedProcess(args, 1, "", text or LOST)

    def close(self) -> None:
        with self._write_lock:
            self._end_locked()

    def _end_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # a control client ends at the end of its input
                proc.wait(timeout=1.0)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        self._fail_pending()

    def _fail_pending(self) -> None:
        with self._pending_lock:
            self._ended = True
            while self._pending:
                self._pending.popleft().done.set()  # ok stays False, no lines: answered as LOST

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        block: list[str] | None = None  # the lines of the block being read
        ours = False  # whether that block answers one of our commands
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                if block is None:
                    if line.startswith("%begin "):
                        block, ours = [], _ours(line)
                    elif line.startswith(("%window-close ", "%unlinked-window-close ", "%exit")):
                        self._on_window_close()
                elif line.startswith(("%end ", "%error ")):
                    if ours:
                        self._answer(block, ok=line.startswith("%end "))
                    block = None
                else:
                    block.append(line)
        except (OSError, ValueError):
            pass
        finally:
            # The client ended (the server went away, or close()): nothing more will be answered.
            if self._proc is proc:
                self._fail_pending()
            self._on_window_close()

    def _answer(self, lines: list[str], *, ok: bool) -> None:
        with self._pending_lock:
            pending = self._pending.popleft() if self._pending else None
        if pending is not None:
            pending.lines, pending.ok = lines, ok
            pending.done.set()


def _ours(line: str) -> bool:
    """Whether a ``%begin`` line opens the answer to this client's own command (flags bit 1)."""
    words = line.split()
    try:
        return int(words[3]) & 1 == 1
    except (IndexError, ValueError):
        return False
