"""Job logs: made safely before a job starts, and read without trusting what the job may have done to them.

Reading: the last lines, or the bytes from an offset on, in bounded chunks (logs can be huge); a chunk
cut short ends on a whole UTF-8 character, and the last MiB of a longer log begins on a whole line.

Trust: a job can write its own log, and a job that runs as the server's user (or whose log directory it
can write) could replace the file with a symbolic link to ``/etc/shadow``, a hard link to it, a FIFO
that blocks a reader, or another file. So ``create_log`` makes the log, owned by the job's user when it
runs as its owner, and records the file's identity (device and inode) in ``.<log name>.id`` beside it;
``read_log`` opens with ``O_NOFOLLOW | O_NONBLOCK`` and reads only the regular file with that identity
(a log without a recorded identity: a regular file with no other name), else raises ``UnsafeLog``.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

# One read of a log returns at most this much; a follower asks again.
MAX_LOG_CHUNK = 1 << 20

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeLog(Exception):
    """The log is no longer the file the server made for the job (a symbolic link, a hard link, a
    FIFO or another file took its place): it is not read. A front door answers 409 (or 403)."""


@dataclass(frozen=True)
class LogChunk:
    text: str
    next_offset: int  # ask for ``offset=next_offset`` to get what is written after this
    size: int  # the log's size now, in bytes
    offset: int = 0  # where ``text`` begins in the log: above 0, the chunk is not the whole log


def identity_path(path: Path) -> Path:
    """Where the identity of the log at ``path`` is kept: ``.<name>.id`` in the same directory."""
    return path.with_name(f".{path.name}.id")


def create_log(path: Path, *, owner: tuple[int, int] | None = None) -> None:
    """Make ``path`` the job's log, keeping what earlier attempts wrote if it is still the file made
    for the job; anything else found there (a link, a FIFO, a file of unknown origin) is removed
    first. With ``owner`` (uid, gid) the file becomes theirs, mode 0600, so their job can append to it
    and nobody else can read it. Its identity is recorded for ``read_log``. Raises ``OSError``."""
    expected = _recorded_identity(path)
    fd = _open_existing(path, expected)
    if fd is None:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
            os.fchmod(fd, 0o600)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    ident = identity_path(path)
    tmp = ident.with_name(ident.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
    try:
        os.write(tmp_fd, f"{st.st_dev} {st.st_ino}\n".encode())
    finally:
        os.close(tmp_fd)
    os.replace(tmp, ident)


def _open_existing(path: Path, expected: tuple[int, int] | None) -> int | None:
    """An append descriptor on the log already at ``path`` if it can be trusted, else None."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EACCES):
            return None  # a symbolic link, a directory, a FIFO nobody reads: not ours
        raise
    if _problem(os.fstat(fd), expected) is None:
        return fd
    os.close(fd)
    return None


def _recorded_identity(path: Path) -> tuple[int, int] | None:
    try:
        fd = os.open(identity_path(path), os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return None
    try:
        dev, ino = os.read(fd, 100).split()
        return int(dev), int(ino)
    except ValueError:
        return None
    finally:
        os.close(fd)


def _problem(st: os.stat_result, expected: tuple[int, int] | None) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if expected is not None:
        return None if (st.st_dev, st.st_ino) == expected else "was replaced by another file"
    return None if st.st_nlink == 1 else "has another name (a hard link)"


def read_log(path: Path, *, tail: int | None = None, offset: int | None = None,
             length: int | None = None) -> LogChunk:
    """The last ``tail`` lines, or the bytes from ``offset`` on, or the last ``MAX_LOG_CHUNK`` bytes from
    the first whole line in them; at most ``length`` bytes (``MAX_LOG_CHUNK`` if None or larger). A chunk
    that stops before the end of the log ends on a whole UTF-8 character.
    A log that does not exist (yet) reads as empty; one that is not the file made for the job raises
    ``UnsafeLog``, and nothing of what is there is read."""
    most = MAX_LOG_CHUNK if length is None else max(0, min(length, MAX_LOG_CHUNK))
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        return LogChunk(text="", next_offset=offset or 0, size=0)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeLog(f"the log {path} was replaced by a symbolic link; it is not read") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISDIR(st.st_mode) and _recorded_identity(path) is None:
            return LogChunk(text="", next_offset=offset or 0, size=0)  # no log here, and none was made
        problem = _problem(st, _recorded_identity(path))
        if problem is not None:
            raise UnsafeLog(f"the log {path} {problem}; it is not read")
        size = st.st_size
        if offset is not None:
            start = min(max(offset, 0), size)
        elif tail is not None:
            start = _line_start(f, _tail_start(f, size, tail), size)
        else:
            start = _line_start(f, max(0, size - MAX_LOG_CHUNK), size)
        f.seek(start)
        data = f.read(min(size - start, most))
    if start + len(data) < size:  # more follows: end on a whole character, the next chunk begins there
        data = data[:len(data) - _partial_tail(data)]
    return LogChunk(text=data.decode(errors="replace"), next_offset=start + len(data), size=size, offset=start)


def _line_start(f, start: int, size: int) -> int:
    """``start``, or the beginning of the next line if ``start`` falls inside one (when a line begins
    within the next 64 KiB)."""
    if start == 0:
        return 0
    f.seek(start - 1)
    data = f.read(min(size - start + 1, 64 * 1024))
    if data[:1] == b"\n":
        return start
    newline = data.find(b"\n")
    return start + newline if newline >= 0 else start


def _partial_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` are the beginning of a UTF-8 character cut short."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the character's first byte
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0


def _tail_start(f, size: int, lines: int) -> int:
    """Offset of the start of the last ``lines`` lines, read backwards in blocks (logs can be huge)."""
    if lines <= 0:
        return size
    pos, newlines, block = size, 0, 64 * 1024
    # A final newline ends the last line; it does not start a new one.
    f.seek(max(0, size - 1))
    if size and f.read(1) == b"\n":
        pos -= 1
    while pos > 0 and size - pos < MAX_LOG_CHUNK:
        step = min(block, pos)
        f.seek(pos - step)
        data = f.read(step)
        for i in range(len(data) - 1, -1, -1):
            if data[i] == 10:  # b"\n"
                newlines += 1
                if newlines == lines:
                    return pos - step + i + 1
        pos -= step
    return max(pos, size - MAX_LOG_CHUNK)
