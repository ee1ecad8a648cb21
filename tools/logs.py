"""Reading a job's log: the last lines, or the bytes from an offset on, in bounded chunks (logs can be huge)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# One read of a log returns at most this much; a follower asks again.
MAX_LOG_CHUNK = 1 << 20


@dataclass(frozen=True)
class LogChunk:
    text: str
    next_offset: int  # ask for ``offset=next_offset`` to get what is written after this
    size: int  # the log's size now, in bytes


def read_log(path: Path, *, tail: int | None = None, offset: int | None = None) -> LogChunk:
    """The last ``tail`` lines, or the bytes from ``offset`` on (at most ``MAX_LOG_CHUNK``), or all."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset is not None:
                start = min(max(offset, 0), size)
            elif tail is not None:
                start = _tail_start(f, size, tail)
            else:
                start = max(0, size - MAX_LOG_CHUNK)
            f.seek(start)
            data = f.read(min(size - start, MAX_LOG_CHUNK))
    except (FileNotFoundError, IsADirectoryError):
        return LogChunk(text="", next_offset=offset or 0, size=0)
    return LogChunk(text=data.decode(errors="replace"), next_offset=start + len(data), size=size)


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
